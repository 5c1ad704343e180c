"""The keeper: what systemd is on an installed host, for a checkout (`bin/pipeline up` starts it).

It starts ZooKeeper, Kafka and PostgreSQL in order, each waited for, then supervisord in the
foreground as its child, and from then on looks at them twice a second:
- a server that died is started again (Kafka only once its old ZooKeeper registration expired);
- a supervisord that died has its orphaned programs stopped first (they would otherwise run twice,
  under the same static member ids) and is started again, its programs with it.
SIGTERM (`bin/pipeline down`): supervisord stops the programs (producer, then consumers), then the
servers stop, PostgreSQL and Kafka before ZooKeeper.

The servers are not supervisord programs so that the topology is the installed host's, where each
server is a systemd unit beside supervisord's: restarting supervisord never restarts Kafka or
PostgreSQL, and every server start waits for readiness, which supervisord cannot express.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import psutil
from loguru import logger

from pipeline.errors import FatalError
from pipeline.logs import setup_logging
from pipeline.ops import SupervisordPaths, await_supervisord, supervisord_running
from pipeline.services import LocalServices, ManagedProcess, ServiceError, ServicesConfig
from pipeline.settings import environment, parse_host_settings

CHECK_EVERY = 0.5
RETRY_MAX = 30.0  # longest pause between two tries of something that keeps failing to start
PROGRAM_STOP_WAIT = 40.0  # above the programs' stopwaitsecs (30 s)
# Set in supervisord's environment, so inherited by every program it starts: how the keeper finds the
# programs of a supervisord that died (by value, not by a path that symlinks could spell two ways).
KEEPER_TAG = "PIPELINE_KEEPER"


class Keeper:
    def __init__(self, services: LocalServices, paths: SupervisordPaths) -> None:
        self.services = services
        self.paths = paths
        self.stop_requested = threading.Event()
        self.signal_name = ""
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.tag = f"{os.getpid()}@{paths.conf}"
        self.next_try: dict[str, float] = {}
        self.delay: dict[str, float] = {}

    def run(self) -> int:
        self.services.start(timeout=120, say=logger.info)
        if not self.stop_requested.is_set():
            self._start_supervisord()
        while not self.stop_requested.wait(CHECK_EVERY):
            self._reap()
            for server in self.services.all():
                if server.pid() is None and not self.stop_requested.is_set():
                    self._restart_server(server)
            if self.supervisord is not None and self.supervisord.poll() is not None:
                self._supervisord_died()
            elif self.supervisord is None and time.monotonic() >= self.next_try.get("supervisord", 0.0):
                self._try_start_supervisord()
        logger.info("{} received: stopping supervisord (programs first), then the servers", self.signal_name)
        self._shutdown()
        return 0

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        # Only set a flag: logging here could re-enter a log call the main thread is in.
        self.signal_name = signal.Signals(signum).name
        self.stop_requested.set()

    # -- servers --------------------------------------------------------------------------------

    def _restart_server(self, server: ManagedProcess) -> None:
        if time.monotonic() < self.next_try.get(server.name, 0.0):
            return
        logger.warning("{} is not running: starting it again", server.name)
        started = time.monotonic()
        try:
            self.services.prepare(server.name)
            pid = server.start(timeout=120)
        except (ServiceError, OSError) as e:
            delay = self._back_off(server.name)
            tail = e.log_tail if isinstance(e, ServiceError) else ""
            logger.error("{} did not start: {}; next try in {:.0f}s\n{}", server.name, e, delay, tail)
            return
        self.delay.pop(server.name, None)
        logger.info("{} ready again, pid {}, {:.1f}s after the restart began", server.name, pid,
                    time.monotonic() - started)

    def _back_off(self, name: str) -> float:
        delay = min(self.delay.get(name, 0.5) * 2, RETRY_MAX)
        self.delay[name] = delay
        self.next_try[name] = time.monotonic() + delay
        return delay

    # -- supervisord ----------------------------------------------------------------------------

    def _start_supervisord(self) -> None:
        for d in (self.paths.socket.parent, self.paths.childlogdir):
            d.mkdir(parents=True, exist_ok=True)
        if self.paths.metrics_dir is not None:  # metrics of programs that are gone: a new start, new counts
            shutil.rmtree(self.paths.metrics_dir, ignore_errors=True)
        # supervisord writes its own log file; in the foreground it repeats it on stdout.
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "-c", str(self.paths.conf)],
            cwd=self.paths.conf.parent, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env={**os.environ, KEEPER_TAG: self.tag},
        )
        self.supervisord = proc
        await_supervisord(self.paths, 30, alive=lambda: proc.poll() is None)
        self.delay.pop("supervisord", None)
        logger.info("supervisord running, pid {} ({})", proc.pid, self.paths.conf)

    def _try_start_supervisord(self) -> None:
        try:
            self._start_supervisord()
        except (FatalError, OSError) as e:
            if self.supervisord is not None and self.supervisord.poll() is None:
                self.supervisord.kill()  # started but never answered: not half-running
            self.supervisord = None
            logger.error("supervisord did not start: {}; next try in {:.0f}s", e, self._back_off("supervisord"))

    def _supervisord_died(self) -> None:
        assert self.supervisord is not None
        logger.warning("supervisord (pid {}) died: stopping its orphaned programs, then starting it again",
                       self.supervisord.pid)
        self.supervisord = None
        self._stop_orphans()
        self._try_start_supervisord()

    def _stop_orphans(self) -> None:
        """Programs of a supervisord that is gone: SIGTERM (finish the batch, commit), SIGKILL later.
        The producer goes first, so the consumers still take its last orders."""
        orphans: list[tuple[psutil.Process, str]] = []
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
            except psutil.Error:
                continue
            if env.get(KEEPER_TAG) == self.tag and proc.pid != os.getpid():
                orphans.append((proc, env.get("SUPERVISOR_PROCESS_NAME", "?")))
        producers = [p for p, name in orphans if name == "producer"]
        for group in (producers, [p for p, name in orphans if name != "producer"]):
            for proc in group:
                logger.info("stopping orphaned program pid {} ({})", proc.pid, dict(orphans)[proc])
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
            _, alive = psutil.wait_procs(group, timeout=PROGRAM_STOP_WAIT)
            for proc in alive:
                logger.warning("orphaned program pid {} ignored SIGTERM for {:.0f}s: SIGKILL", proc.pid,
                               PROGRAM_STOP_WAIT)
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()

    # -- the end --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self.supervisord is not None and self.supervisord.poll() is None:
            self.supervisord.terminate()  # supervisord stops its groups in priority order
            try:
                self.supervisord.wait(150)
            except subprocess.TimeoutExpired:
                self.supervisord.kill()
            logger.info("supervisord stopped")
        self.services.stop(say=logger.info)

    def _reap(self) -> None:
        """Collect exited servers (ManagedProcess forgets its Popen); supervisord is waited for by poll()."""
        keep = self.supervisord.pid if self.supervisord is not None else None
        for child in psutil.Process().children():
            if child.pid == keep:
                continue
            with contextlib.suppress(ChildProcessError, psutil.Error):
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)


def keeper_process(config: ServicesConfig, paths: SupervisordPaths) -> ManagedProcess:
    """The keeper as a server of its own, for `bin/pipeline up`/`down`: ready once supervisord answers."""
    root = config.state_dir
    return ManagedProcess(
        name="keeper",
        command=[sys.executable, "-m", "pipeline.keeper"],
        pid_file=root / "run" / "keeper.pid",
        log_file=root / "log" / "keeper.log",
        ports=[],
        ready=lambda: supervisord_running(paths),
        marker="pipeline.keeper",
    )


def main() -> int:
    setup_logging("keeper")
    try:
        host = parse_host_settings(environment())
        keeper = Keeper(LocalServices(ServicesConfig.from_host(host), say=logger.info),
                        SupervisordPaths.read(host.supervisord_conf))
    except (ServiceError, FatalError) as e:
        logger.error("{}", e)
        return 1
    signal.signal(signal.SIGTERM, keeper.request_stop)
    signal.signal(signal.SIGINT, keeper.request_stop)
    try:
        return keeper.run()
    except (ServiceError, FatalError) as e:
        logger.error("{}", e)
        if isinstance(e, ServiceError) and e.log_tail:
            logger.error("{}", e.log_tail)
        keeper._shutdown()  # whatever it had started, supervisord included
        return 1


if __name__ == "__main__":
    sys.exit(main())
