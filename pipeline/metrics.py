"""Prometheus metrics of every pipeline process on a host (prometheus-client's multiprocess mode).

Each process writes its values to memory-mapped files in one directory, `PROMETHEUS_MULTIPROC_DIR`,
which supervisord sets for all its programs; the `metrics` program (`pipeline.exporter`) merges the
files at each scrape. prometheus-client picks multiprocess mode from that variable when its first
metric is made, so nothing here imports it before `observer_for` has checked the directory.

Names follow Prometheus' conventions (base units, `_total` for counters, `_seconds`); every series a
process writes carries `process` (supervisord's name: `consumer_03`, `producer`), so a rate per
process and a sum per host are both one query. Counters of a process that died stay in the sum (a
counter must not go down); its gauges disappear at the next scrape (`live_files` leaves out, and
removes, the live-gauge files of dead pids).

Metrics are cheap on the hot path: a consumer updates them once per batch, never per order (the
latency histogram takes a whole batch's values in one call, `observe_many`).
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from loguru import logger

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from pipeline.batch import Batch, DeadLetter, WriteResult
    from pipeline.settings import Settings

PREFIX = "food_orders"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                   3600.0)


def metrics_dir(env: dict[str, str] | None = None) -> Path | None:
    raw = (os.environ if env is None else env).get(MULTIPROC_ENV, "").strip()
    return Path(raw) if raw else None


def usable_dir(settings: Settings, program: str) -> bool:
    """Metrics on, a directory named and writable: else one log line saying why they are off."""
    if not settings.metrics_enabled:
        return False
    directory = metrics_dir()
    if directory is None:
        logger.info("metrics off: {} is not set (supervisord sets it for its programs)", MULTIPROC_ENV)
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        logger.warning("metrics off for {}: cannot write to {} ({}); the pipeline runs on without them",
                       program, directory, e.strerror or e)
        return False
    return True


def live_files(directory: Path) -> list[str]:
    """The files to merge: all but the live gauges of processes that no longer run. Those are removed
    too, when this process may (the metrics program may; an operator reading the directory may not)."""
    files = []
    for path in sorted(glob.glob(str(directory / "*.db"))):
        kind, _, pid = Path(path).stem.rpartition("_")
        if kind.startswith("gauge_live") and pid.isdigit() and not psutil.pid_exists(int(pid)):
            with contextlib.suppress(OSError):
                os.remove(path)
            continue
        files.append(path)
    return files


def merged(directory: Path) -> Any:
    """The metric families of every process writing to `directory`, as one scrape would show them."""
    from prometheus_client.multiprocess import MultiProcessCollector

    return MultiProcessCollector.merge(live_files(directory), accumulate=True)  # type: ignore[no-untyped-call]


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for every value, with one write per bucket instead of one per value.

    Uses the histogram's bucket values directly (prometheus-client is pinned; a unit test checks this
    equals observing one value at a time)."""
    if not values:
        return
    bounds: list[float] = histogram._upper_bounds
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(sum(values))


