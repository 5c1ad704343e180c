"""A real systemd booted as PID 1 of fresh Linux namespaces, to test the installer and the units as root.

The sandbox's root is the host's / under an overlay whose upper layer is a tmpfs: users, units, /opt,
/var/lib, /var/log written inside stay in RAM and vanish at stop(). Only `project` is a real bind mount.
boot.sh (host side: child cgroups, unshare) and init.sh (PID 1: builds the root, execs systemd) do the
booting; this class drives them and runs commands inside with nsenter.

    with SystemdSandbox(tmp / "sb", project=REPO) as sb:
        sb.run("bash", "-c", f"cd {REPO} && deploy/install.sh")
        sb.wait_active("food-orders.service", timeout=60)

PIDs returned by main_pid() are numbers in the sandbox's pid namespace: signal them with run("kill", ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a root login inside would have; nothing of the host's (or pytest's) environment leaks in.
CLEAN_ENV = {"PATH": PATH, "HOME": "/root", "TERM": "dumb", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
             "SYSTEMD_COLORS": "0"}


class SandboxError(RuntimeError):
    """The sandbox did not boot, or could not be cleaned up."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class SystemdSandbox:
    """One booted systemd in its own pid/mount/uts/ipc/net/cgroup namespaces; a context manager.

    workdir: holds the overlay mount points, cgroups.list, boot.log and console.log (kept after stop()).
    project: a host directory bind-mounted read-write at the same path inside (the checkout under test).
    Two sandboxes can run side by side when their workdirs differ.
    """

    def __init__(self, workdir: Path, project: Path, hostname: str = "orders-host",
                 overlay_size: str = "5g") -> None:
        self.workdir = Path(workdir).resolve()
        self.project = Path(project).resolve()
        self.hostname = hostname
        self.overlay_size = overlay_size  # tmpfs: bounds every write made inside (Kafka + PostgreSQL data)
        # One child cgroup per workdir path: a rerun after a crash finds (and sweeps) its predecessor's.
        self.cgroup_name = "systemd-sandbox-" + hashlib.sha256(str(self.workdir).encode()).hexdigest()[:12]
        self.init_pid: int | None = None  # systemd, as a host pid
        self.boot_seconds: float | None = None
        self._launcher: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SystemdSandbox:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Boot and wait until `systemctl is-system-running` says running or degraded.

        Raises SandboxError with the boot and console log tails if systemd does not come up; whatever
        was started is stopped and removed first.
        """
        if self._launcher is not None:
            raise SandboxError("sandbox already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._sweep()
        t0 = time.monotonic()
        deadline = t0 + timeout
        env = {"PATH": PATH, "SANDBOX_DIR": str(self.workdir), "SANDBOX_CGROUP": self.cgroup_name,
               "SANDBOX_PROJECT": str(self.project), "SANDBOX_HOSTNAME": self.hostname,
               "SANDBOX_OVERLAY_SIZE": self.overlay_size}
        try:
            with open(self.workdir / "boot.log", "wb") as log:
                # pdeathsig: if the test process dies, the kernel kills the launcher, and unshare
                # --kill-child then the whole sandbox (it fires when the starting *thread* exits: start
                # from the thread that stops). New session: a Ctrl-C reaches pytest, which stops us in order.
                self._launcher = subprocess.Popen(
                    ["setpriv", "--pdeathsig", "KILL", "--", "/bin/bash", str(HERE / "boot.sh")],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            self.init_pid = self._wait_for_systemd(deadline)
            self._wait_until_running(deadline)
            self.boot_seconds = time.monotonic() - t0
        except BaseException as e:
            report = self._boot_report()
            try:
                self.stop()
            except SandboxError as cleanup:
                e.add_note(f"cleanup after the failed start also failed: {cleanup}")
            if isinstance(e, SandboxError):
                raise SandboxError(f"{e}\n{report}") from None
            raise

    def stop(self, timeout: float = 60) -> None:
        """Power off inside, SIGKILL whatever is left after `timeout`, remove the cgroups. Idempotent."""
        launcher = self._launcher
        if launcher is not None and launcher.poll() is None:
            if self.init_pid is not None:
                # No CAP_SYS_BOOT inside: systemd stops its units, then just exits.
                with contextlib.suppress(AssertionError):
                    self.run("systemctl", "poweroff", "--no-wall", check=False, timeout=15)
            try:
                launcher.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_init(launcher)
        self._kill_cgroup_members(self.cgroups)  # a launcher that did not exit, or a predecessor's leftovers
        if launcher is not None:
            launcher.wait(10)
        self._launcher, self.init_pid = None, None
        self._remove_cgroups(self.cgroups)
        for mount_point in ("root", "ovl"):  # empty on the host side: the mounts died with the namespace
            with contextlib.suppress(OSError):
                (self.workdir / mount_point).rmdir()

    def remove_workdir(self) -> None:
        """After a clean stop(): delete the logs, then the workdir and its parent if empty (rmdir only)."""
        for name in ("boot.log", "console.log", "cgroups.list"):
            (self.workdir / name).unlink(missing_ok=True)
        for d in (self.workdir, self.workdir.parent):
            with contextlib.suppress(OSError):
                d.rmdir()

    @property
    def cgroups(self) -> list[Path]:
        """Our child cgroups: those boot.sh recorded, and those it would make now (a predecessor's)."""
        recorded = [Path(line) for line in _read(self.workdir / "cgroups.list").split()]
        return list(dict.fromkeys([*recorded, *_child_cgroups(self.cgroup_name)]))

    # -- commands inside ---------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 120, user: str | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run cmd inside every namespace of the sandbox, with a clean environment plus `env`.

        user: run as this user (runuser, no login shell); cwd: a directory inside. With check=True a
        non-zero exit raises AssertionError with the command, exit code and output tails; a timeout
        always does, after killing the command and what it started.
        """
        if self.init_pid is None:
            raise SandboxError("sandbox not started")
        argv = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--",
                "env", "-i", *(["-C", cwd] if cwd else []), *(f"{k}={v}" for k, v in CLEAN_ENV.items())]
        if user is not None:
            argv += ["runuser", "-u", user, "--"]
        if env:  # after runuser, which would reset HOME, USER, LOGNAME and SHELL
            argv += ["env", *(f"{k}={v}" for k, v in env.items())]
        argv += list(cmd)
        # Own process group: on timeout, killing nsenter alone would leave its forked child running inside.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(self._describe(cmd, f"timed out after {timeout:.0f}s", out, err)) from None
        result = subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise AssertionError(self._describe(cmd, f"exit code {proc.returncode}", out, err))
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """systemctl inside, no pager."""
        return self.run("systemctl", "--no-pager", *args, check=check)

    def journal(self, unit: str, since: str | None = None) -> str:
        """The unit's journal (journalctl -u UNIT -o short-iso-precise), optionally --since a time."""
        since_args = ["--since", since] if since else []
        return self.run("journalctl", "-u", unit, "-o", "short-iso-precise", "--no-pager", *since_args).stdout

    def unit_state(self, unit: str) -> str:
        """ActiveState: active, activating, deactivating, inactive or failed."""
        return self.systemctl("show", "-P", "ActiveState", unit).stdout.strip()

    def main_pid(self, unit: str) -> int:
        """The unit's MainPID in the sandbox's pid namespace (0 when it has none)."""
        return int(self.systemctl("show", "-P", "MainPID", unit).stdout.strip())

    def wait_active(self, unit: str, timeout: float = 30) -> None:
        """Poll until the unit is active; fail with its status and journal tail if failed or too slow."""
        deadline = time.monotonic() + timeout
        state = self.unit_state(unit)
        while state != "active" and state != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
            state = self.unit_state(unit)
        if state != "active":
            status = self.systemctl("status", "-l", unit, check=False).stdout
            raise AssertionError(f"{unit} is {state}, not active (waited up to {timeout:.0f}s)\n"
                                 f"--- systemctl status\n{_tail(status)}\n"
                                 f"--- journal\n{_tail(self.journal(unit))}")

    # -- internals ---------------------------------------------------------------------------------

    def _wait_for_systemd(self, deadline: float) -> int:
        """The launcher's only child, once init.sh has exec'd systemd (its host pid)."""
        assert self._launcher is not None
        pid = self._launcher.pid
        while time.monotonic() < deadline:
            if self._launcher.poll() is not None:
                raise SandboxError(f"the launcher exited with {self._launcher.returncode} during boot")
            for child in _read(Path(f"/proc/{pid}/task/{pid}/children")).split():
                if _read(Path(f"/proc/{child}/comm")).strip() == "systemd":
                    return int(child)
            time.sleep(0.02)
        raise SandboxError("systemd was not exec'd in time")

    def _wait_until_running(self, deadline: float) -> None:
        bus = Path(f"/proc/{self.init_pid}/root/run/systemd/private")
        while not bus.is_socket():
            if time.monotonic() > deadline or self._launcher is None or self._launcher.poll() is not None:
                raise SandboxError("systemd's private bus did not appear")
            time.sleep(0.02)
        # --wait blocks until the boot transaction is done; non-zero exit for "degraded" is fine.
        try:
            state = self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=max(deadline - time.monotonic(), 1)).stdout.strip()
        except AssertionError as e:
            raise SandboxError(f"systemd did not finish booting: {e}") from None
        if state not in ("running", "degraded"):
            raise SandboxError(f"systemd is {state!r} after boot")

    def _kill_init(self, launcher: subprocess.Popen[bytes]) -> None:
        """SIGKILL systemd: the kernel kills the rest of its pid namespace and unshare, which reaps it, exits.

        Killing the launcher first would orphan systemd to the host's PID 1 as a zombie.
        """
        stat = _read(Path(f"/proc/{self.init_pid}/stat")) if self.init_pid else ""
        # Only while it is still the launcher's child, not a reused pid: ppid is the 2nd field after "(comm)".
        if self.init_pid and stat.rpartition(")")[2].split()[1:2] == [str(launcher.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(10)

    def _boot_report(self) -> str:
        return (f"--- {self.workdir / 'boot.log'}\n{_tail(_read(self.workdir / 'boot.log'))}\n"
                f"--- {self.workdir / 'console.log'}\n{_tail(_read(self.workdir / 'console.log'))}")

    def _describe(self, cmd: tuple[str, ...], outcome: str, out: str, err: str) -> str:
        return (f"in sandbox {self.hostname}: {shlex.join(cmd)}: {outcome}\n"
                f"--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}")

    def _sweep(self) -> None:
        """Remove what a previous, killed run with this workdir left: processes, cgroups, host mounts."""
        cgroups = self.cgroups
        self._kill_cgroup_members(cgroups)
        self._remove_cgroups(cgroups)
        # Its mounts live in its own mount namespace and died with it; unmount any that leaked here.
        for line in reversed(_read(Path("/proc/self/mounts")).splitlines()):
            point = line.split()[1]
            if point.startswith(f"{self.workdir}/"):
                subprocess.run(["umount", "-l", point], check=False, timeout=10)

    @staticmethod
    def _kill_cgroup_members(cgroups: list[Path], timeout: float = 10) -> None:
        """SIGKILL every process in these cgroup trees until they are empty (only ours are in there)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = {int(p) for cg in cgroups if cg.is_dir() for procs in cg.rglob("cgroup.procs")
                    for p in _read(procs).split()}
            if not pids:
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"processes {sorted(pids)} survive SIGKILL in {cgroups}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    @staticmethod
    def _remove_cgroups(cgroups: list[Path], timeout: float = 10) -> None:
        """rmdir the trees deepest first; retry briefly, as a cgroup is busy until its zombies are reaped."""
        deadline = time.monotonic() + timeout
        for cg in cgroups:
            for d in sorted((p for p in [cg, *cg.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)):
                while True:
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError as e:
                        if time.monotonic() > deadline:
                            raise SandboxError(f"cannot remove cgroup {d}: {e}") from None
                        time.sleep(0.05)


def _child_cgroups(name: str) -> list[Path]:
    """Where boot.sh, started from this process, puts its child cgroup `name` in each hierarchy."""
    paths = []
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _id, ctrl, path = line.split(":", 2)
        if not ctrl:
            unified = Path("/sys/fs/cgroup/unified")
            base = unified if unified.is_dir() else Path("/sys/fs/cgroup")
        else:
            base = Path("/sys/fs/cgroup") / ctrl.removeprefix("name=")
        paths.append(base / path.lstrip("/") / name)
    return paths


def link(a: SystemdSandbox, b: SystemdSandbox, a_address: str, b_address: str, prefix: int = 24) -> None:
    """Join two booted sandboxes (two hosts) with a veth pair: `a_address` on a's end, `b_address` on b's.

    The pair is made on this side, then each end moves into its sandbox's network namespace, where it
    is addressed and brought up; it vanishes with either namespace.
    """
    if a.init_pid is None or b.init_pid is None:
        raise SandboxError("both sandboxes must be started")
    tag = hashlib.sha256(f"{a.workdir}{b.workdir}".encode()).hexdigest()[:6]
    ends = [(a, f"fo{tag}a", a_address), (b, f"fo{tag}b", b_address)]
    subprocess.run(["ip", "link", "del", ends[0][1]], check=False, capture_output=True)  # a killed run's leftover
    subprocess.run(["ip", "link", "add", ends[0][1], "type", "veth", "peer", "name", ends[1][1]], check=True)
    for sandbox, name, address in ends:
        subprocess.run(["ip", "link", "set", name, "netns", str(sandbox.init_pid)], check=True)
        sandbox.run("ip", "addr", "add", f"{address}/{prefix}", "dev", name)
        sandbox.run("ip", "link", "set", name, "up")
