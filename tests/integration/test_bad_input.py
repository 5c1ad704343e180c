"""Invalid messages, conflicts and rows PostgreSQL refuses: dead-lettered with reasons, never a crash loop."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pipeline.mockdata import OrderGenerator, new_order_id
from pipeline.orders import encode_order
from tests.helpers import PipelineEnv, running, stop, wait_for

pytestmark = pytest.mark.integration


def valid(gen: OrderGenerator) -> tuple[bytes, bytes]:
    order = gen.next_order(new_order_id(), datetime.now(UTC))
    return order.customer_id.encode(), encode_order(order)


def mutate(gen: OrderGenerator, **changes: object) -> tuple[bytes, bytes]:
    key, value = valid(gen)
    doc = json.loads(value)
    doc.update(changes)
    return key, json.dumps(doc).encode()


def test_bad_messages_go_to_the_dlq_with_reasons_and_valid_ones_are_stored(pipe: PipelineEnv) -> None:
    gen = OrderGenerator(seed=3)
    key, original = valid(gen)
    same_id = json.loads(original)
    conflicting = json.dumps({**same_id, "customer_name": "Someone Else"}).encode()
    bad_items = json.loads(valid(gen)[1])
    bad_items["items"][0]["subtotal"] += 5
    bad_total = json.loads(valid(gen)[1])
    bad_total["total_amount"] += 1

    # (key, value, expected DLQ error or None for a valid order)
    plan: list[tuple[bytes | None, bytes, str | None]] = [
        (key, original, None),
        (b"CUST-00001", b"{not json", "invalid_json"),
        (b"CUST-00001", b"\xff\xfe\x00", "invalid_json"),
        (key, json.dumps({**same_id, "items": []}).encode(), "schema"),
        (bad_items["customer_id"].encode(), json.dumps(bad_items).encode(), "subtotal_mismatch"),
        (bad_total["customer_id"].encode(), json.dumps(bad_total).encode(), "total_mismatch"),
        (b"CUST-00099", valid(gen)[1], "key_mismatch"),
        (key, original, None),  # a redelivery: stored once, not an error
        (key, conflicting, "conflict"),
        # Valid JSON with a NUL character: our rules allow it, PostgreSQL text cannot hold it.
        (*mutate(gen, customer_name="Nul\u0000Byte"), "db_rejected"),
    ]
    for _ in range(50):
        plan.insert(len(plan) // 2, (*valid(gen), None))
    plan += [(*valid(gen), None) for _ in range(50)]

    producer = Producer({"bootstrap.servers": pipe.bootstrap, "enable.idempotence": True})
    admin = AdminClient({"bootstrap.servers": pipe.bootstrap})
    admin.create_topics([NewTopic(pipe.topic, 1, 1)])[pipe.topic].result(30)
    for offset, (k, v, _) in enumerate(plan):
        producer.produce(pipe.topic, v, k, headers=[("trace", str(offset).encode())])
    assert producer.flush(30) == 0

    consumer = pipe.start("consumer", "consumer", CONSUMER_BATCH_SIZE="20")
    with running(consumer):
        wait_for(lambda: pipe.lag() == 0, 60, "lag 0")
        assert consumer.poll() is None, "the consumer must not have exited"
        pid = consumer.pid
        assert stop(consumer) == 0
    assert pid == consumer.pid

    valid_ids = {json.loads(v)["order_id"] for _, v, err in plan if err is None}
    stored = {r[0] for r in pipe.db("SELECT order_id FROM orders")}
    assert stored == valid_ids
    assert pipe.stats_consistent()
    assert pipe.db(f"SELECT customer_name FROM orders WHERE order_id = '{same_id['order_id']}'") == [
        (same_id["customer_name"],)
    ]

    expected = [(offset, err) for offset, (_, _, err) in enumerate(plan) if err is not None]
    dead = pipe.read_topic(pipe.dlq, len(expected))
    got = []
    for msg in dead:
        headers = {k: v.decode() for k, v in msg.headers()}  # type: ignore[attr-defined]
        assert headers["source_topic"] == pipe.topic
        assert headers["source_partition"] == "0"
        assert headers["consumer_client_id"].startswith("food-orders-")
        assert headers["error_detail"]
        offset = int(headers["source_offset"])
        assert (msg.key(), msg.value()) == plan[offset][:2]  # type: ignore[attr-defined]  # original bytes
        assert headers["trace"] == str(offset)  # original headers kept
        got.append((offset, headers["error"]))
    assert sorted(got) == expected


def test_a_message_near_the_size_limit_is_dead_lettered_without_its_value(pipe: PipelineEnv) -> None:
    admin = AdminClient({"bootstrap.servers": pipe.bootstrap})
    admin.create_topics([NewTopic(pipe.topic, 1, 1)])[pipe.topic].result(30)
    producer = Producer({"bootstrap.servers": pipe.bootstrap})
    huge = b"x" * 999_900  # the broker takes it; with the DLQ's headers added it would not fit
    producer.produce(pipe.topic, huge, b"CUST-00001")
    producer.produce(pipe.topic, valid(OrderGenerator(1))[1], valid(OrderGenerator(1))[0])
    assert producer.flush(30) == 0

    consumer = pipe.start("consumer", "consumer")
    with running(consumer):
        wait_for(lambda: pipe.lag() == 0, 60, "lag 0 past the oversized message")
        assert consumer.poll() is None
        assert stop(consumer) == 0
    assert pipe.row_count() == 1
    (letter,) = pipe.read_topic(pipe.dlq, 1)
    headers = {k: v.decode() for k, v in letter.headers()}  # type: ignore[attr-defined]
    assert (headers["error"], headers["value_truncated"], headers["original_size"]) == ("too_large", "1", "999900")
    assert letter.value() is None and letter.key() == b"CUST-00001"  # type: ignore[attr-defined]