class ConsumerMetrics:
    """The consumer loop's `LoopMetrics` (pipeline.consumer_loop), in Prometheus."""

    def __init__(self, process: str, clock: Any = time.time, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        r = registry or REGISTRY
        self._clock = clock
        p = {"process": process}
        self.consumed = Counter(f"{PREFIX}_consumer_messages_total",
                                "Messages taken from the orders topic and processed (batch done)",
                                ["process"], registry=r).labels(**p)
        self.inserted = Counter(f"{PREFIX}_orders_inserted_total", "Orders written to PostgreSQL",
                                ["process"], registry=r).labels(**p)
        self.redelivered = Counter(f"{PREFIX}_orders_redelivered_total",
                                   "Orders already stored with the same content (harmless redeliveries)",
                                   ["process"], registry=r).labels(**p)
        self._dead = Counter(f"{PREFIX}_dead_letters_total", "Messages sent to the dead-letter topic, by error code",
                             ["process", "error"], registry=r)
        self._process = process
        self.batch_size = Histogram(f"{PREFIX}_batch_messages", "Messages per consumer batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.write_seconds = Histogram(f"{PREFIX}_write_duration_seconds",
                                       "Duration of one batch's PostgreSQL transaction", buckets=WRITE_BUCKETS,
                                       registry=r)
        self.latency = Histogram(f"{PREFIX}_end_to_end_latency_seconds",
                                 "Order created_at to its batch being done (written, dead-lettered, commit sent)",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self._degraded = Gauge(f"{PREFIX}_consumer_degraded",
                               "1 while a dependency is down and the consumer's partitions are paused",
                               ["process", "dependency"], multiprocess_mode="livemax", registry=r)
        self._retries = Counter(f"{PREFIX}_dependency_retries_total",
                                "Retries of a batch because a dependency was unavailable", ["process", "dependency"],
                                registry=r)
        self._rebalances = Counter(f"{PREFIX}_rebalance_events_total",
                                   "Partitions assigned, revoked or lost, as events", ["process", "kind"], registry=r)
        self.assigned = Gauge(f"{PREFIX}_assigned_partitions", "Partitions this consumer owns",
                              ["process"], multiprocess_mode="livemax", registry=r).labels(**p)
        self._current: str | None = None
        for dependency in DEPENDENCIES:
            self._degraded.labels(process, dependency).set(0)

    def batch_done(self, batch: Batch, result: WriteResult, letters: Sequence[DeadLetter],
                   write_seconds: float) -> None:
        self.consumed.inc(len(batch))
        if result.inserted:
            self.inserted.inc(result.inserted)
        if result.duplicates:
            self.redelivered.inc(result.duplicates)
        for code, count in _count_by(letter.why.code for letter in letters).items():
            self._dead.labels(self._process, code).inc(count)
        self.batch_size.observe(len(batch))
        self.write_seconds.observe(write_seconds)
        now = self._clock()
        observe_many(self.latency, [now - row.order.created_at.timestamp() for row in batch.rows])

    def degraded(self, dependency: str | None) -> None:
        if dependency == self._current:
            return
        if self._current is not None:
            self._degraded.labels(self._process, self._current).set(0)
        if dependency is not None:
            self._degraded.labels(self._process, dependency).set(1)
        self._current = dependency

    def retried(self, dependency: str) -> None:
        self._retries.labels(self._process, dependency).inc()

    def rebalanced(self, kind: str, partitions: int, assigned: int) -> None:
        if partitions:
            self._rebalances.labels(self._process, kind).inc()
        self.assigned.set(assigned)


DEPENDENCIES = ("postgresql", "kafka")


def _count_by(codes: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return counts


class ProducerMetrics:
    """The producer's counts, copied from its own counters once per loop turn at most every second."""

    EVERY = 1.0

    def __init__(self, process: str, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        r = registry or REGISTRY
        p = {"process": process}
        self.generated = Counter(f"{PREFIX}_producer_orders_generated_total", "Orders generated",
                                 ["process"], registry=r).labels(**p)
        self.delivered = Counter(f"{PREFIX}_producer_orders_delivered_total",
                                 "Orders the broker confirmed", ["process"], registry=r).labels(**p)
        self.failed = Counter(f"{PREFIX}_producer_delivery_failures_total",
                              "Delivery reports with an error (each order is produced again)",
                              ["process"], registry=r).labels(**p)
        self.in_flight = Gauge(f"{PREFIX}_producer_in_flight_orders", "Orders handed to the client, not confirmed",
                               ["process"], multiprocess_mode="livemax", registry=r).labels(**p)
        self.waiting = Gauge(f"{PREFIX}_producer_waiting_orders",
                             "Orders kept locally because Kafka does not take them now",
                             ["process"], multiprocess_mode="livemax", registry=r).labels(**p)
        self._seen = (0, 0, 0)
        self._last = 0.0

    def update(self, generated: int, delivered: int, failed: int, in_flight: int, waiting: int,
               force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.EVERY:
            return
        self._last = now
        g, d, f = self._seen
        if generated > g:
            self.generated.inc(generated - g)
        if delivered > d:
            self.delivered.inc(delivered - d)
        if failed > f:
            self.failed.inc(failed - f)
        self._seen = (max(g, generated), max(d, delivered), max(f, failed))
        self.in_flight.set(in_flight)
        self.waiting.set(waiting)


class RestartCounter:
    """Restarts of supervisord's programs, counted by the alerts listener from its events."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter

        r = registry or REGISTRY
        self._restarts = Counter(f"{PREFIX}_process_restarts_total",
                                 "Times supervisord started a program again after it exited", ["program"], registry=r)

    def __call__(self, program: str) -> None:
        self._restarts.labels(program).inc()
