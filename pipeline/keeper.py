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

import os
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
from pipeline.ops import SupervisordPaths, await_supervisord, supervisord_paths
from pipeline.services import LocalServices, ManagedProcess, ServiceError, ServicesConfig

CHECK_EVERY = 0.5
RETRY_MAX = 30.0  # longest pause between two tries of a server that keeps failing to start
PROGRAM_STOP_WAIT = 40.0  # above the programs' stopwaitsecs (30 s)


class Keeper:
    def __init__(self, services: LocalServices, paths: SupervisordPaths) -> None:
        self.services = services
        self.paths = paths
        self.stop_requested = threading.Event()
        self.supervisord: int | None = None
        self.next_try: dict[str, float] = {}
        self.delay: dict[str, float] = {}

    def run(self) -> int:
        self.services.start(timeout=120, say=logger.info)
        if not self.stop_requested.is_set():
            self._start_supervisord()
        while not self.stop_requested.wait(CHECK_EVERY):
            self._reap()
            for server in self.services.all():
                if server.pid() is None:
                    self._restart_server(server)
            if self.supervisord is not None and not _alive(self.supervisord):
                self._supervisord_died()
        self._shutdown()
        return 0

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("{} received: stopping supervisord (programs first), then the servers",
                    signal.Signals(signum).name)
        self.stop_requested.set()

    # -- servers --------------------------------------------------------------------------------

    def _restart_server(self, server: ManagedProcess) -> None:
        if time.monotonic() < self.next_try.get(server.name, 0.0):
            return
        logger.warning("{} is not running: starting it again", server.name)
        started = time.monotonic()
        try:
            pid = server.start(timeout=120)
        except ServiceError as e:
            delay = min(self.delay.get(server.name, 1.0) * 2, RETRY_MAX)
            self.delay[server.name] = delay
            self.next_try[server.name] = time.monotonic() + delay
            logger.error("{} did not start: {}; next try in {:.0f}s\n{}", server.name, e, delay, e.log_tail)
            return
        self.delay.pop(server.name, None)
        logger.info("{} ready again, pid {}, {:.1f}s after the restart began", server.name, pid,
                    time.monotonic() - started)

    # -- supervisord ----------------------------------------------------------------------------

    def _start_supervisord(self) -> None:
        for d in (self.paths.socket.parent, self.paths.childlogdir):
            d.mkdir(parents=True, exist_ok=True)
        # supervisord writes its own log file; in the foreground it repeats it on stdout.
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "-c", str(self.paths.conf)],
            cwd=self.paths.conf.parent, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        self.supervisord = proc.pid
        await_supervisord(30, alive=lambda: _alive(proc.pid))
        logger.info("supervisord running, pid {} ({})", proc.pid, self.paths.conf)

    def _supervisord_died(self) -> None:
        logger.warning("supervisord (pid {}) died: stopping its orphaned programs, then starting it again",
                       self.supervisord)
        self.supervisord = None
        self._stop_orphans()
        try:
            self._start_supervisord()
        except (FatalError, OSError) as e:
            logger.error("supervisord did not start again: {}; next try in {:.0f}s", e, CHECK_EVERY)

    def _stop_orphans(self) -> None:
        """Programs of a supervisord that is gone: SIGTERM (finish the batch, commit), SIGKILL later."""
        url = f"unix://{self.paths.socket}"
        orphans = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("SUPERVISOR_SERVER_URL") == url:
                    orphans.append(proc)
            except psutil.Error:
                continue
        for proc in orphans:
            logger.info("stopping orphaned program pid {} ({})", proc.pid,
                        proc.environ().get("SUPERVISOR_PROCESS_NAME", "?"))
            proc.terminate()
        _, alive = psutil.wait_procs(orphans, timeout=PROGRAM_STOP_WAIT)
        for proc in alive:
            logger.warning("orphaned program pid {} ignored SIGTERM for {:.0f}s: SIGKILL", proc.pid,
                           PROGRAM_STOP_WAIT)
            proc.kill()

    # -- the end --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self.supervisord is not None and _alive(self.supervisord):
            os.kill(self.supervisord, signal.SIGTERM)  # supervisord stops its groups in priority order
            deadline = time.monotonic() + 150
            while _alive(self.supervisord) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.2)
            logger.info("supervisord stopped")
        self.services.stop(say=logger.info)

    @staticmethod
    def _reap() -> None:
        """Collect exited children (servers and supervisord are ours; nobody else waits for them)."""
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def keeper_process(config: ServicesConfig) -> ManagedProcess:
    """The keeper as a server of its own, for `bin/pipeline up`/`down`: ready once supervisord answers."""
    from pipeline.ops import supervisord_running

    root = config.state_dir
    return ManagedProcess(
        name="keeper",
        command=[sys.executable, "-m", "pipeline.keeper"],
        pid_file=root / "run" / "keeper.pid",
        log_file=root / "log" / "keeper.log",
        ports=[],
        ready=supervisord_running,
        marker="pipeline.keeper",
    )


def main() -> int:
    setup_logging("keeper")
    try:
        keeper = Keeper(LocalServices(ServicesConfig.from_env(), say=logger.info), supervisord_paths())
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
        keeper.services.stop(say=logger.info)
        return 1


if __name__ == "__main__":
    sys.exit(main())
