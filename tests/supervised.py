"""A real supervisord running the real producer and consumers against the test servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped,unused-ignore]

from tests.helpers import REPO, PipelineEnv, wait_for


class Supervised:
    """One "host": a copy of the repo's supervisord.conf in its own dir, pointed at one PipelineEnv."""

    def __init__(self, root: Path, pipe: PipelineEnv, consumers: int = 1, **env: str) -> None:
        self.root, self.pipe = root, pipe
        (root / "conf.d").mkdir(parents=True)
        (root / "var" / "run").mkdir(parents=True)
        (root / "var" / "log").mkdir(parents=True)
        shutil.copy(REPO / "supervisord.conf", root / "supervisord.conf")
        template = (REPO / "deploy" / "supervisor" / "consumer.conf").read_text()
        (root / "conf.d" / "consumer.conf").write_text(template.replace("numprocs = 1", f"numprocs = {consumers}"))
        (root / ".venv").symlink_to(REPO / ".venv")
        self.conf = root / "supervisord.conf"
        settings = {"PIPELINE_ENV_FILE": os.devnull, "PIPELINE_SUPERVISORD_CONF": str(self.conf),
                    "PRODUCER_RATE": "200", "PRODUCER_MAX_ORDERS": "0", **env}
        self.env = pipe.env(**settings)

    def start(self, prefix: list[str] | None = None) -> None:
        cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)]
        subprocess.run([*(prefix or []), *cmd], env=self.env, cwd=self.root, check=True, timeout=30)
        wait_for(self._answers, 30, "supervisord to answer")

    def _answers(self) -> bool:
        try:
            return bool(self.rpc().supervisor.getState()["statecode"] == 1)
        except (OSError, xmlrpc.client.Error):
            return False

    def rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.root / 'var' / 'run' / 'supervisor.sock'}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "bin" / "supervisorctl"), *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=check)

    def pipeline(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=True)

    def info(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.rpc().supervisor.getAllProcessInfo()}

    def pids(self) -> dict[str, int]:
        return {name: p["pid"] for name, p in self.info().items() if p["statename"] == "RUNNING"}

    def log(self, name: str) -> str:
        return (self.root / "var" / "log" / f"{name}.log").read_text(errors="replace")

    def shutdown(self) -> None:
        if self._answers():
            rpc = self.rpc()
            rpc.supervisor.stopAllProcesses(True)
            rpc.supervisor.shutdown()
            wait_for(lambda: not (self.root / "var" / "run" / "supervisor.sock").exists(), 60, "supervisord to exit")
