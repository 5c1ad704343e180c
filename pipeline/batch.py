"""Decode step of the consumer: Kafka messages in, valid rows and dead letters out. Pure (no I/O).

A `Batch` also remembers, per partition, the offset to commit once it is done (last offset + 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.orders import Rejection, decode_order
from pipeline.store import OrderRow


class KafkaRecord(Protocol):
    """The part of a Kafka message this step reads (confluent_kafka.Message satisfies it)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | str | None: ...
    def value(self) -> bytes | str | None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message for the DLQ: the original bytes untouched, why, and where it came from."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    error: str
    detail: str


@dataclass
class Batch:
    """One unit of work: written, dead-lettered and committed together."""

    rows: list[OrderRow] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: list[KafkaRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)

    def without_partitions(self, gone: Iterable[tuple[str, int]]) -> Batch:
        """The batch minus messages of partitions this process no longer owns (revoked or lost)."""
        gone_set = set(gone)
        return decode_batch([m for m in self.messages if (m.topic(), m.partition()) not in gone_set])


def decode_batch(messages: Sequence[KafkaRecord]) -> Batch:
    """Validate each message; valid orders become rows, the rest dead letters. Order is kept."""
    batch = Batch(messages=list(messages))
    for msg in messages:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        key, value = _as_bytes(msg.key()), _as_bytes(msg.value())
        result = decode_order(key, value)
        if isinstance(result, Rejection):
            batch.dead.append(DeadLetter(key, value, topic, partition, offset, result.code, result.detail))
        else:
            batch.rows.append(OrderRow(result, partition, offset))
        tp = (topic, partition)
        batch.next_offsets[tp] = max(batch.next_offsets.get(tp, 0), offset + 1)
    return batch


def _as_bytes(data: bytes | str | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data
