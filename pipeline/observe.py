"""What a host's parts say about themselves, each asked with a deadline: the facts behind `status`,
`status --check`, `top` and the metrics endpoint.

Every probe answers within its timeout, and None (or a field None) means "cannot know": a Kafka
that does not accept a TCP connection is not asked anything, so the probes of a host with every
server down return in about a second.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.logs import kafka_logger
from pipeline.settings import Settings

# customer_stats against the aggregates of each customer's rows (a FULL JOIN: a customer on one side only
# is a mismatch too).
STATS_MISMATCHES = """
    SELECT count(*) FROM customer_stats s
    FULL JOIN (SELECT customer_id, count(*) AS n, sum(total_amount) AS spent FROM orders GROUP BY customer_id) o
           USING (customer_id)
    WHERE s.order_count IS DISTINCT FROM o.n OR s.total_spent IS DISTINCT FROM o.spent"""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self, cap: float = 3600.0) -> float:
        return max(0.0, min(cap, self.at - time.monotonic()))


def kafka_reachable(bootstrap: str, timeout: float) -> bool:
    """Does any bootstrap server accept a TCP connection? (librdkafka would retry until its timeout.)"""
    for hostport in bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


@dataclass(frozen=True)
class PartitionView:
    partition: int
    committed: int | None  # the group's committed offset; None = nothing committed yet
    low: int  # oldest offset still in the log
    end: int  # log end offset (next offset to be written)
    lag_seconds: float | None  # age of the oldest unconsumed message; 0 without lag; None = unknown

    @property
    def lag(self) -> int:
        start = self.committed if self.committed is not None else self.low
        return max(0, self.end - max(start, self.low))


@dataclass(frozen=True)
class KafkaView:
    """The orders topic as the group sees it, and the dead-letter topic's letters (high - low)."""

    partitions: list[PartitionView] | None  # None: the orders topic does not exist
    dlq_letters: int | None  # None: the DLQ topic does not exist
    read_at: float = field(default_factory=time.time)

    @property
    def total_lag(self) -> int | None:
        return None if self.partitions is None else sum(p.lag for p in self.partitions)

    @property
    def max_lag_seconds(self) -> float | None:
        if self.partitions is None:
            return None
        ages = [p.lag_seconds for p in self.partitions]
        return None if any(a is None for a in ages) else max((a or 0.0 for a in ages), default=0.0)


