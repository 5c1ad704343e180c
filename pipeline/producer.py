"""The producer process: `python -m pipeline.producer` (supervisord's `[program:producer]`).

Generates mock orders at PRODUCER_RATE orders/s (0 = as fast as possible) for PRODUCER_MAX_ORDERS
orders (0 = forever), keyed by customer_id with the Java client's partitioner (murmur2_random), and
idempotent. An order the client refuses for now (broker restarting, topic briefly unknown, queue
full) waits in a local FIFO backlog and every later order waits behind it, so nothing is dropped or
reordered; generation pauses while MAX_PENDING orders are undelivered. SIGTERM: stop generating,
flush, exit 0 (1 if orders are still undelivered after FLUSH_TIMEOUT).
"""

from __future__ import annotations

import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from loguru import logger

from pipeline import runtime
from pipeline.errors import FatalError
from pipeline.kafka_admin import ensure_topics
from pipeline.logs import KafkaErrorLog, kafka_logger, process_name
from pipeline.metrics import ProducerMetrics, usable_dir
from pipeline.mockdata import OrderGenerator, new_order_ids
from pipeline.settings import Settings

LOG_EVERY = 5.0
FLUSH_TIMEOUT = 30.0
MAX_PENDING = 100_000  # orders in the client's queue + the local backlog; generation waits at this many
RETRY_WAIT = 0.02  # poll() timeout while orders wait for Kafka: retry soon, without spinning
BATCH = 1_000  # orders generated between two polls at most (back-pressure and SIGTERM act between)
WARN_EVERY = 30.0  # at most one "orders wait for Kafka" warning per this many seconds
# At a fixed rate, wake at most this often and generate what is due since: waking for every order
# (0.1 ms apart at 10,000/s, below poll()'s 1 ms resolution) spun a whole core.
TICK = 0.005

# produce() errors that pass by themselves: broker down or restarting, topic or partition briefly
# unknown (a restarted broker can answer metadata before it knows its topics), queue full.
TRANSIENT = frozenset({
    KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._QUEUE_FULL, KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT, KafkaError._RESOLVE, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.BROKER_NOT_AVAILABLE, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
})

Order = tuple[bytes, bytes]  # (key, value)
if TYPE_CHECKING:
    DeliveryCallback = Callable[[KafkaError | None, Message[bytes, bytes]], None]


class ProducerClient(Protocol):
    """What OrderProducer uses of confluent_kafka.Producer (the unit tests pass a fake)."""

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: DeliveryCallback) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


def producer_config(settings: Settings, client_id: str) -> dict[str, str | int | bool]:
    return {
        **settings.kafka_common(),
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",  # same partition for a key as the Java client
        "linger.ms": 10,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        # Never time out in the queue: with idempotence the broker then keeps each partition in
        # order through a broker outage (a timed-out order re-sent later would land behind newer ones).
        "message.timeout.ms": 0,
        # Reports for failures only: successes are counted as produced - queued - failed, which
        # spares a Python callback per message on the hot path.
        "delivery.report.only.error": True,
        # Partitions added to the topic are picked up within seconds, without a restart.
        "topic.metadata.refresh.interval.ms": 5_000,
        "queue.buffering.max.messages": MAX_PENDING,  # the default, stated: generation waits at it
    }


def refusal(e: KafkaException) -> str:
    """Why produce() refused an order, when waiting can fix it; FatalError when it cannot."""
    err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
    if err is None:
        raise FatalError(f"produce failed: {e}") from e
    if err.fatal() or err.code() == KafkaError._FATAL:
        raise FatalError(f"producer fatal error: {err.str()}") from e
    if err.code() in TRANSIENT or err.retriable():
        return f"{err.name()}: {err.str()}"
    # Too large, invalid argument, ...: the same order would be refused forever and block all behind it.
    raise FatalError(f"Kafka refused an order for good ({err.name()}: {err.str()})") from e


