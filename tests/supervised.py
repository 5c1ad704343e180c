"""The one supervisord driver of the tests: a supervisord of a test's own, in the foreground as our child."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped,unused-ignore]

from pipeline.ops import SupervisordPaths
from pipeline.services.process import free_port
from tests.helpers import REPO, PipelineEnv, wait_for


class Supervisord:
    """One supervisord run from `conf` with `env`, driven over XML-RPC and by supervisorctl.

    `stop()` leaves nothing running, whatever happened: call it in a `finally`."""

    def __init__(self, conf: Path, env: dict[str, str]) -> None:
        self.conf, self.env, self.root = conf, env, conf.parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return SupervisordPaths.read(self.conf).socket

    def start(self, prefix: list[str] | None = None) -> None:
        """`prefix`: a command that runs supervisord's command line (e.g. in another UTS namespace)."""
        cmd = [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "-c", str(self.conf)]
        self.proc = subprocess.Popen([*(prefix or []), *cmd], env=self.env, cwd=self.root,
                                     stdout=subprocess.DEVNULL, stderr=(self.root / "supervisord.stderr").open("ab"))
        wait_for(self._answers, 30, "supervisord to answer on its socket", interval=0.05)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"supervisord exited with {self.proc.returncode}: {self.logs()}")
        try:
            return bool(self.rpc().supervisor.getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def stop(self, timeout: float = 90) -> None:
        """Graceful shutdown (programs first); on any trouble, kill supervisord and every child it left."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        children = []
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(Exception):
            self.rpc().supervisor.shutdown()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def logs(self) -> str:
        files = [self.root / "supervisord.stderr", SupervisordPaths.read(self.conf).logfile]
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in files if p.exists())

    # -- clients ------------------------------------------------------------------------------------

    def rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
                              env=self.env, capture_output=True, text=True, timeout=120, check=check)

    def info(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.rpc().supervisor.getAllProcessInfo()}

    def pids(self) -> dict[str, int]:
        return {name: p["pid"] for name, p in self.info().items() if p["statename"] == "RUNNING"}


class Supervised(Supervisord):
    """One pipeline "host": the repo's supervisord.conf copied to its own dir, running the real producer and
    consumers against one PipelineEnv."""

    def __init__(self, root: Path, pipe: PipelineEnv, consumers: int = 1, **env: str) -> None:
        self.pipe = pipe
        (root / "conf.d").mkdir(parents=True)
        (root / "var" / "run").mkdir(parents=True)
        (root / "var" / "log").mkdir(parents=True)
        shutil.copy(REPO / "supervisord.conf", root / "supervisord.conf")
        template = (REPO / "deploy" / "supervisor" / "consumer.conf").read_text()
        (root / "conf.d" / "consumer.conf").write_text(template.replace("numprocs = 1", f"numprocs = {consumers}"))
        (root / ".venv").symlink_to(REPO / ".venv")
        conf = root / "supervisord.conf"
        settings = {"PIPELINE_ENV_FILE": os.devnull, "PIPELINE_SUPERVISORD_CONF": str(conf),
                    "PRODUCER_RATE": "200", "PRODUCER_MAX_ORDERS": "0", "METRICS_PORT": str(free_port()), **env}
        super().__init__(conf, pipe.env(**settings))

    def pipeline(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`bin/pipeline ARGS` on this host."""
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=check)

    def log(self, name: str) -> str:
        return (self.root / "var" / "log" / f"{name}.log").read_text(errors="replace")


@contextmanager
def keeper_host(tmp_path: Path, **env: str) -> Iterator[Supervised]:
    """A whole dev-mode host, `bin/pipeline up`: a keeper with servers of its own on free ports under
    tmp_path, and supervisord with the producer and one consumer. Everything stops at the end."""
    kafka, pg = free_port(), free_port()
    pipe = PipelineEnv(f"127.0.0.1:{kafka}", f"postgresql://pipeline:{uuid.uuid4().hex}@127.0.0.1:{pg}/pipeline",
                       "food-orders", "order-processors", tmp_path)
    # Outside pytest's temp root, which any new pytest session resets to 0700 (the postgres account must
    # reach its data dir below this one, at every start).
    state = Path(tempfile.mkdtemp(prefix="food-orders-keeper-"))
    os.chmod(state, 0o755)
    sup = Supervised(tmp_path / "host", pipe, consumers=1, PIPELINE_STATE_DIR=str(state),
                     PIPELINE_ZOOKEEPER_PORT=str(free_port()), PIPELINE_KAFKA_CONTROLLER_PORT=str(free_port()),
                     **{"PRODUCER_RATE": "300", **env})
    try:
        up = sup.pipeline("up", "--timeout", "240", check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        yield sup
    finally:
        down = sup.pipeline("down", check=False)
        keeper = state / "run" / "keeper.pid"
        if down.returncode != 0 and keeper.exists():  # leave nothing running, whatever happened
            os.killpg(int(keeper.read_text()), signal.SIGKILL)
        log = keeper_log(sup)
        if down.returncode == 0:
            shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr + log


def keeper_log(sup: Supervised) -> str:
    return (Path(sup.env["PIPELINE_STATE_DIR"]) / "log" / "keeper.log").read_text(errors="replace")[-4000:]