class KafkaProbe:
    """Reads offsets, lag and the age of the oldest unconsumed message per partition. One client,
    reused (the metrics endpoint keeps one for its life); never joins the group or commits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None

    def _consumer(self) -> Any:
        if self._client is None:
            self._client = Consumer({
                **self.settings.kafka_common(), "group.id": self.settings.consumer_group_id,
                "enable.auto.commit": False, "enable.partition.eof": False,
                "client.id": f"{self.settings.client_id()}-probe", "log_level": 3,
            }, logger=kafka_logger())
        return self._client

    def read(self, timeout: float = 3.0) -> KafkaView | None:
        """None when Kafka cannot be reached within `timeout`."""
        deadline = Deadline(timeout)
        if not kafka_reachable(self.settings.kafka_bootstrap_servers, min(1.0, timeout)):
            return None
        try:
            return self._read(self._consumer(), deadline)
        except (KafkaException, RuntimeError):
            return None

    def read_once(self, timeout: float = 3.0) -> KafkaView | None:
        """`read`, then the client closed."""
        try:
            return self.read(timeout)
        finally:
            self.close()

    def _read(self, c: Any, deadline: Deadline) -> KafkaView | None:
        s = self.settings
        md = c.list_topics(timeout=deadline.left(2.0) or 0.1)
        topic, dlq = md.topics.get(s.kafka_topic), md.topics.get(s.kafka_dlq_topic)
        dlq_letters = None
        if dlq is not None and dlq.error is None:
            dlq_letters = 0
            for p in dlq.partitions:
                low, high = c.get_watermark_offsets(TopicPartition(s.kafka_dlq_topic, p), timeout=deadline.left(1.0),
                                                    cached=False)
                dlq_letters += high - low
        if topic is None or topic.error is not None:
            return KafkaView(None, dlq_letters)
        tps = [TopicPartition(s.kafka_topic, p) for p in sorted(topic.partitions)]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=deadline.left(2.0) or 0.1)}
        marks = {tp.partition: c.get_watermark_offsets(tp, timeout=deadline.left(1.0), cached=False) for tp in tps}
        views = []
        for p in sorted(marks):
            low, high = marks[p]
            views.append(PartitionView(p, committed[p] if committed.get(p, -1) >= 0 else None, low, high, 0.0))
        return KafkaView(self._with_ages(c, views, deadline), dlq_letters)

    def _with_ages(self, c: Any, views: list[PartitionView], deadline: Deadline) -> list[PartitionView]:
        """Lag in seconds: now minus the timestamp of the first message not yet committed."""
        behind = {v.partition: v for v in views if v.lag > 0}
        if not behind:
            return views
        c.assign([TopicPartition(self.settings.kafka_topic, v.partition, max(v.committed or 0, v.low))
                  for v in behind.values()])
        ages: dict[int, float] = {}
        now = time.time()
        try:
            while len(ages) < len(behind) and deadline.left() > 0:
                msg = c.poll(min(0.25, deadline.left()))
                if msg is None or msg.error() is not None or msg.partition() in ages:
                    continue
                _kind, ms = msg.timestamp()
                ages[msg.partition()] = max(0.0, now - ms / 1000) if ms > 0 else 0.0
        finally:
            c.unassign()
        return [PartitionView(v.partition, v.committed, v.low, v.end,
                              ages.get(v.partition) if v.partition in behind else 0.0) for v in views]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass(frozen=True)
class DatabaseView:
    orders: int
    unique_customers: int
    avg_order_value: float
    duplicate_order_ids: int
    stats_mismatches: int  # customers whose customer_stats differ from the aggregates of their rows


def database_view(url: str, timeout: float = 3.0) -> DatabaseView | None:
    """Totals and the customer-by-customer customer_stats check; None when PostgreSQL does not answer
    (or the queries take longer than `timeout`)."""
    try:
        with psycopg2.connect(url, connect_timeout=max(1, int(timeout)),
                              options=f"-c statement_timeout={int(timeout * 1000)}") as conn, conn.cursor() as cur:
            cur.execute("""SELECT count(*), count(DISTINCT customer_id), round(avg(total_amount), 2),
                                  count(*) - count(DISTINCT order_id) FROM orders""")
            orders, customers, avg, dupes = cur.fetchone()  # type: ignore[misc]
            cur.execute(STATS_MISMATCHES)
            (mismatches,) = cur.fetchone()  # type: ignore[misc]
        conn.close()
    except psycopg2.Error:
        return None
    return DatabaseView(orders, customers, float(avg or 0), dupes, mismatches)


def database_up(url: str, timeout: float = 2.0) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=max(1, int(timeout))).close()
    except psycopg2.Error:
        return False
    return True


def concurrently(probes: dict[str, Callable[[], Any]], timeout: float) -> dict[str, Any]:
    """Run the probes on threads; whatever has not answered by `timeout` is None ("unknown")."""
    results: dict[str, Any] = dict.fromkeys(probes)

    def run(name: str, probe: Callable[[], Any]) -> None:
        try:
            results[name] = probe()
        except Exception:  # noqa: BLE001 - a probe that fails is a part we cannot know
            results[name] = None

    threads = [threading.Thread(target=run, args=item, daemon=True, name=f"probe-{item[0]}")
               for item in probes.items()]
    for t in threads:
        t.start()
    deadline = Deadline(timeout)
    for t in threads:
        t.join(deadline.left())
    return {name: (results[name] if not t.is_alive() else None) for name, t in zip(probes, threads, strict=True)}