class OrderProducer:
    def __init__(self, settings: Settings, client_id: str, kafka: ProducerClient | None = None,
                 metrics: ProducerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.kafka_errors = KafkaErrorLog()
        self.kafka: ProducerClient = kafka if kafka is not None else Producer(
            {**producer_config(settings, client_id), "error_cb": self.kafka_errors}, logger=kafka_logger())
        self.generator = OrderGenerator(settings.producer_seed)
        self.stopping = False
        self.produced = 0  # orders generated
        self.sent = 0  # orders the client took (produce() calls that returned), re-sends included
        self.failed = 0  # delivery reports with an error (each one is sent again)
        self.backlog: deque[Order] = deque()  # orders the client has not taken yet, oldest first
        self.retry: list[Order] = []  # failed deliveries reported by the current poll, in report order
        self.waiting_since: float | None = None  # orders wait for Kafka since (monotonic), None = flowing
        self.warned_at = -WARN_EVERY

    def run(self) -> int:
        topic, rate, limit = self.settings.kafka_topic, self.settings.producer_rate, self.settings.producer_max_orders
        started = last_log = time.monotonic()
        last_count = 0
        while not self.stopping and (limit == 0 or self.produced < limit):
            if self.kafka_errors.fatal:
                raise FatalError(self.kafka_errors.fatal)
            now = time.monotonic()
            due = min(limit - self.produced, BATCH) if limit else BATCH
            if rate > 0:
                due = min(due, int((now - started) * rate) + 1 - self.produced)
            if self.backlog:
                self._drain(topic)
            room = MAX_PENDING - len(self.kafka) - len(self.backlog)
            blocked = due > room
            if blocked:  # back-pressure: generate only what Kafka's queue and the backlog can hold
                due = room
                self._waiting(f"{MAX_PENDING - room} orders undelivered; order generation paused")
            if due > 0:
                self._produce(topic, new_order_ids(due))
            if self.waiting_since is not None and not blocked and not self.backlog:
                self._flowing()
            self._report()
            if now - last_log >= LOG_EVERY:
                self._log_rate((self.produced - last_count) / (now - last_log))
                last_log, last_count = now, self.produced
            wait = 0.0
            if rate > 0:
                next_due = started + (self.produced + 1) / rate - time.monotonic()
                wait = max(next_due, TICK) if next_due > -TICK else 0.0  # behind schedule: no wait
            if blocked or self.backlog:
                wait = max(wait, RETRY_WAIT)
            self._poll(min(wait, 0.1))
        return self._finish()

    def _produce(self, topic: str, order_ids: list[str]) -> None:
        generate = self.generator.next_order_json
        for order_id in order_ids:
            key, value = generate(order_id, datetime.now(UTC))
            self.produced += 1
            if self.backlog or not self._send(topic, key, value):  # never overtake an order still waiting
                self.backlog.append((key, value))

    @property
    def delivered(self) -> int:
        return self.sent - len(self.kafka) - self.failed

    def _send(self, topic: str, key: bytes, value: bytes) -> bool:
        """Hand one order to the client; False if it refused it for now (the caller keeps it)."""
        try:
            self.kafka.produce(topic, value, key, on_delivery=self._on_delivery)
        except BufferError:  # the client's queue is full (its byte limit; MAX_PENDING caps the count)
            self._waiting("the client's queue is full")
            return False
        except KafkaException as e:
            self._waiting(refusal(e))
            return False
        self.sent += 1
        return True

    def _drain(self, topic: str) -> None:
        """Hand the backlog to the client, oldest first, until it refuses one."""
        backlog = self.backlog
        while backlog:
            key, value = backlog[0]
            if not self._send(topic, key, value):
                return
            backlog.popleft()

    def _poll(self, timeout: float) -> None:
        self.kafka.poll(timeout)
        self._requeue_failed()

    def _on_delivery(self, err: KafkaError | None, msg: Message[bytes, bytes]) -> None:
        # With idempotence and message.timeout.ms=0 librdkafka retries transient errors itself, in
        # order; it reports a failure only when (a) the error is fatal: FatalError; (b) the broker
        # refuses the message for good (too large, not authorized): re-sending repeats the failure, in
        # the log; (c) metadata says the topic does not exist (a restarted broker can say so before
        # it has loaded its metadata): every queued message of the topic fails at once, in queue order,
        # and produce() raises _UNKNOWN_TOPIC until the topic is back. A failed message is older than
        # everything in the backlog (the client only ever gets the backlog's head, or new orders while
        # it is empty), so failures go back to the front of the backlog in report order and are sent
        # again before any newer order. Not covered (not seen in (c)): failures of one partition
        # reported out of queue order, or an earlier message failing while a later one goes through.
        if err is None:
            return
        self.failed += 1
        if err.fatal():
            raise FatalError(f"producer fatal error: {err.str()}")
        key, value = msg.key(), msg.value()
        if isinstance(key, bytes) and isinstance(value, bytes):
            self.retry.append((key, value))
        self._waiting(f"delivery failed: {err.str()}; producing them again")

    def _requeue_failed(self) -> None:
        if self.retry:
            self.backlog.extendleft(reversed(self.retry))
            self.retry.clear()

    def _waiting(self, why: str) -> None:
        """Orders wait for Kafka: one warning (at most one per WARN_EVERY), not one per order or retry."""
        if self.waiting_since is not None:
            return
        self.waiting_since = now = time.monotonic()
        if now - self.warned_at >= WARN_EVERY:
            self.warned_at = now
            logger.warning("orders wait for Kafka ({}); they are kept in order and sent when it takes them", why)

    def _flowing(self) -> None:
        since, self.waiting_since = self.waiting_since, None
        if since is not None and self.warned_at >= since:
            logger.info("Kafka takes orders again, after {:.1f}s", time.monotonic() - since)

    def _report(self, force: bool = False) -> None:
        if self.metrics is not None:
            self.metrics.update(self.produced, self.delivered, self.failed, len(self.kafka), len(self.backlog), force)

    def _log_rate(self, rate: float) -> None:
        logger.info("produced {} ({:.0f}/s), delivered {}, failed {}, in flight {}, waiting {}",
                    self.produced, rate, self.delivered, self.failed, len(self.kafka), len(self.backlog))

    def _finish(self) -> int:
        topic = self.settings.kafka_topic
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while (self.backlog or len(self.kafka)) and time.monotonic() < deadline:
            if self.kafka_errors.fatal:
                raise FatalError(self.kafka_errors.fatal)
            self._drain(topic)
            remaining = max(0.0, deadline - time.monotonic())
            if self.backlog:  # flush() would return at once with the client's queue empty
                self._poll(min(RETRY_WAIT, remaining))
            else:
                self.kafka.flush(min(1.0, remaining))
                self._requeue_failed()
        if not self.backlog:
            self._flowing()
        undelivered = len(self.kafka) + len(self.backlog)
        self._report(force=True)
        logger.info("stopped: produced {}, delivered {}, delivery failures retried {}, undelivered {}",
                    self.produced, self.delivered, self.failed, undelivered)
        return 0 if undelivered == 0 else 1

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("{} received: flushing and stopping", signal.Signals(signum).name)
        self.stopping = True


def main() -> int:
    settings = runtime.settings_and_logging("producer")
    if settings is None:
        return 2
    client_id = settings.client_id()
    metrics = ProducerMetrics(process_name("producer")) if usable_dir(settings, "producer") else None
    producer = OrderProducer(settings, client_id, metrics=metrics)
    signal.signal(signal.SIGTERM, producer.stop)
    signal.signal(signal.SIGINT, producer.stop)
    rate = "as fast as possible" if settings.producer_rate == 0 else f"{settings.producer_rate:g}/s"
    limit = settings.producer_max_orders or "unlimited"
    logger.info("starting: client.id {}, topic {}, rate {}, orders {}", client_id, settings.kafka_topic, rate, limit)
    try:
        if not runtime.retry(lambda: ensure_topics(settings), lambda: producer.stopping):
            return 0
        return producer.run()
    except FatalError as e:
        logger.error("fatal: {}", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
