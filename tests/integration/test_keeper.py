"""Dev mode (`bin/pipeline up`): kill -9 of any server, of supervisord or of a program is repaired by the
keeper or supervisord, orders keep flowing, and the topic's every order id is in PostgreSQL exactly once.

This host has servers of its own (the keeper starts them on free ports in tmp_path), so killing them
does not disturb the session's servers.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline.audit import audit
from pipeline.services import free_port
from pipeline.settings import load_settings
from tests.helpers import PipelineEnv, wait_for
from tests.supervised import Supervised

pytestmark = [pytest.mark.supervisor, pytest.mark.slow, pytest.mark.timeout(600)]

REPAIR_TARGET_S = 30.0


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Supervised]:
    kafka, pg = free_port(), free_port()
    pipe = PipelineEnv(f"127.0.0.1:{kafka}", f"postgresql://pipeline:{uuid.uuid4().hex}@127.0.0.1:{pg}/pipeline",
                       "food-orders", "order-processors", tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(tmp_path, 0o755)  # the postgres account reaches its data dir below
    sup = Supervised(tmp_path / "host", pipe, consumers=1, PIPELINE_STATE_DIR=str(state),
                     PIPELINE_ZOOKEEPER_PORT=str(free_port()), PIPELINE_KAFKA_CONTROLLER_PORT=str(free_port()),
                     PRODUCER_RATE="300")
    try:
        up = sup.pipeline("up", "--timeout", "240", check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        yield sup
    finally:
        down = sup.pipeline("down", check=False)
        keeper = state / "run" / "keeper.pid"
        if down.returncode != 0 and keeper.exists():  # leave nothing running, whatever happened
            os.killpg(int(keeper.read_text()), signal.SIGKILL)
        assert down.returncode == 0, down.stdout + down.stderr + keeper_log(sup)


def keeper_log(sup: Supervised) -> str:
    return (Path(sup.env["PIPELINE_STATE_DIR"]) / "log" / "keeper.log").read_text(errors="replace")[-4000:]


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
