"""Dead-letter queue adapter: produce the original record with reason headers, and wait for the broker.

A letter keeps the original key, value and headers, and gets ours: `error`, `error_detail`,
`source_topic`, `source_partition`, `source_offset`, `consumer_client_id`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from loguru import logger

from pipeline.batch import DeadLetter
from pipeline.errors import DeliveryFailed
from pipeline.logs import kafka_logger
from pipeline.settings import Settings

# The broker or the client refuses a message this size: retrying the same bytes can never work.
_TOO_BIG = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}


class DlqProducer(Protocol):
    """What the DLQ uses of confluent_kafka.Producer (the unit tests pass a fake)."""

    def produce(self, topic: str, value: bytes | None, key: bytes | None, *,
                headers: list[tuple[str, str | bytes | None]],
                on_delivery: Callable[[KafkaError | None, Message[bytes, bytes]], None]) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...


class DeadLetterQueue:
    """Sends dead letters to `KAFKA_DLQ_TOPIC`; `send` returns only when every one is confirmed."""

    def __init__(self, settings: Settings, client_id: str, producer: DlqProducer | None = None) -> None:
        self._topic = settings.kafka_dlq_topic
        self._client_id = client_id
        self._producer: DlqProducer = producer if producer is not None else Producer({
            **settings.kafka_common(),
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": 15_000,
        }, logger=kafka_logger())

    def send(self, letters: Sequence[DeadLetter], timeout: float = 20.0) -> None:
        """Produce and await delivery of all letters. Raises DeliveryFailed if any is not confirmed.

        A letter too big for the broker once our headers are added (a value near the 1 MB limit) is
        sent without its value, with headers `value_truncated: 1` and `original_size`, rather than
        never: an undeliverable letter would block its partition forever."""
        if not letters:
            return
        failures: list[tuple[KafkaError, DeadLetter]] = []
        for letter in letters:
            self._produce(letter, failures)
        remaining = self._producer.flush(timeout)
        too_big = [letter for err, letter in failures if err.code() in _TOO_BIG]
        if too_big and not remaining:
            failures = [(err, letter) for err, letter in failures if err.code() not in _TOO_BIG]
            for letter in too_big:
                self._produce(letter, failures, truncate=True)
            remaining = self._producer.flush(timeout)
        if remaining or failures:
            reason = failures[0][0].str() if failures else f"{remaining} not confirmed after {timeout:.0f}s"
            raise DeliveryFailed(f"DLQ delivery failed for {len(failures) or remaining} message(s): {reason}")
        for letter in letters:
            logger.bind(source_partition=letter.partition, source_offset=letter.offset).debug(
                "dead-lettered {}@{}: {} ({})", letter.partition, letter.offset, letter.why.code, letter.why.detail
            )

    def _produce(self, letter: DeadLetter, failures: list[tuple[KafkaError, DeadLetter]],
                 truncate: bool = False) -> None:
        def on_delivery(err: KafkaError | None, _msg: Message[bytes, bytes]) -> None:
            if err is not None:
                failures.append((err, letter))

        headers: list[tuple[str, str | bytes | None]] = [
            *letter.headers,
            ("error", letter.why.code.encode()),
            ("error_detail", letter.why.detail.encode()),
            ("source_topic", letter.topic.encode()),
            ("source_partition", str(letter.partition).encode()),
            ("source_offset", str(letter.offset).encode()),
            ("consumer_client_id", self._client_id.encode()),
        ]
        key, value = letter.key, letter.value
        if truncate:
            # Too big for the broker: keep our headers, drop what made it big (the value, and the original
            # headers and key, which count too), and say so; a letter that can never be sent would block
            # its partition.
            dropped = sum(len(v or b"") for _k, v in letter.headers) + sum(len(k) for k, _v in letter.headers)
            headers = [*headers[len(letter.headers):],
                       ("value_truncated", b"1"), ("original_size", str(len(value or b"")).encode())]
            if letter.headers:
                headers.append(("original_headers_dropped", str(dropped).encode()))
            if key is not None and len(key) > 1024:
                headers.append(("original_key_dropped", str(len(key)).encode()))
                key = None
            value = None
        while True:
            try:
                self._producer.produce(self._topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: let deliveries drain first
                self._producer.poll(0.1)
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if err.code() in _TOO_BIG and not truncate:
                    logger.warning("DLQ letter for {}@{} too big ({} bytes): sending it without its value and headers",
                                   letter.partition, letter.offset, len(value or b""))
                    self._produce(letter, failures, truncate=True)
                    return
                raise DeliveryFailed(f"DLQ produce failed: {err.str()}") from e

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
