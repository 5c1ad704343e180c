"""Test helpers: run the real producer/consumer processes and read outcomes from Kafka and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg2
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll until predicate() is truthy; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class PipelineEnv:
    """Environment for pipeline processes pointed at the test servers, one topic/group/database per test."""

    bootstrap: str
    database_url: str
    topic: str
    group: str
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KAFKA_", "DATABASE_", "PRODUCER_", "CONSUMER_", "SUPERVISOR_", "PIPELINE_FAULT"))}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap, DATABASE_URL=self.database_url, KAFKA_TOPIC=self.topic,
            KAFKA_DLQ_TOPIC=f"{self.topic}.dlq", CONSUMER_GROUP_ID=self.group, LOG_LEVEL="INFO",
            CONSUMER_BATCH_TIMEOUT_MS="100", PYTHONPATH=str(REPO),
        )
        env.update(extra)
        return env

    @property
    def dlq(self) -> str:
        return f"{self.topic}.dlq"

    def produce(self, count: int, rate: float = 0, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run the real producer to completion."""
        env = self.env(PRODUCER_RATE=str(rate), PRODUCER_MAX_ORDERS=str(count), **extra)
        out = subprocess.run([sys.executable, "-m", "pipeline.producer"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    def start(self, program: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        """Start `python -m pipeline.<program>` in the background, logging to log_dir/<name>.log."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen([sys.executable, "-m", f"pipeline.{program}"], env=self.env(**extra), cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    # -- outcomes ---------------------------------------------------------------------------------

    def db(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def row_count(self) -> int:
        try:
            return int(self.db("SELECT count(*) FROM orders")[0][0])  # type: ignore[call-overload]
        except psycopg2.errors.UndefinedTable:
            return 0

    def stats_consistent(self) -> bool:
        """Invariant: aggregates equal the rows."""
        (ok,) = self.db("""
            SELECT (SELECT coalesce(sum(total_spent), 0) FROM customer_stats) = coalesce(sum(total_amount), 0)
               AND (SELECT coalesce(sum(order_count), 0) FROM customer_stats) = count(*)
            FROM orders""")[0]
        return bool(ok)

    def end_offsets(self, topic: str | None = None) -> dict[int, int]:
        topic = topic or self.topic
        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "probe-end-offsets"})
        try:
            md = probe.list_topics(topic, timeout=10).topics[topic]
            return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        finally:
            probe.close()

    def committed(self) -> dict[int, int]:
        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            parts = [TopicPartition(self.topic, p) for p in self.end_offsets()]
            return {tp.partition: tp.offset for tp in probe.committed(parts, timeout=10)}
        finally:
            probe.close()

    def lag(self) -> int:
        end, done = self.end_offsets(), self.committed()
        return sum(end[p] - max(done.get(p, 0), 0) for p in end)

    def members(self) -> list[tuple[str, list[int]]]:
        """(client_id, partitions) of each member of the group, from the group coordinator."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        try:
            desc = admin.describe_consumer_groups([self.group], request_timeout=10)[self.group].result(15)
        except (KafkaException, TimeoutError):  # coordinator still loading: callers poll again
            return []
        return sorted(
            (m.client_id, sorted(tp.partition for tp in m.assignment.topic_partitions if tp.topic == self.topic))
            for m in desc.members
        )

    def read_topic(self, topic: str, expected: int, timeout: float = 60) -> list[object]:
        """All messages of a topic from the beginning (at least `expected`)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{time.time_ns()}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        got: list[object] = []
        deadline = time.monotonic() + timeout
        try:
            while len(got) < expected and time.monotonic() < deadline:
                for msg in c.consume(1000, 0.5):
                    if msg.error() is None:
                        got.append(msg)
        finally:
            c.close()
        return got


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM and wait; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


@contextmanager
def running(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """Make sure background processes end with the test, whatever happens."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
