"""Run one local server as a detached child: pid file, port checks, readiness wait, graceful stop.

This is the generic half of `pipeline.services`; `servers.py` says what each server is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


class ServiceError(RuntimeError):
    """A server could not be started or stopped; the message is one line for the operator."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class RunAs:
    """The OS account a server runs as (PostgreSQL refuses root)."""

    user: str | None = None

    @staticmethod
    def postgres_if_root() -> RunAs:
        return RunAs("postgres") if os.geteuid() == 0 else RunAs(None)


@dataclass
class ManagedProcess:
    """One server process: how to start it, how to know it is ready, where it logs."""

    name: str
    command: list[str]
    pid_file: Path
    log_file: Path
    ports: list[int]
    ready: Callable[[], bool]
    marker: str  # a string in the command line that identifies our process (its data dir)
    stop_signal: signal.Signals = signal.SIGTERM
    run_as: RunAs = field(default_factory=RunAs)
    env: dict[str, str] | None = None
    extra_logs: list[Path] = field(default_factory=list)
    # Runs before the process is spawned; waits for what must be true first (raises ServiceError if never).
    before_start: Callable[[], object] | None = None

    def pid(self) -> int | None:
        """The pid of our running server, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if self.marker not in " ".join(proc.cmdline()):
                return None
        except psutil.Error:
            return None
        return pid

    def start(self, timeout: float) -> int:
        """Start the server unless it runs; wait until it is ready. Returns its pid."""
        running = self.pid()
        if running is not None:
            self._wait_ready(running, timeout)
            return running
        for port in self.ports:
            owner = port_owner(port)
            if owner is not None:
                raise ServiceError(f"{self.name}: port {port} is already in use by {owner}")
        if self.before_start is not None:
            self.before_start()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C must not kill the servers
                user=self.run_as.user,
                env=self.env,
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        self._wait_ready(proc.pid, timeout, proc)
        return proc.pid

    def _wait_ready(self, pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        def gone() -> bool:
            return proc.poll() is not None if proc is not None else not psutil.pid_exists(pid)

        if poll_until(self.ready, timeout, give_up=gone):
            return
        if proc is not None and proc.returncode is not None:
            raise ServiceError(f"{self.name} exited with status {proc.returncode} during start", self.log_tail())
        if gone():
            raise ServiceError(f"{self.name} (pid {pid}) died during start", self.log_tail())
        raise ServiceError(f"{self.name} not ready after {timeout:.0f}s (pid {pid})", self.log_tail())

    def stop(self, timeout: float) -> bool:
        """Stop gracefully, escalate to SIGKILL after timeout. Returns False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        proc = psutil.Process(pid)
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 20) -> str:
        parts = []
        for path in [*self.extra_logs, self.log_file]:
            text = tail(path, lines)
            if text:
                parts.append(f"--- {path} ---\n{text}")
        return "\n".join(parts)


def poll_until(ready: Callable[[], bool], timeout: float, give_up: Callable[[], bool] = lambda: False,
               interval: float = 0.2) -> bool:
    """Call `ready` until it is true (True) or `timeout` passes or `give_up` turns true (False). A probe
    that raises means "not yet": a server that is starting refuses connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not give_up():
        try:
            if ready():
                return True
        except Exception:  # noqa: BLE001 - a probe failing just means "not yet"
            pass
        time.sleep(interval)
    return False


def tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def port_owner(port: int) -> str | None:
    """Who listens on 127.0.0.1:port ("pid 123 (java)"), or None when the port is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return "another process"


def free_port() -> int:
    """A TCP port that is free on loopback right now (for ephemeral test servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tcp_exchange(port: int, payload: bytes, timeout: float = 1.0) -> bytes:
    """Send payload to 127.0.0.1:port and read the whole reply (the server closes after a 4lw)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
