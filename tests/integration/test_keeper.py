"""Dev mode (`bin/pipeline up`): kill -9 of any server, of supervisord or of a program is repaired by the
keeper or supervisord, orders keep flowing, and the topic's every order id is in PostgreSQL exactly once.

This host has servers of its own (the keeper starts them on free ports in tmp_path), so killing them
does not disturb the session's servers.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline.audit import audit
from pipeline.settings import load_settings
from tests.helpers import wait_for
from tests.supervised import Supervised, keeper_host, keeper_log

pytestmark = [pytest.mark.supervisor, pytest.mark.slow, pytest.mark.timeout(600)]

REPAIR_TARGET_S = 30.0


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Supervised]:
    with keeper_host(tmp_path) as sup:
        yield sup


def server_pid(sup: Supervised, name: str) -> int | None:
    try:
        pid = int((Path(sup.env["PIPELINE_STATE_DIR"]) / "run" / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def programs_running(sup: Supervised, names: tuple[str, ...] = ("consumer_01", "producer")) -> dict[str, int]:
    try:
        pids = sup.pids()
    except OSError:
        return {}
    return pids if all(n in pids for n in names) else {}


def processes_of(sup: Supervised, slot: str) -> list[int]:
    """Processes that supervisord started as `slot` (by their environment), alive or orphaned."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get("SUPERVISOR_PROCESS_NAME") == slot and env.get("PIPELINE_SUPERVISORD_CONF") == str(sup.conf):
            found.append(proc.pid)
    return found


def test_keeper_repairs_kill_9_of_every_process_and_nothing_is_lost(host: Supervised) -> None:
    sup, pipe = host, host.pipe
    wait_for(lambda: pipe.row_count() > 200, 60, "orders in PostgreSQL")
    repair: dict[str, float] = {}
    for name in ("zookeeper", "kafka", "postgres", "supervisord"):
        before = pipe.row_count()
        killed = server_pid(sup, name) if name != "supervisord" else int(sup.rpc().supervisor.getPID())
        old_programs = programs_running(sup)
        assert killed, f"{name} is not running"
        started = time.monotonic()
        os.kill(killed, signal.SIGKILL)
        if name == "supervisord":
            wait_for(lambda old=old_programs: (p := programs_running(sup)) and not set(p.values()) & set(old.values()),
                     60, "supervisord and its programs back, with new pids")
        else:
            wait_for(lambda n=name, k=killed: server_pid(sup, n) not in (None, k) and f"{n} ready again"
                     in keeper_log(sup).split(f"{n} is not running")[-1], 60, f"the keeper to restart {name}")
        repair[name] = time.monotonic() - started
        wait_for(lambda b=before: pipe.row_count() > b + 100, 90, f"orders flowing after kill -9 of {name}")
    assert processes_of(sup, "consumer_01") == [programs_running(sup)["consumer_01"]], \
        "an orphaned consumer of the killed supervisord still runs"
    for program in ("consumer_01", "producer"):
        killed = programs_running(sup)[program]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda p=program, k=killed: programs_running(sup).get(p, k) != k, 30, f"{program} restarted")
    print("repair seconds:", {n: round(s, 1) for n, s in repair.items()})
    assert all(s < REPAIR_TARGET_S for s in repair.values()), repair

    sup.rpc().supervisor.stopProcess("producer")
    wait_for(lambda: pipe.lag() == 0, 120, "the consumers to catch up")
    report = audit(load_settings(sup.env, env_file=Path(os.devnull)))
    assert report.ok and report.rows > 1000, report.lines()
