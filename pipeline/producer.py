"""The producer process: `python -m pipeline.producer` (supervisord's `[program:producer]`).

Generates mock orders at PRODUCER_RATE orders/s (0 = as fast as possible) for PRODUCER_MAX_ORDERS
orders (0 = forever), keyed by customer_id with the Java client's partitioner (murmur2_random), and
idempotent. Every delivery report is counted; a message the broker did not take is produced again
(the order_id makes a repeat harmless downstream). SIGTERM: stop generating, flush, exit 0.
"""

from __future__ import annotations

import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType

from confluent_kafka import KafkaError, Message, Producer
from loguru import logger

from pipeline import runtime
from pipeline.errors import FatalError
from pipeline.kafka_admin import ensure_topics
from pipeline.logs import KafkaErrorLog, kafka_logger
from pipeline.mockdata import OrderGenerator, new_order_id
from pipeline.settings import Settings

LOG_EVERY = 5.0
FLUSH_TIMEOUT = 30.0


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
    }


class OrderProducer:
    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.kafka_errors = KafkaErrorLog()
        self.kafka = Producer({**producer_config(settings, client_id), "error_cb": self.kafka_errors},
                              logger=kafka_logger())
        self.generator = OrderGenerator(settings.producer_seed)
        self.stopping = False
        self.produced = 0  # orders generated
        self.sent = 0  # produce() calls, re-sends included
        self.failed = 0  # delivery reports with an error (each one is sent again)
        self.retry: list[tuple[bytes, bytes]] = []

    def run(self) -> int:
        topic, rate, limit = self.settings.kafka_topic, self.settings.producer_rate, self.settings.producer_max_orders
        started = last_log = time.monotonic()
        last_count = 0
        while not self.stopping and (limit == 0 or self.produced < limit):
            if self.kafka_errors.fatal:
                raise FatalError(self.kafka_errors.fatal)
            now = time.monotonic()
            due = limit - self.produced if limit else 1_000
            if rate > 0:
                due = min(due, int((now - started) * rate) + 1 - self.produced)
            self._resend_failed(topic)
            for _ in range(max(0, due)):
                self._produce_one(topic)
            if now - last_log >= LOG_EVERY:
                self._log_rate((self.produced - last_count) / (now - last_log))
                last_log, last_count = now, self.produced
            wait = 0.0 if rate == 0 else max(0.0, started + (self.produced + 1) / rate - time.monotonic())
            self.kafka.poll(min(wait, 0.1))
        return self._finish()

    def _produce_one(self, topic: str) -> None:
        key, value = self.generator.next_order_json(new_order_id(), datetime.now(UTC))
        self._send(topic, key, value)
        self.produced += 1

    @property
    def delivered(self) -> int:
        return self.sent - len(self.kafka) - self.failed

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.kafka.produce(topic, value, key, on_delivery=self._on_delivery)
                self.sent += 1
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self.kafka.poll(0.05)

    def _on_delivery(self, err: KafkaError | None, msg: Message[bytes, bytes]) -> None:
        if err is None:
            return
        self.failed += 1
        if err.fatal():
            raise FatalError(f"producer fatal error: {err.str()}")
        key, value = msg.key(), msg.value()
        if isinstance(key, bytes) and isinstance(value, bytes):
            self.retry.append((key, value))
        if self.failed == 1 or self.failed % 1000 == 0:
            logger.warning("delivery failed ({}), {} so far; producing them again", err.str(), self.failed)

    def _resend_failed(self, topic: str) -> None:
        retry, self.retry = self.retry, []
        for key, value in retry:
            self._send(topic, key, value)

    def _log_rate(self, rate: float) -> None:
        logger.info("produced {} ({:.0f}/s), delivered {}, failed {}, in flight {}",
                    self.produced, rate, self.delivered, self.failed, len(self.kafka))

    def _finish(self) -> int:
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while (len(self.kafka) or self.retry) and time.monotonic() < deadline:
            self._resend_failed(self.settings.kafka_topic)
            self.kafka.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        undelivered = len(self.kafka) + len(self.retry)
        logger.info("stopped: produced {}, delivered {}, delivery failures retried {}, undelivered {}",
                    self.produced, self.delivered, self.failed, undelivered)
        return 0 if undelivered == 0 else 1

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("{} received: flushing and stopping", signal.Signals(signum).name)
        self.stopping = True


def main() -> int:
    settings = runtime.start("producer")
    if settings is None:
        return 2
    client_id = settings.client_id()
    producer = OrderProducer(settings, client_id)
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
