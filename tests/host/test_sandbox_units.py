"""What units can rely on inside the sandbox: systemd's hardening options take effect, and logs reach the journal.

If one of these fails, a unit test elsewhere that uses the option would fail for the sandbox's sake, not the unit's.
"""

from __future__ import annotations

import pytest

from tests.helpers import wait_for
from tests.host.sandbox import SystemdSandbox

pytestmark = pytest.mark.systemd

# Runs as the unit's process; each line is one outcome the test checks.
PROBE = r"""
id -un
grep -E '^(NoNewPrivs|CapBnd|Seccomp):' /proc/self/status | tr -d '\t'
touch /etc/probe 2>/dev/null && echo etc-writable || echo etc-read-only
ls /root >/dev/null 2>&1 && echo home-visible || echo home-hidden
ls -A /tmp | grep -q . && echo tmp-shared || echo tmp-private
[ -e /dev/vda ] || [ -e /dev/console ] && echo dev-shared || echo dev-private
grep -q ' /sys/fs/cgroup/systemd cgroup ro,' /proc/self/mounts && echo cgroup-read-only || echo cgroup-writable
python3 -c 'import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)' 2>/dev/null \
  && echo netlink-allowed || echo netlink-denied
python3 -c 'import socket; socket.socket(socket.AF_INET6).close()' && echo inet6-allowed
"""
HARDENED = """\
[Service]
Type=oneshot
ExecStart=/bin/bash /usr/local/bin/hardening-probe
ProtectSystem=strict
PrivateTmp=yes
ProtectHome=yes
NoNewPrivileges=yes
PrivateDevices=yes
CapabilityBoundingSet=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
ProtectKernelTunables=yes
ProtectControlGroups=yes
User=nobody
"""
EXPECTED = ["nobody", "CapBnd:0000000000000000", "NoNewPrivs:1", "Seccomp:2", "etc-read-only", "home-hidden",
            "tmp-private", "dev-private", "cgroup-read-only", "netlink-denied", "inet6-allowed"]

# A long-running process that logs through /dev/log, the shape of a consumer.
SYSLOGGER = """\
[Service]
ExecStart=/usr/bin/python3 -c 'import syslog, time; syslog.openlog("consumer_01"); \\
  [syslog.syslog(f"hello {i}") for i in range(5)]; print("on stdout", flush=True); time.sleep(600)'
"""


def install_unit(sandbox: SystemdSandbox, name: str, text: str) -> None:
    sandbox.run("tee", f"/etc/systemd/system/{name}", input=text)
    sandbox.systemctl("daemon-reload")


def test_hardening_options_take_effect(sandbox: SystemdSandbox) -> None:
    sandbox.run("tee", "/usr/local/bin/hardening-probe", input=PROBE)
    sandbox.run("touch", "/tmp/host-like-tmp-file")  # so that a shared /tmp would not look empty
    install_unit(sandbox, "hardened.service", HARDENED)

    sandbox.systemctl("start", "hardened.service")

    out = sandbox.run("journalctl", "-u", "hardened.service", "_TRANSPORT=stdout", "-o", "cat", "--no-pager").stdout
    assert out.split() == EXPECTED, out


def test_stdout_and_syslog_reach_the_units_journal(sandbox: SystemdSandbox) -> None:
    install_unit(sandbox, "syslogger.service", SYSLOGGER)
    sandbox.systemctl("start", "syslogger.service")

    # /dev/log messages are attributed to the unit because the process is still alive when journald
    # reads its cgroup; a process that exits right after logging may lose the attribution (systemd#2913).
    wait_for(lambda: sandbox.journal("syslogger.service").count("consumer_01[") == 5, 10,
             "5 syslog lines from consumer_01 in journalctl -u syslogger.service")
    assert "on stdout" in sandbox.journal("syslogger.service")
    sandbox.systemctl("stop", "syslogger.service")
