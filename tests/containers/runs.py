"""Which test run owns a container, and the sweep of containers whose run is gone.

Every container the test backend starts carries COMMON_LABEL and RUN_LABEL=<run id>, where the run id
names this host, the pid of the test process and that process's start time (so a recycled pid is not
mistaken for the run). A sweep removes the labelled containers of this host whose process is gone:
at the start and end of each test session and at the end of bin/test, so even the containers of a
test process killed with SIGKILL do not outlive the next of these.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import docker
import docker.errors

COMMON_LABEL = "org.food-orders.test"
RUN_LABEL = "org.food-orders.test-run"


def process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (/proc/<pid>/stat field 22), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def run_id(pid: int | None = None) -> str:
    """host:pid:start of the given process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start(pid)}"


def run_labels() -> dict[str, str]:
    return {COMMON_LABEL: "1", RUN_LABEL: run_id()}


def run_is_alive(run: str, host: str | None = None) -> bool:
    """False only for a run of this host whose process is gone; runs of other hosts are not ours to judge."""
    parts = run.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return False  # not a label we wrote: not a run anyone can own
    run_host, pid, start = parts
    if run_host != (host or socket.gethostname()):
        return True
    return process_start(int(pid)) == start


def sweep(client: docker.DockerClient, also: str | None = None) -> list[str]:
    """Remove (with their volumes) the labelled containers whose run is gone, and those of run `also`.
    Returns the names removed."""
    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"label": COMMON_LABEL}):
        run = container.labels.get(RUN_LABEL, "")
        if run != also and run_is_alive(run):
            continue
        try:
            container.remove(force=True, v=True)
            removed.append(container.name)
        except docker.errors.NotFound:
            pass  # removed meanwhile (its own run's teardown)
    return removed
