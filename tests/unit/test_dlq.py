"""The DLQ adapter against a fake producer: the letter's contract (original key, value and headers plus
ours), waiting for every confirmation, and a letter too big for the broker sent without its value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.batch import DeadLetter
from pipeline.dlq import DeadLetterQueue
from pipeline.errors import DeliveryFailed
from pipeline.orders import SCHEMA, Rejection
from pipeline.settings import Settings

Delivery = Callable[[KafkaError | None, Any], None]


class FakeProducer:
    """Delivers at flush(); `fail` is the error every delivery reports, `too_big` the value size above
    which produce() raises MSG_SIZE_TOO_LARGE like the client."""

    def __init__(self, fail: int | None = None, too_big: int = 1_000_000) -> None:
        self.fail = fail
        self.too_big = too_big
        self.queued: list[tuple[str, bytes | None, bytes | None, list[tuple[str, Any]], Delivery]] = []
        self.delivered: list[tuple[str, bytes | None, bytes | None, list[tuple[str, Any]]]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | None, *, headers: list[tuple[str, Any]],
                on_delivery: Delivery) -> None:
        if len(value or b"") > self.too_big:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queued.append((topic, value, key, headers, on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for topic, value, key, headers, on_delivery in self.queued:
            if self.fail is None:
                self.delivered.append((topic, value, key, headers))
            on_delivery(None if self.fail is None else KafkaError(self.fail), None)
        self.queued = []
        return 0


def letter(value: bytes = b"{}") -> DeadLetter:
    return DeadLetter(b"CUST-00001", value, [("trace", b"t-1")], "orders", 2, 41, Rejection(SCHEMA, "no items"))


def dlq(producer: FakeProducer) -> DeadLetterQueue:
    return DeadLetterQueue(Settings(kafka_dlq_topic="orders.dlq"), "food-orders-host-7", producer=producer)


def test_a_letter_keeps_the_original_record_and_adds_our_headers() -> None:
    producer = FakeProducer()
    dlq(producer).send([letter()])
    assert producer.delivered == [("orders.dlq", b"{}", b"CUST-00001", [
        ("trace", b"t-1"), ("error", b"schema"), ("error_detail", b"no items"), ("source_topic", b"orders"),
        ("source_partition", b"2"), ("source_offset", b"41"), ("consumer_client_id", b"food-orders-host-7")])]


def test_an_unconfirmed_letter_is_a_retryable_failure() -> None:
    with pytest.raises(DeliveryFailed):
        dlq(FakeProducer(fail=KafkaError._MSG_TIMED_OUT)).send([letter()])


def test_a_letter_too_big_for_the_broker_goes_without_its_value() -> None:
    producer = FakeProducer(too_big=10)
    dlq(producer).send([letter(b"x" * 50)])
    ((_, value, key, headers),) = producer.delivered
    assert value is None and key == b"CUST-00001"
    assert headers[-2:] == [("value_truncated", b"1"), ("original_size", b"50")]
