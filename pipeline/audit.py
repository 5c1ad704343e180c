"""`bin/pipeline audit`: ground truth from Kafka, checked against PostgreSQL.

Reads the orders topic raw from its first to its last offset, decodes every message with the
same rules as the consumers, and compares: every valid order id in the topic is a row (none
missing), every row whose offset the topic still holds comes from it (none extra; rows older than the
topic's retention are counted apart), and `customer_stats` equals the rows' aggregates customer by
customer. Run it once the group has no lag (`--wait` waits for that) and the producer is stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import psycopg2
from confluent_kafka import Consumer, TopicPartition

from pipeline.errors import RetryableError
from pipeline.observe import STATS_MISMATCHES, KafkaProbe
from pipeline.orders import Order, decode_order
from pipeline.settings import Settings


@dataclass(frozen=True)
class Audit:
    topic_messages: int
    valid_ids: int  # distinct order ids of valid messages in the topic
    repeated_ids: int  # valid order ids that the topic holds more than once (producer re-sends)
    invalid_messages: int  # messages the consumers dead-letter
    rows: int
    expired_rows: int  # rows from offsets the topic no longer holds (retention)
    missing: tuple[str, ...]  # valid in the topic, not in orders
    extra: tuple[str, ...]  # in orders from a retained offset, not in the topic
    stats_mismatches: int  # customers whose customer_stats differ from their rows

    @property
    def stats_match(self) -> bool:
        return self.stats_mismatches == 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra and self.stats_match

    def lines(self) -> list[str]:
        def sample(ids: tuple[str, ...]) -> str:
            return f" ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})" if ids else ""

        return [
            f"topic: {self.topic_messages} messages, {self.valid_ids} distinct valid order ids "
            f"({self.repeated_ids} present more than once), {self.invalid_messages} invalid",
            f"orders: {self.rows} rows ({self.expired_rows} from offsets past the topic's retention)",
            f"missing from orders: {len(self.missing)}{sample(self.missing)}",
            f"in orders but not in the topic: {len(self.extra)}{sample(self.extra)}",
            "customer_stats match the rows" if self.stats_match else
            f"customer_stats DO NOT match the rows for {self.stats_mismatches} customers",
            "verdict: " + ("OK, every order in the topic is in PostgreSQL exactly once" if self.ok else "FAILED"),
        ]


@dataclass
class TopicContent:
    ids: Counter[str]  # valid order id -> times in the topic
    messages: int
    invalid: int
    first_offsets: dict[int, int]  # partition -> its oldest retained offset


def topic_order_ids(settings: Settings, timeout: float = 120.0) -> TopicContent:
    """Every message of the orders topic, from the oldest retained offset up to each partition's end
    offset at the start of the read."""
    reader = Consumer({**settings.kafka_common(), "group.id": f"{settings.consumer_group_id}-audit",
                       "enable.auto.commit": False, "client.id": settings.client_id()})
    ids: Counter[str] = Counter()
    messages = invalid = 0
    try:
        md = reader.list_topics(settings.kafka_topic, timeout=10).topics[settings.kafka_topic]
        ends = {p: reader.get_watermark_offsets(TopicPartition(settings.kafka_topic, p), timeout=10)
                for p in md.partitions}
        todo = {p: high for p, (low, high) in ends.items() if high > low}
        reader.assign([TopicPartition(settings.kafka_topic, p, ends[p][0]) for p in todo])
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise RetryableError(f"reading {settings.kafka_topic} took over {timeout:.0f}s")
            for msg in reader.consume(10_000, 1.0):
                p, offset = msg.partition(), msg.offset()
                if msg.error() is not None or p not in todo or offset is None or offset >= todo[p]:
                    continue
                messages += 1
                order = decode_order(msg.key(), msg.value())
                if isinstance(order, Order):
                    ids[order.order_id] += 1
                else:
                    invalid += 1
                if offset + 1 >= todo[p]:
                    del todo[p]
    finally:
        reader.close()
    return TopicContent(ids, messages, invalid, {p: low for p, (low, _high) in ends.items()})


def audit(settings: Settings) -> Audit:
    topic = topic_order_ids(settings)
    with psycopg2.connect(settings.database_url, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT order_id, kafka_partition, kafka_offset FROM orders")
        rows = cur.fetchall()
        cur.execute(STATS_MISMATCHES)
        mismatches = int(cur.fetchone()[0])  # type: ignore[index]
    retained = {order_id for order_id, partition, offset in rows
                if offset >= topic.first_offsets.get(partition, 0)}
    stored = {order_id for order_id, _, _ in rows}
    return Audit(
        topic_messages=topic.messages, valid_ids=len(topic.ids),
        repeated_ids=sum(1 for n in topic.ids.values() if n > 1), invalid_messages=topic.invalid,
        rows=len(rows), expired_rows=len(stored - retained),
        missing=tuple(sorted(set(topic.ids) - stored)), extra=tuple(sorted(retained - set(topic.ids))),
        stats_mismatches=mismatches,
    )


def wait_for_no_lag(settings: Settings, timeout: float) -> int | None:
    """Wait until the group has committed every message; returns the lag left (None: Kafka unreachable)."""
    probe = KafkaProbe(settings)
    deadline = time.monotonic() + timeout
    try:
        while True:
            view = probe.read(10.0)
            lag = view.total_lag if view is not None else None
            if lag == 0 or time.monotonic() > deadline:
                return lag
            time.sleep(1.0)
    finally:
        probe.close()
