"""The producer against a fake Kafka client: whatever the client raises or reports, no exception escapes
(except a fatal one), every generated order is handed over exactly once and in order per key, and
generation waits while too many orders are undelivered."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from loguru import logger

from pipeline import producer as producer_module
from pipeline.errors import FatalError
from pipeline.producer import OrderProducer
from pipeline.settings import Settings

Callback = Callable[[KafkaError | None, Any], None]


def kafka_exception(code: int, fatal: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, fatal=fatal))


class FakeKafka:
    """Stands in for confluent_kafka.Producer, with a broker that can go away.

    `outage(polls, error)`: for the next `polls` calls of poll(), produce() raises `error` (None: it
    queues, up to `capacity`, then raises BufferError like the real client) and nothing is delivered;
    with `fail_queued`, the next poll() reports every queued message failed with `error`'s code, in
    queue order, as librdkafka does when metadata says the topic does not exist. `at[n]` runs when
    the n-th message is accepted; `on_poll` runs at every poll (for the tests' own checks). With
    `background=k`, every k-th produce() call first delivers the oldest queued message, as the
    client's own threads do between two calls (so a full queue can have room again at the next call)."""

    def __init__(self, capacity: int = 1_000_000, background: int = 0, real_time: bool = False) -> None:
        self.capacity = capacity
        self.background = background
        self.real_time = real_time  # poll() waits its timeout, as the client does when nothing comes
        self.calls = 0
        self.queue: list[tuple[bytes, bytes, Callback]] = []
        self.delivered: list[tuple[bytes, bytes]] = []
        self.accepted = 0
        self.refused = 0
        self.polls = 0
        self.down_until = 0
        self.error: BaseException | None = None
        self.fail_queued: int | None = None
        self.at: dict[int, Callable[[], None]] = {}
        self.on_poll: Callable[[], None] = lambda: None

    def outage(self, polls: int, error: BaseException | None = None, fail_queued: bool = False) -> None:
        self.down_until = self.polls + polls
        self.error = error
        if fail_queued and isinstance(error, KafkaException):
            self.fail_queued = error.args[0].code()

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: Callback) -> None:
        self.calls += 1
        if self.background and self.calls % self.background == 0 and self.queue and self.polls >= self.down_until:
            self.delivered.append(self.queue.pop(0)[:2])
        if self.polls < self.down_until and self.error is not None:
            self.refused += 1
            raise self.error
        if len(self.queue) >= self.capacity:
            self.refused += 1
            raise BufferError("Local: Queue full")
        self.queue.append((key, value, on_delivery))
        self.accepted += 1
        if self.accepted in self.at:
            self.at.pop(self.accepted)()

    def poll(self, timeout: float) -> int:
        self.polls += 1
        if self.real_time:
            time.sleep(timeout)
        self.on_poll()
        if self.fail_queued is not None:
            queued, self.queue = self.queue, []
            for key, value, callback in queued:
                callback(KafkaError(self.fail_queued), Message(topic="orders", key=key, value=value))
            self.fail_queued = None
        elif self.polls >= self.down_until:
            self.delivered.extend((key, value) for key, value, _ in self.queue)
            self.queue.clear()
        return 0

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return len(self.queue)

    def __len__(self) -> int:
        return len(self.queue)


def make_producer(fake: FakeKafka, orders: int) -> OrderProducer:
    settings = Settings(kafka_topic="orders", producer_rate=0, producer_max_orders=orders, producer_seed=7)
    return OrderProducer(settings, "test", kafka=fake)


def order_ids(messages: list[tuple[bytes, bytes]]) -> list[str]:
    return [json.loads(value)["order_id"] for _, value in messages]


def assert_each_once_in_order_per_key(messages: list[tuple[bytes, bytes]], produced: int) -> None:
    """Every generated order exactly once; per key in generation order (order ids are UUIDv7,
    strictly increasing in generation order within a process)."""
    ids = order_ids(messages)
    assert len(ids) == produced
    assert len(set(ids)) == produced, "an order was handed over twice"
    by_key: dict[bytes, list[str]] = {}
    for (key, _), order_id in zip(messages, ids, strict=True):
        by_key.setdefault(key, []).append(order_id)
    for key, key_ids in by_key.items():
        assert key_ids == sorted(key_ids), f"orders of {key!r} reordered"


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def test_unknown_topic_during_a_broker_restart_holds_orders_in_order(warnings: list[str]) -> None:
    fake = FakeKafka()
    fake.at[1_500] = lambda: fake.outage(20, kafka_exception(KafkaError._UNKNOWN_TOPIC))
    fake.at[3_200] = lambda: fake.outage(10, kafka_exception(KafkaError._UNKNOWN_PARTITION))  # while draining
    producer = make_producer(fake, 30_000)

    assert producer.run() == 0

    assert fake.refused > 0, "the outage must have happened"
    assert_each_once_in_order_per_key(fake.delivered, 30_000)
    ids = order_ids(fake.delivered)
    assert ids == sorted(ids), "with no failed deliveries even the global order holds"
    assert (producer.produced, producer.delivered, producer.failed) == (30_000, 30_000, 0)
    # One warning for the whole episode, not one per refused order or retry.
    assert sum("orders wait for Kafka" in line for line in warnings) == 1
    assert any("_UNKNOWN_TOPIC" in line for line in warnings)
    assert sum("Kafka takes orders again" in line for line in warnings) == 1


