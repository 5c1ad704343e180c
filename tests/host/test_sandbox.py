"""The sandbox itself: a real systemd that restarts what dies, isolated from the host, leaving nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.host.sandbox import SystemdSandbox

pytestmark = pytest.mark.systemd

UNIT = "restart-probe.service"
RESTARTING = """\
[Service]
ExecStart=/bin/sleep infinity
Restart=on-failure
RestartSec=100ms
"""


def test_systemd_restarts_a_killed_service(sandbox: SystemdSandbox) -> None:
    sandbox.run("tee", f"/etc/systemd/system/{UNIT}", input=RESTARTING)
    sandbox.systemctl("daemon-reload")
    sandbox.systemctl("start", UNIT)
    sandbox.wait_active(UNIT, timeout=10)
    killed = sandbox.main_pid(UNIT)
    assert killed > 0

    sandbox.run("kill", "-KILL", str(killed))

    restarted = wait_for(lambda: sandbox.main_pid(UNIT) not in (0, killed) and sandbox.main_pid(UNIT), 10,
                         f"{UNIT} to get a new MainPID after SIGKILL of {killed}")
    sandbox.wait_active(UNIT, timeout=10)
    assert sandbox.systemctl("show", "-P", "NRestarts", UNIT).stdout.strip() == "1"
    assert sandbox.main_pid(UNIT) == restarted


def test_side_by_side_sandboxes_are_isolated_and_leave_nothing(sandbox: SystemdSandbox, tmp_path: Path,
                                                               sandbox_workdir: Callable[[str], Path]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "before-boot").touch()  # the project is under /tmp here: booting must not clean it
    second = SystemdSandbox(sandbox_workdir("second"), project, hostname="second-host")
    with second:
        assert second.run("ls", str(project)).stdout.split() == ["before-boot"]
        # What an installer does: a system user, units, /opt, /var/lib, /var/log. Only the project is shared.
        second.run("bash", "-c", "useradd --system probe-user && mkdir /opt/probe /var/lib/probe /var/log/probe"
                   " && touch /etc/systemd/system/probe.service && echo inside > from-inside", cwd=str(project))
        assert (project / "from-inside").read_text() == "inside\n"
        assert "probe-user" not in Path("/etc/passwd").read_text()
        assert not any(Path(p).exists() for p in ("/opt/probe", "/var/lib/probe", "/var/log/probe",
                                                  "/etc/systemd/system/probe.service"))
        assert sandbox.run("id", "probe-user", check=False).returncode != 0
        assert second.run("hostname").stdout.strip() == "second-host"
        assert second.run("id", "-un", user="probe-user").stdout.strip() == "probe-user"
        init_pid, cgroups = second.init_pid, second.cgroups

    assert not Path(f"/proc/{init_pid}").exists()
    assert not [cg for cg in cgroups if cg.exists()]
    second.stop()  # a second stop is harmless
    assert sandbox.unit_state("multi-user.target") == "active"  # the first one never noticed
    second.remove_workdir()
