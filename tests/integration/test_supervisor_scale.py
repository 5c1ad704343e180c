"""`supervisorctl scale` against a real supervisord: only the added/surplus processes change.

Each test starts its own supervisord (foreground, in tmp_path) with our rpcinterface and
ctlplugin and a dummy `[program:consumer]` (numprocs in an included file) that records its
pid and exits 0 on SIGTERM.  supervisord is always shut down by the fixture finalizer.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from supervisor import xmlrpc as supervisor_xmlrpc
from supervisor.options import ClientOptions, ServerOptions
from supervisor.supervisorctl import Controller

from pipeline import kafka_admin
from tests.helpers import REPO, wait_for
from tests.supervised import Supervisord

pytestmark = [pytest.mark.supervisor, pytest.mark.timeout(180)]


DUMMY = """\
import os, signal, sys, time
from pathlib import Path

events = Path(sys.argv[1])
pid = os.getpid()
(events / f"{pid}.start").write_text(os.environ["PIPELINE_PROCESS_SLOT"])

def on_term(signum, frame):
    (events / f"{pid}.term").write_text("TERM")
    if (events.parent / "slow_stop").exists():
        time.sleep(2)  # a consumer finishing its batch
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
while True:
    signal.pause()
"""

CONSUMER_CONF = """\
; the consumer count lives here
[program:consumer]
command = {python} %(here)s/../dummy.py %(here)s/../events
directory = %(here)s/..
numprocs = {numprocs}   ; scaled by supervisorctl scale
numprocs_start = 1
process_name = %(program_name)s_%(process_num)02d
startsecs = 1
stopsignal = TERM
stopwaitsecs = 10
autorestart = true
redirect_stderr = true
stdout_logfile = %(here)s/../log/%(program_name)s_%(process_num)02d.log
environment = PIPELINE_PROCESS_SLOT="%(process_num)02d"
"""

MAIN_CONF = """\
[unix_http_server]
file = %(here)s/run/supervisor.sock
chmod = 0700

[supervisord]
logfile = %(here)s/log/supervisord.log
pidfile = %(here)s/run/supervisord.pid
childlogdir = %(here)s/log
loglevel = debug

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[rpcinterface:pipeline]
supervisor.rpcinterface_factory = pipeline.supervisor.rpc:make_rpcinterface

[supervisorctl]
serverurl = unix://%(here)s/run/supervisor.sock

[ctlplugin:pipeline]
supervisor.ctl_factory = pipeline.supervisor.ctl:make_ctlplugin

[program:other]
command = {python} %(here)s/dummy.py %(here)s/events
environment = PIPELINE_PROCESS_SLOT="other"
startsecs = 0

