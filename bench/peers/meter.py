"""CPU seconds of one sink: its process tree, and the PostgreSQL backends that serve it.

A backend serves the sink when its client socket belongs to a process of the sink's tree: the sink's
TCP connections to PostgreSQL give their local ports, and each backend's process title
(`postgres: user db 127.0.0.1(PORT) state`) gives the port of its client. So the harness's own
connections to the same database (row counting, checks) are never counted, whatever the sink.

CPU times are cumulative, so a process found late still counts all it used; a thread samples them
(from /proc, through psutil) every `every` seconds while the processes live, and `totals_at(t)` adds up
each process's value at its first sample at or after `t` (the moment the last row was seen), or its
last one if it was gone by then.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable

import psutil

_CLIENT_PORT = re.compile(r"\((\d+)\)")


def _cpu(proc: psutil.Process, reaped_children: bool) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    if reaped_children:
        total += t.children_user + t.children_system
    return total


class SinkMeter:
    """Samples the CPU of `roots()` (and their descendants) and of the backends serving them."""

    def __init__(self, roots: Callable[[], list[int]], postmaster_pid: int | None, pg_port: int | None,
                 every: float = 0.1, find_every: int = 2) -> None:
        self._roots = roots
        self._postmaster = psutil.Process(postmaster_pid) if postmaster_pid else None
        self._pg_port = pg_port
        self._every = every
        self._find_every = find_every  # look for new connections and backends every N samples
        self._procs: dict[int, psutil.Process] = {}
        self._root_pids: set[int] = set()
        self._sink_cpu: dict[int, float] = {}
        self._backends: dict[int, psutil.Process] = {}
        self._pg_cpu: dict[int, float] = {}
        # (monotonic, {pid: CPU s} of the sink's processes, {pid: CPU s} of the backends serving them)
        self.history: list[tuple[float, dict[int, float], dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sink-meter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample(find=False)

    def totals_at(self, moment: float) -> tuple[float, float | None]:
        """(sink CPU s, PostgreSQL backends CPU s) at `moment` (monotonic), see the module's docstring."""
        sink = _at([(t, values) for t, values, _ in self.history], moment)
        pg = _at([(t, values) for t, _, values in self.history], moment)
        return round(sink, 2), (round(pg, 2) if self._postmaster is not None and self._pg_port else None)

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self._sample(find=not self._backends or tick % self._find_every == 0)
            tick += 1
            self._stop.wait(self._every)

    def _sample(self, find: bool) -> None:
        self._track_tree()
        for pid, proc in list(self._procs.items()):
            try:
                self._sink_cpu[pid] = _cpu(proc, pid in self._root_pids)
            except psutil.Error:
                self._procs.pop(pid)
                if pid not in self._root_pids:
                    # A child that exited is accounted to its parent's children times once reaped.
                    self._sink_cpu.pop(pid, None)
        if find:
            self._find_backends()
        for pid, proc in list(self._backends.items()):
            try:
                self._pg_cpu[pid] = _cpu(proc, False)
            except psutil.Error:
                self._backends.pop(pid)  # gone: its last sample stays counted
        self.history.append((time.monotonic(), dict(self._sink_cpu), dict(self._pg_cpu)))

    def _track_tree(self) -> None:
        for pid in self._roots():
            if pid in self._root_pids:
                continue
            with contextlib.suppress(psutil.Error):
                self._procs[pid] = psutil.Process(pid)
                self._root_pids.add(pid)
        for pid in list(self._root_pids):
            root = self._procs.get(pid)
            if root is None:
                continue
            with contextlib.suppress(psutil.Error):
                for child in root.children(recursive=True):
                    self._procs.setdefault(child.pid, child)

    def _find_backends(self) -> None:
        if self._postmaster is None or self._pg_port is None:
            return
        ports: set[int] = set()
        for proc in list(self._procs.values()):
            with contextlib.suppress(psutil.Error):
                for conn in proc.net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == self._pg_port:
                        ports.add(conn.laddr.port)
        if not ports:
            return
        with contextlib.suppress(psutil.Error):
            for backend in self._postmaster.children():
                if backend.pid in self._backends:
                    continue
                with contextlib.suppress(psutil.Error):
                    found = _CLIENT_PORT.search(" ".join(backend.cmdline()))
                    if found and int(found.group(1)) in ports:
                        self._backends[backend.pid] = backend


def _at(series: list[tuple[float, dict[int, float]]], moment: float) -> float:
    """Sum over processes of each one's first value sampled after `moment`, else its last value."""
    latest: dict[int, float] = {}
    first_after: dict[int, float] = {}
    for t, values in series:
        for pid, value in values.items():
            if t < moment:
                latest[pid] = value
            else:
                first_after.setdefault(pid, value)
    return sum(first_after.get(pid, latest.get(pid, 0.0)) for pid in latest.keys() | first_after.keys())