def test_failed_deliveries_go_out_again_before_newer_orders() -> None:
    # librdkafka fails every queued message when a restarted broker reports the topic missing, and
    # produce() raises _UNKNOWN_TOPIC until the topic is back.
    fake = FakeKafka()
    fake.at[1_500] = lambda: fake.outage(5, kafka_exception(KafkaError._UNKNOWN_TOPIC), fail_queued=True)
    producer = make_producer(fake, 4_000)

    assert producer.run() == 0

    assert producer.failed == 500  # orders 1,001-1,500 were queued when the topic went missing
    assert_each_once_in_order_per_key(fake.delivered, 4_000)
    assert (producer.produced, producer.delivered) == (4_000, 4_000)


def test_generation_waits_when_the_queue_and_the_backlog_are_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_module, "MAX_PENDING", 100)
    fake = FakeKafka(capacity=60)  # the client's own limit is lower: it raises BufferError first
    fake.at[200] = lambda: fake.outage(50)  # broker away: messages queue, nothing is delivered
    producer = make_producer(fake, 1_000)
    pending: list[int] = []
    fake.on_poll = lambda: pending.append(producer.produced - len(fake.delivered))

    assert producer.run() == 0

    assert fake.refused > 0, "the client's queue must have been full"
    assert max(pending) == 100, "generation stops at MAX_PENDING undelivered orders, and only there"
    assert pending.count(100) >= 40, "generation stayed paused while the broker was away"
    assert_each_once_in_order_per_key(fake.delivered, 1_000)


def test_no_order_overtakes_one_the_full_queue_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client's queue is full for one produce() call and has room again at the next: the next
    # order must still wait behind the refused one.
    monkeypatch.setattr(producer_module, "MAX_PENDING", 200)
    fake = FakeKafka(capacity=50, background=3)
    producer = make_producer(fake, 5_000)

    assert producer.run() == 0

    assert fake.refused > 0, "the client's queue must have been full"
    assert_each_once_in_order_per_key(fake.delivered, 5_000)
    ids = order_ids(fake.delivered)
    assert ids == sorted(ids)


def test_stop_during_an_outage_flushes_what_it_can(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_module, "FLUSH_TIMEOUT", 5.0)
    fake = FakeKafka()
    producer = make_producer(fake, 0)  # unlimited: runs until stopped

    def outage_then_stop() -> None:
        fake.outage(30, kafka_exception(KafkaError._TRANSPORT))
        producer.stopping = True

    fake.at[2_500] = outage_then_stop

    assert producer.run() == 0  # the broker came back within FLUSH_TIMEOUT: all delivered
    assert producer.produced > 2_500
    assert_each_once_in_order_per_key(fake.delivered, producer.produced)


def test_orders_still_undelivered_after_the_flush_timeout_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                                 warnings: list[str]) -> None:
    monkeypatch.setattr(producer_module, "FLUSH_TIMEOUT", 0.3)
    fake = FakeKafka()
    producer = make_producer(fake, 0)

    def endless_outage_then_stop() -> None:
        fake.outage(10**9, kafka_exception(KafkaError._ALL_BROKERS_DOWN))
        producer.stopping = True

    fake.at[100] = endless_outage_then_stop

    assert producer.run() == 1
    assert any(f"undelivered {producer.produced}" in line for line in warnings)  # none delivered


@pytest.mark.parametrize("error", [
    kafka_exception(KafkaError._FATAL),
    kafka_exception(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True),
    kafka_exception(KafkaError.MSG_SIZE_TOO_LARGE),  # refused for good: it would block every later order
])
def test_fatal_or_permanent_produce_errors_stop_the_producer(error: KafkaException) -> None:
    fake = FakeKafka()
    fake.at[10] = lambda: fake.outage(10**9, error)
    with pytest.raises(FatalError):
        make_producer(fake, 1_000).run()


def test_a_fatal_delivery_report_stops_the_producer() -> None:
    fake = FakeKafka()
    producer = make_producer(fake, 1_000)

    def fail_fatally() -> None:
        key, value, callback = fake.queue.pop()
        callback(KafkaError(KafkaError._FATAL, fatal=True), Message(topic="orders", key=key, value=value))

    fake.at[10] = fail_fatally
    with pytest.raises(FatalError):
        producer.run()


def test_at_a_fixed_rate_the_producer_wakes_per_tick_not_per_order() -> None:
    fake = FakeKafka(real_time=True)
    settings = Settings(kafka_topic="orders", producer_rate=20_000, producer_max_orders=2_000, producer_seed=7)
    producer = OrderProducer(settings, "test", kafka=fake)
    started = time.monotonic()
    assert producer.run() == 0
    elapsed = time.monotonic() - started
    assert len(fake.delivered) == 2_000
    assert elapsed >= 0.09, "the rate is kept: 2,000 orders at 20,000/s take 0.1 s"
    # 0.1 s in 5 ms ticks: about 20 wake-ups (and the final flush), not one per order.
    assert fake.polls < 100, f"{fake.polls} polls for 2,000 orders"
