"""The orders topic read back (what every drain must write), and its copy for Kafka Connect.

Kafka Connect's JSON converter with `schemas.enable=true` reads records that carry their schema:
`{"schema": {...}, "payload": {...}}`. Before any timed drain, every order of the orders topic is
re-encoded that way into `CONNECT_TOPIC`: same partition, same key, same order within a partition (so
the same offsets), `items` as a JSON string. Connect then reads the same orders in its own format.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.context import ORDERS_TOPIC, PARTITIONS, Bench

CONNECT_TOPIC = "bench-orders-connect"

# The value schema Connect's JsonConverter reads. Semantic names tell the Debezium JDBC sink how to bind
# each field: items is JSON (bound as jsonb), created_at an ISO-8601 time with its offset (timestamptz),
# total_amount a decimal of scale 2 (numeric(10,2)). kafka_partition, kafka_offset and
# consumer_client_id are added by the connector's InsertField transform, as our consumer adds them.
_STRING = {"type": "string", "optional": False}
VALUE_SCHEMA: dict[str, Any] = {
    "type": "struct", "name": "food_orders.Order", "optional": False, "fields": [
        {**_STRING, "field": "order_id"},
        {**_STRING, "field": "customer_id"},
        {**_STRING, "field": "customer_name"},
        {**_STRING, "field": "customer_email"},
        {**_STRING, "field": "items", "name": "io.debezium.data.Json", "version": 1},
        {"type": "bytes", "optional": False, "field": "total_amount", "name": "org.apache.kafka.connect.data.Decimal",
         "version": 1, "parameters": {"scale": "2"}},
        {**_STRING, "field": "status"},
        {**_STRING, "field": "created_at", "name": "io.debezium.time.ZonedTimestamp", "version": 1},
    ],
}
_FIELDS = ("order_id", "customer_id", "customer_name", "customer_email", "status", "created_at")


@dataclass(frozen=True)
class Expected:
    """What a correct drain writes: every order id once, and the sum of their totals (in cents). The
    order at the end of each partition is the last one any sink writes there."""

    order_ids: frozenset[str]
    total_cents: int
    last_ids: tuple[str, ...]

    @property
    def orders(self) -> int:
        return len(self.order_ids)


def read_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS,
               timeout: float = 120.0) -> list[tuple[int, int, bytes, bytes]]:
    """Every message of `topic` as (partition, offset, key, value), partition by partition in order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-peers-reader",
                         "enable.auto.commit": False, "log_level": 3})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out: list[tuple[int, int, bytes, bytes]] = []
        left = {p: end for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 1.0):
                if msg.error() is not None:
                    continue
                p, offset = msg.partition() or 0, msg.offset() or 0
                out.append((p, offset, msg.key() or b"", msg.value() or b""))
                if offset + 1 >= left.get(p, 0):
                    left.pop(p, None)
        if left:
            raise RuntimeError(f"{topic}: partitions {sorted(left)} not read to their end in {timeout:.0f}s")
        return out
    finally:
        consumer.close()


def expected_of(messages: list[tuple[int, int, bytes, bytes]]) -> Expected:
    ids = []
    cents = 0
    last: dict[int, tuple[int, str]] = {}
    for partition, offset, _, value in messages:
        order = msgspec.json.decode(value)
        ids.append(order["order_id"])
        cents += round(order["total_amount"] * 100)
        if offset >= last.get(partition, (-1, ""))[0]:
            last[partition] = (offset, order["order_id"])
    unique = frozenset(ids)
    if len(unique) != len(ids):
        raise RuntimeError(f"the orders topic holds {len(ids) - len(unique)} duplicate order ids")
    return Expected(unique, cents, tuple(order_id for _, (_, order_id) in sorted(last.items())))


def connect_record(value: bytes) -> bytes:
    """One order of the pipeline's wire format as a Connect JSON record with its schema."""
    order = msgspec.json.decode(value)
    payload: dict[str, Any] = {name: order[name] for name in _FIELDS}
    payload["items"] = msgspec.json.encode(order["items"]).decode()
    payload["total_amount"] = order["total_amount"]  # JsonConverter reads a Decimal from a JSON number
    return msgspec.json.encode({"schema": VALUE_SCHEMA, "payload": payload})


def reencode_for_connect(b: Bench, messages: list[tuple[int, int, bytes, bytes]]) -> dict[str, Any]:
    """Copy every order into CONNECT_TOPIC in Connect's format, keeping partition, key and order."""
    started = time.monotonic()
    b.infra.create_topic(CONNECT_TOPIC, PARTITIONS)
    producer = Producer({"bootstrap.servers": b.infra.bootstrap_servers, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 10, "compression.type": "lz4", "log_level": 3})
    task = b.task("peers: re-encode for Kafka Connect", len(messages))
    size = 0
    for i, (partition, _, key, value) in enumerate(messages):
        record = connect_record(value)
        size += len(record)
        while True:
            try:
                producer.produce(CONNECT_TOPIC, record, key, partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
            b.progress.update(task, completed=i)
    if producer.flush(60) != 0:
        raise RuntimeError(f"{CONNECT_TOPIC}: messages still undelivered after 60 s")
    b.progress.update(task, completed=len(messages))
    # Same partition and order as the source, so the same offsets: check the end offsets match.
    source = _ends(b.infra.bootstrap_servers, ORDERS_TOPIC)
    copy = _ends(b.infra.bootstrap_servers, CONNECT_TOPIC)
    if source != copy:
        raise RuntimeError(f"{CONNECT_TOPIC} end offsets {copy} differ from {ORDERS_TOPIC}'s {source}")
    return {"topic": CONNECT_TOPIC, "messages": len(messages), "seconds": round(time.monotonic() - started, 2),
            "avg_bytes": round(size / max(1, len(messages))),
            "avg_source_bytes": round(sum(len(m[3]) for m in messages) / max(1, len(messages))),
            "end_offsets": copy}


def _ends(bootstrap: str, topic: str) -> list[int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe", "log_level": 3})
    try:
        return [probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)]
    finally:
        probe.close()
