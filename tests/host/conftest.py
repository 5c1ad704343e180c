"""Host tests: the installer and the units under a real systemd (sandbox.py), booted once per session.

They need root (namespaces, mounts, cgroups) and are skipped, saying so, without it; CI runs them as root.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.host.sandbox import SystemdSandbox

NOT_ROOT = "systemd sandbox tests need root (namespaces, mounts, cgroups); CI runs them as root"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        for item in items:
            if "systemd" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=NOT_ROOT))


def _workdir(name: str) -> Path:
    # Stable per checkout, test worker and name, so that a run killed mid-way is swept by the next one.
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return Path(tempfile.gettempdir()) / f"food-orders-sandbox-{checkout}" / f"{worker}-{name}"


@pytest.fixture(scope="session")
def sandbox_workdir() -> Callable[[str], Path]:
    """name -> a workdir for one more SystemdSandbox (call its remove_workdir() after a clean stop)."""
    return _workdir


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SystemdSandbox]:
    """A booted sandbox whose project is this checkout; stopped at the end of the session, pass or fail."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    with SystemdSandbox(_workdir("session"), project=REPO) as booted:
        yield booted
    booted.remove_workdir()  # only after a clean stop: else its logs and cgroups.list help the next sweep