[include]
files = conf.d/*.conf
"""


class DummyHost(Supervisord):
    """supervisord with our rpcinterface and ctlplugin in a temp dir, running the dummy consumers."""

    def __init__(self, root: Path) -> None:
        self.scale_file = root / "conf.d" / "consumer.conf"
        self.events = root / "events"
        for sub in ("conf.d", "events", "log", "run"):
            (root / sub).mkdir()
        (root / "dummy.py").write_text(DUMMY)
        (root / "supervisord.conf").write_text(MAIN_CONF.format(python=sys.executable))
        self.scale_file.write_text(CONSUMER_CONF.format(python=sys.executable, numprocs=1))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        super().__init__(root / "supervisord.conf", env)

    def consumers(self) -> dict[str, tuple[str, int]]:
        """consumer process name -> (state name, pid)."""
        infos = self.rpc().supervisor.getAllProcessInfo()
        return {i["name"]: (i["statename"], i["pid"]) for i in infos if i["group"] == "consumer"}

    def wait_running(self, names: list[str]) -> dict[str, int]:
        def running() -> dict[str, int] | None:
            now = self.consumers()
            if sorted(now) == sorted(names) and all(state == "RUNNING" for state, _ in now.values()):
                return {name: pid for name, (_, pid) in now.items()}
            return None

        return dict(wait_for(running, 20, f"exactly {names} RUNNING", interval=0.05))

    def wait_stopping(self, name: str) -> None:
        wait_for(lambda: self.consumers().get(name, ("",))[0] == "STOPPING", 20, f"{name} STOPPING", interval=0.05)

    def terminated(self, pid: int) -> bool:
        """The dummy with this pid got SIGTERM (graceful stop) and is gone."""
        return (self.events / f"{pid}.term").exists() and not psutil.pid_exists(pid)

    def assert_reread_clean(self) -> None:
        out = self.ctl("reread")
        assert out.returncode == 0, out
        assert out.stdout.strip() == "No config updates to processes", out.stdout


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[DummyHost]:
    server = DummyHost(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def numprocs_line(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith("numprocs"))


def test_scale_up_and_down_touches_only_the_difference(sup: DummyHost) -> None:
    original = sup.scale_file.read_text()
    pid1 = sup.wait_running(["consumer_01"])["consumer_01"]

    out = sup.ctl("scale", "consumer", "3")
    assert out.returncode == 0, out
    assert "consumer:consumer_02: started" in out.stdout
    assert "consumer:consumer_03: started" in out.stdout
    assert "1 -> 3 processes" in out.stdout
    pids = sup.wait_running(["consumer_01", "consumer_02", "consumer_03"])
    assert pids["consumer_01"] == pid1
    # only numprocs changed on disk, the comment on that line survived
    assert sup.scale_file.read_text() == original.replace("numprocs = 1 ", "numprocs = 3 ")
    assert numprocs_line(sup.scale_file) == "numprocs = 3   ; scaled by supervisorctl scale"
    sup.assert_reread_clean()
    assert sup.ctl("update").returncode == 0
    assert sup.wait_running(["consumer_01", "consumer_02", "consumer_03"]) == pids  # update restarted nothing

    result = sup.rpc().pipeline.scale("consumer", 1)
    assert result["before"] == 3 and result["after"] == 1
    assert result["started"] == []
    assert result["stopped"] == ["consumer_03", "consumer_02"]  # highest process_num first
    assert result["exit_status"] == {"consumer_02": 0, "consumer_03": 0}
    assert sup.wait_running(["consumer_01"]) == {"consumer_01": pid1}
    assert sup.terminated(pids["consumer_02"]) and sup.terminated(pids["consumer_03"])
    assert "consumer_02" not in sup.ctl("status").stdout
    assert numprocs_line(sup.scale_file).startswith("numprocs = 1 ")
    sup.assert_reread_clean()


def test_scale_to_zero_and_back(sup: DummyHost) -> None:
    pid1 = sup.wait_running(["consumer_01"])["consumer_01"]
    out = sup.ctl("scale", "consumer", "0")
    assert out.returncode == 0, out
    assert "consumer:consumer_01: stopped and removed" in out.stdout
    assert sup.consumers() == {}
    assert sup.terminated(pid1)
    sup.assert_reread_clean()
    assert sup.ctl("scale", "consumer", "1").returncode == 0
    sup.wait_running(["consumer_01"])
    sup.assert_reread_clean()


def test_count_survives_a_supervisord_restart(sup: DummyHost) -> None:
    sup.wait_running(["consumer_01"])
    assert sup.ctl("scale", "consumer", "2").returncode == 0
    sup.stop()
    sup.start()
    sup.wait_running(["consumer_01", "consumer_02"])
    sup.assert_reread_clean()


def test_scale_without_count_reconciles_with_the_hand_edited_file(sup: DummyHost) -> None:
    pid1 = sup.wait_running(["consumer_01"])["consumer_01"]
    sup.scale_file.write_text(sup.scale_file.read_text().replace("numprocs = 1 ", "numprocs = 2 "))

    out = sup.ctl("scale", "consumer")
    assert out.returncode == 0, out
    assert "consumer:consumer_02: started" in out.stdout
    pids = sup.wait_running(["consumer_01", "consumer_02"])
    assert pids["consumer_01"] == pid1
    sup.assert_reread_clean()

    sup.scale_file.write_text(sup.scale_file.read_text().replace("numprocs = 2 ", "numprocs = 1 "))
    result = sup.rpc().pipeline.scale("consumer")
    assert result["stopped"] == ["consumer_02"] and result["file_changed"] is False
    assert sup.wait_running(["consumer_01"]) == {"consumer_01": pid1}
    sup.assert_reread_clean()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # end to end, through the RPC (the plugin's own checks: tests/unit/test_ctl.py)
        (("scale", "nosuch", "2"), "no such program"),
        (("scale", "other", "2"), "cannot be scaled"),
        (("scale", "consumer", "65"), "outside 0..64"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    sup: DummyHost, args: tuple[str, ...], message: str
) -> None:
    before_text = sup.scale_file.read_text()
    pid1 = sup.wait_running(["consumer_01"])["consumer_01"]
    out = sup.ctl(*args)
    assert out.returncode != 0, out
    assert "ERROR" in out.stdout and message in out.stdout, out.stdout
    assert sup.scale_file.read_text() == before_text
    assert sup.wait_running(["consumer_01"]) == {"consumer_01": pid1}


def test_unwritable_scale_file_is_a_clear_error(sup: DummyHost) -> None:
    before_text = sup.scale_file.read_text()
    pid1 = sup.wait_running(["consumer_01"])["consumer_01"]
    conf_d = sup.scale_file.parent
    # root ignores permission bits: make the directory immutable instead
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(conf_d)], check=False).returncode:
            pytest.skip("running as root and cannot make conf.d immutable")
        undo = ["chattr", "-i", str(conf_d)]
    else:
        conf_d.chmod(0o500)
        undo = ["chmod", "0755", str(conf_d)]
    try:
        out = sup.ctl("scale", "consumer", "2")
        with pytest.raises(xmlrpc.client.Fault) as info:
            sup.rpc().pipeline.scale("consumer", 2)
    finally:
        subprocess.run(undo, check=True)
    assert out.returncode != 0, out
    assert f"ERROR: FAILED: cannot write {sup.scale_file}" in out.stdout, out.stdout
    assert info.value.faultCode == supervisor_xmlrpc.Faults.FAILED
    assert sup.scale_file.read_text() == before_text
    assert sorted(p.name for p in conf_d.iterdir()) == ["consumer.conf"]  # no temp file left
    assert sup.wait_running(["consumer_01"]) == {"consumer_01": pid1}
    sup.assert_reread_clean()


def test_edit_beyond_numprocs_is_refused_and_file_restored(sup: DummyHost) -> None:
    pid1 = sup.wait_running(["consumer_01"])["consumer_01"]
    edited = sup.scale_file.read_text().replace("stopwaitsecs = 10", "stopwaitsecs = 11")
    sup.scale_file.write_text(edited)
    out = sup.ctl("scale", "consumer", "2")
    assert out.returncode != 0, out
    assert "changes more than numprocs for consumer_01 (stopwaitsecs)" in out.stdout, out.stdout
    assert "supervisorctl update consumer" in out.stdout
    assert sup.scale_file.read_text() == edited  # the operator's edit is kept, numprocs not written
    assert sup.wait_running(["consumer_01"]) == {"consumer_01": pid1}


def test_slow_stop_does_not_block_supervisord(sup: DummyHost) -> None:
    sup.wait_running(["consumer_01"])
    assert sup.ctl("scale", "consumer", "2").returncode == 0
    pid2 = sup.wait_running(["consumer_01", "consumer_02"])["consumer_02"]
    (sup.root / "slow_stop").touch()  # the dummy now takes 2 s to exit on SIGTERM

    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(sup.rpc().pipeline.scale("consumer", 1)))
    worker.start()
    try:
        sup.wait_stopping("consumer_02")
        started = time.monotonic()
        assert sup.rpc().supervisor.getState()["statename"] == "RUNNING"
        assert time.monotonic() - started < 0.5  # supervisord keeps serving while it waits
        with pytest.raises(xmlrpc.client.Fault) as info:  # one scale at a time per program
            sup.rpc().pipeline.scale("consumer", 3)
        assert info.value.faultCode == supervisor_xmlrpc.Faults.STILL_RUNNING
        assert "still stopping consumer_02" in info.value.faultString
    finally:
        worker.join(timeout=30)
    assert results and results[0]["stopped"] == ["consumer_02"]
    assert sup.terminated(pid2)
    sup.wait_running(["consumer_01"])


def test_surplus_is_removed_even_if_the_client_hangs_up(sup: DummyHost) -> None:
    """The deferred answer is never polled once the client is gone; a tick cleans up."""
    sup.wait_running(["consumer_01"])
    assert sup.ctl("scale", "consumer", "2").returncode == 0
    pid2 = sup.wait_running(["consumer_01", "consumer_02"])["consumer_02"]
    (sup.root / "slow_stop").touch()
    body = xmlrpc.client.dumps(("consumer", 1), "pipeline.scale").encode()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(sup.sock))
        client.sendall(
            b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sup.wait_stopping("consumer_02")
    wait_for(lambda: "consumer_02" not in sup.consumers(), 30, "consumer_02 removed by the tick sweep")
    assert sup.terminated(pid2)
    sup.assert_reread_clean()
    assert sup.rpc().pipeline.scale("consumer", 1)["stopped"] == []  # not stuck "in progress"


def run_ctl_in_process(sup: DummyHost, *args: str) -> tuple[int, str]:
    """supervisorctl in this process, so the partition lookup can be monkeypatched."""
    options = ClientOptions()
    options.realize(["-c", str(sup.conf), *args])
    out = io.StringIO()
    controller = Controller(options, stdout=out)
    controller.onecmd(" ".join(options.args))
    return controller.exitstatus, out.getvalue()


def test_scale_is_followed_by_the_group_steps(sup: DummyHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """supervisorctl runs the steps shared with bin/pipeline scale (pipeline.kafka_admin.after_scale)."""
    sup.wait_running(["consumer_01"])
    monkeypatch.setenv("PIPELINE_ENV_FILE", os.devnull)
    monkeypatch.setenv("KAFKA_TOPIC", "food-orders")
    released: list[list[str]] = []
    monkeypatch.setattr(kafka_admin, "topic_partition_count", lambda settings, topic=None: 2)
    monkeypatch.setattr(kafka_admin, "release_static_members",
                        lambda settings, lib, names: released.append(names) or [f"removed {n}" for n in names])
    status, out = run_ctl_in_process(sup, "scale", "consumer", "3")
    assert status == 0, out
    assert "consumer: warning: 3 consumers but food-orders has 2 partitions: 1 will idle. " \
           "Add partitions: bin/pipeline topic partitions 3" in out

    status, out = run_ctl_in_process(sup, "scale", "consumer", "1")
    assert status == 0 and "warning" not in out, out
    assert "consumer: group: removed consumer_03\nconsumer: group: removed consumer_02" in out
    assert released == [[], ["consumer_03", "consumer_02"]]


def test_repository_config_resolves_paths_from_the_checkout(tmp_path: Path) -> None:
    """The shipped supervisord.conf + conf.d/consumer.conf, parsed by supervisor itself."""
    (tmp_path / "conf.d").mkdir()
    shutil.copy(REPO / "supervisord.conf", tmp_path / "supervisord.conf")
    shutil.copy(REPO / "deploy" / "supervisor" / "consumer.conf", tmp_path / "conf.d" / "consumer.conf")
    for sub in ("var/log", "var/run"):
        (tmp_path / sub).mkdir(parents=True)
    options = ServerOptions()
    options.realize(["-c", str(tmp_path / "supervisord.conf")])
    groups = {g.name: g for g in options.process_group_configs}
    assert sorted(groups) == ["alerts", "consumer", "metrics", "producer"]
    python = str(tmp_path / ".venv" / "bin" / "python")
    (consumer,) = groups["consumer"].process_configs
    assert consumer.name == "consumer_01"
    assert os.path.normpath(consumer.command.split()[0]) == python
    assert consumer.command.endswith("-m pipeline.consumer")
    assert os.path.normpath(consumer.directory) == str(tmp_path)
    assert os.path.normpath(consumer.stdout_logfile) == str(tmp_path / "var" / "log" / "consumer_01.log")
    assert consumer.environment == {"PYTHONUNBUFFERED": "1",
                                    "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "var" / "run" / "metrics")}
    assert consumer.stopsignal == signal.SIGTERM and consumer.stopwaitsecs == 30
    (producer,) = groups["producer"].process_configs
    assert producer.command == f"{python} -m pipeline.producer"
    assert producer.directory == str(tmp_path)
    assert options.server_configs[0]["file"] == str(tmp_path / "var" / "run" / "supervisor.sock")
    assert options.server_configs[0]["chmod"] == 0o700
    assert [name for name, _, _ in options.rpcinterface_factories] == ["supervisor", "pipeline"]
