"""What the host tests do inside an installed host: shell commands as a login, the journal, programs."""

from __future__ import annotations

import re

from tests.helpers import REPO
from tests.host.sandbox import SystemdSandbox

INSTALL = str(REPO / "deploy" / "install.sh")


def sh(host: SystemdSandbox, script: str, user: str | None = None, check: bool = True, timeout: float = 120) -> str:
    """A login shell inside (so /etc/profile.d puts the operator tools on PATH), from a neutral directory."""
    return host.run("bash", "-lc", script, user=user, check=check, timeout=timeout, cwd="/").stdout


def cursor(host: SystemdSandbox) -> str:
    """The journal's position now: read what comes after it with --after-cursor."""
    return sh(host, "journalctl -n 0 --show-cursor --no-pager").split("cursor: ", 1)[1].strip()


def journal_after(host: SystemdSandbox, position: str) -> str:
    return sh(host, f"journalctl --after-cursor '{position}' -o short-iso-precise --no-pager")


def orders(host: SystemdSandbox) -> int:
    out = sh(host, "runuser -u postgres -- psql -h /run/food-orders-postgresql -p 5433 -d orders -tAc "
                   "'SELECT count(*) FROM orders'", check=False)
    return int(out.strip()) if out.strip().isdigit() else -1


def programs(host: SystemdSandbox) -> dict[str, tuple[str, int]]:
    """supervisorctl status as name -> (state, pid)."""
    result = {}
    for line in sh(host, "supervisorctl status", check=False).splitlines():
        m = re.match(r"(\S+)\s+(\S+)(?:\s+pid (\d+))?", line)
        if m:
            result[m[1]] = (m[2], int(m[3] or 0))
    return result


AUXILIARY = ("metrics", "alerts")  # programs beside the producer and the consumers


def all_running(host: SystemdSandbox, count: int) -> bool:
    """`count` producer and consumer processes RUNNING (and the auxiliary programs too)."""
    procs = programs(host)
    pipeline = [state for name, (state, _) in procs.items() if name not in AUXILIARY]
    return len(pipeline) == count and all(state == "RUNNING" for state, _ in procs.values())


def assert_nothing_installed(host: SystemdSandbox) -> None:
    left = sh(host, "ls -d /opt/food-orders /etc/food-orders /var/lib/food-orders /etc/systemd/system/food-orders* "
                    "2>/dev/null; getent passwd food-orders food-orders-kafka", check=False)
    assert left.strip() == "", f"a refused install left: {left}"


def refused(host: SystemdSandbox, script: str, expected: str) -> None:
    result = host.run("bash", "-c", script, check=False, cwd="/")
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("install.sh: error:"), result.stderr
    assert expected in errors[0]
    assert_nothing_installed(host)
