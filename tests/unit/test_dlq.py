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
    """Delivers at flush(); `fail` is the error every delivery reports, `too_big` the record size (key,
    value and headers, as the client counts them) above which produce() raises MSG_SIZE_TOO_LARGE."""

    def __init__(self, fail: int | None = None, too_big: int = 1_000_000) -> None:
        self.fail = fail
        self.too_big = too_big
        self.queued: list[tuple[str, bytes | None, bytes | None, list[tuple[str, Any]], Delivery]] = []
        self.delivered: list[tuple[str, bytes | None, bytes | None, list[tuple[str, Any]]]] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | None, *, headers: list[tuple[str, Any]],
                on_delivery: Delivery) -> None:
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers)
        if size > self.too_big:
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


def letter(value: bytes = b"{}", trace: bytes = b"t-1") -> DeadLetter:
    return DeadLetter(b"CUST-00001", value, [("trace", trace)], "orders", 2, 41, Rejection(SCHEMA, "no items"))


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
    producer = FakeProducer(too_big=300)
    dlq(producer).send([letter(b"x" * 500)])
    ((_, value, key, headers),) = producer.delivered
    assert value is None and key == b"CUST-00001"
    assert headers[-3:] == [("value_truncated", b"1"), ("original_size", b"500"), ("original_headers_dropped", b"8")]


def test_a_letter_whose_headers_make_it_too_big_is_still_sent() -> None:
    """Huge original headers with a small value: dropping the value alone would never fit, and a letter
    that can never be sent would block its partition for good."""
    producer = FakeProducer(too_big=300)
    dlq(producer).send([letter(b"{}", trace=b"t" * 1000)])
    ((_, value, _key, headers),) = producer.delivered
    assert value is None and ("trace", b"t" * 1000) not in headers
    assert ("error", b"schema") in headers and ("original_headers_dropped", b"1005") in headers
