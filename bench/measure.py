"""Measuring helpers: database progress, CPU accounting of processes, waiting with a progress bar."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import psycopg2
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

# Rows written in transactions that started before the last one, over the time from the first
# transaction's start to the last one's: processed_at is now() = the writing transaction's start.
_SPAN_SQL = """
WITH bounds AS (SELECT min(processed_at) AS first, max(processed_at) AS last FROM orders)
SELECT (SELECT count(*) FROM orders),
       (SELECT count(*) FROM orders, bounds WHERE processed_at < bounds.last),
       extract(epoch FROM bounds.first)::float8, extract(epoch FROM bounds.last)::float8
FROM bounds
"""


@dataclass(frozen=True)
class RowSpan:
    """What a database holds after a phase, and how fast it was written (first to last row)."""

    rows: int
    rows_before_last: int
    first: float | None  # unix seconds
    last: float | None

    @property
    def seconds(self) -> float:
        return (self.last - self.first) if self.first is not None and self.last is not None else 0.0

    @property
    def rate(self) -> float | None:
        """Rows/s from the first to the last written row, or None if everything was one transaction."""
        return self.rows_before_last / self.seconds if self.seconds > 0 else None


# The window in which every consumer process was writing: from the last process's first row to the first
# process's last row. Excludes the start-up skew (the first process to join owns every partition until
# the others arrive) and the tail (a process whose partitions are done idles while the others finish).
_ALL_ACTIVE_SQL = """
WITH per AS (SELECT consumer_client_id, min(processed_at) AS f, max(processed_at) AS l
             FROM orders GROUP BY consumer_client_id),
     w AS (SELECT max(f) AS s, min(l) AS e, count(*) AS writers FROM per)
SELECT w.writers, (SELECT count(*) FROM orders WHERE processed_at >= w.s AND processed_at < w.e),
       extract(epoch FROM w.e - w.s)::float8
FROM w
"""


def all_active_rate(url: str) -> tuple[int, float | None]:
    """(processes that wrote rows, rows/s while all of them were writing — None if that window is empty)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(_ALL_ACTIVE_SQL)
        writers, rows, seconds = cur.fetchone() or (0, 0, None)
    conn.close()
    return int(writers), (rows / seconds if seconds and seconds > 0.5 else None)


def writers(url: str) -> list[dict[str, float]]:
    """Per consumer process: rows, and its first and last row relative to the first row of all (seconds)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("""
            SELECT count(*), extract(epoch FROM min(processed_at) - t0)::float8,
                   extract(epoch FROM max(processed_at) - t0)::float8
            FROM orders, (SELECT min(processed_at) AS t0 FROM orders) z
            GROUP BY consumer_client_id, t0 ORDER BY 2""")
        rows = cur.fetchall()
    conn.close()
    return [{"rows": int(n), "first_s": round(f, 3), "last_s": round(last, 3)} for n, f, last in rows]


def count_rows(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
        (n,) = cur.fetchone() or (0,)
    conn.close()
    return int(n)


def row_span(url: str) -> RowSpan:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(_SPAN_SQL)
        rows, before, first, last = cur.fetchone() or (0, 0, None, None)
    conn.close()
    return RowSpan(int(rows), int(before), first, last)


class RowCounter:
    """Polls `SELECT count(*) FROM orders` over one connection (the table may not exist yet)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg2.extensions.connection | None = None

    def __call__(self) -> int:
        try:
            if self._conn is None:
                self._conn = psycopg2.connect(self._url)
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM orders")
                (n,) = cur.fetchone() or (0,)
            return int(n)
        except psycopg2.errors.UndefinedTable:
            return 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _cpu(proc: psutil.Process, with_children: bool) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    if with_children:
        # Exited children (PostgreSQL backends) are accounted to the postmaster when it reaps them.
        total += t.children_user + t.children_system
        for child in proc.children(recursive=True):
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
    return total


class CpuMeter:
    """CPU seconds used by named processes and by the whole machine between `start()` and `stop()`.

    Samples are taken while the processes live (a process's CPU time cannot be read after it exits), so
    call `sample()` periodically and `stop()` before terminating anything.
    """

    def __init__(self, pids: dict[str, int | None], tree: frozenset[str] = frozenset({"postgres"})) -> None:
        self._procs: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    self._procs[name] = psutil.Process(pid)
        self._tree = tree
        self._start: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._machine_start = psutil.cpu_times()
        self._wall_start = time.monotonic()
        self.result: dict[str, float] = {}
        self.rss_max_mb: dict[str, float] = {}  # largest resident set seen per process (not per tree)

    def add(self, name: str, pid: int) -> None:
        self._procs[name] = psutil.Process(pid)
        self._start[name] = 0.0  # a process started during the phase: all its CPU counts

    def start(self) -> None:
        self._machine_start = psutil.cpu_times()
        self._wall_start = time.monotonic()
        for name, proc in self._procs.items():
            try:
                self._start.setdefault(name, _cpu(proc, name in self._tree))
            except psutil.Error:
                self._start[name] = 0.0
        self.sample()

    def sample(self) -> None:
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                self._last[name] = _cpu(proc, name in self._tree)
                rss = proc.memory_info().rss / 2**20
                self.rss_max_mb[name] = max(rss, self.rss_max_mb.get(name, 0.0))

    def stop(self) -> dict[str, float]:
        self.sample()
        wall = time.monotonic() - self._wall_start
        m0, m1 = self._machine_start, psutil.cpu_times()
        busy = (m1.user + m1.system + m1.nice + getattr(m1, "softirq", 0.0) + getattr(m1, "irq", 0.0)) - (
            m0.user + m0.system + m0.nice + getattr(m0, "softirq", 0.0) + getattr(m0, "irq", 0.0))
        cpus = psutil.cpu_count() or 1
        self.result = {name: round(self._last.get(name, 0.0) - self._start.get(name, 0.0), 2)
                       for name in self._procs}
        ours = sum(self.result.values())
        # Whatever else ran on the machine meanwhile (other users' tests, ...): busy CPU not accounted to
        # the servers, the benchmark processes or the harness. High values mean a disturbed measurement.
        foreign = max(0.0, busy - ours)
        self.result["machine_busy_pct"] = round(100 * busy / (wall * cpus), 1) if wall > 0 else 0.0
        self.result["foreign_cpu_s"] = round(foreign, 2)
        self.result["foreign_pct"] = round(100 * foreign / (wall * cpus), 1) if wall > 0 else 0.0
        self.result["wall_s"] = round(wall, 2)
        return self.result


def wait_for(done: Callable[[], int], target: int, timeout: float, tick: Callable[[int], None],
             alive: Callable[[], bool] = lambda: True, every: float = 0.25) -> int:
    """Poll `done()` until it reaches `target` or `timeout` passes; `tick` gets every value. Returns the last."""
    deadline = time.monotonic() + timeout
    value = done()
    tick(value)
    while value < target and time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("a benchmark process exited before the phase was complete")
        time.sleep(every)
        value = done()
        tick(value)
    return value


def wait_group_stable(bootstrap: str, group: str, partitions: int, timeout: float = 60.0) -> float:
    """Wait until the consumer group is Stable with every partition assigned; returns seconds waited. A
    description that times out is asked again (a fresh broker's coordinator may still be loading
    `__consumer_offsets`)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(10)
            assigned = sum(len(m.assignment.topic_partitions) for m in desc.members)
            if desc.state == ConsumerGroupState.STABLE and assigned >= partitions:
                return time.monotonic() - started
        except (KafkaException, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"consumer group {group} not stable with {partitions} partitions after {timeout:.0f}s")
