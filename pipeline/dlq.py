"""Dead-letter queue adapter: produce the original bytes with reason headers, and wait for the broker."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, Message, Producer
from loguru import logger

from pipeline.batch import DeadLetter
from pipeline.errors import DeliveryFailed
from pipeline.logs import kafka_logger
from pipeline.settings import Settings

DeliveryCallback = Callable[[KafkaError | None, "Message[bytes, bytes]"], None]


class DeadLetterQueue:
    """Sends dead letters to `KAFKA_DLQ_TOPIC`; `send` returns only when every one is confirmed."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._topic = settings.kafka_dlq_topic
        self._client_id = client_id
        self._producer = Producer({
            **settings.kafka_common(),
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 30_000,
        }, logger=kafka_logger())

    def send(self, letters: Sequence[DeadLetter], timeout: float = 40.0) -> None:
        """Produce and await delivery of all letters. Raises DeliveryFailed if any is not confirmed."""
        if not letters:
            return
        failures: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message[bytes, bytes]) -> None:
            if err is not None:
                failures.append(err)

        for letter in letters:
            self._produce(letter, on_delivery)
        remaining = self._producer.flush(timeout)
        if remaining or failures:
            reason = failures[0].str() if failures else f"{remaining} not confirmed after {timeout:.0f}s"
            raise DeliveryFailed(f"DLQ delivery failed for {len(failures) or remaining} message(s): {reason}")
        for letter in letters:
            logger.bind(source_partition=letter.partition, source_offset=letter.offset).debug(
                "dead-lettered {}@{}: {} ({})", letter.partition, letter.offset, letter.error, letter.detail
            )

    def _produce(self, letter: DeadLetter, on_delivery: DeliveryCallback) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("error", letter.error.encode()),
            ("error_detail", letter.detail.encode()),
            ("source_topic", letter.topic.encode()),
            ("source_partition", str(letter.partition).encode()),
            ("source_offset", str(letter.offset).encode()),
            ("consumer_client_id", self._client_id.encode()),
        ]
        while True:
            try:
                self._producer.produce(self._topic, letter.value, letter.key, headers=headers,
                                       on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: let deliveries drain first
                self._producer.poll(0.1)

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
