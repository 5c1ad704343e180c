"""Decode step of the consumer: Kafka records in, valid rows and rejections out. Pure (no I/O).

A `Batch` also remembers, per partition, the offset to commit once it is done (last offset + 1), and
turns its rejections (invalid records, rows the store refused) into dead letters: the only place a
`Rejection` becomes a `DeadLetter`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.orders import Order, Rejection, decode_order

Header = tuple[str, str | bytes | None]


class KafkaRecord(Protocol):
    """The part of a Kafka message this step reads (confluent_kafka.Message satisfies it)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | str | None: ...
    def value(self) -> bytes | str | None: ...
    def headers(self) -> list[Header] | Mapping[str, str | bytes | None] | None: ...


@dataclass(frozen=True, slots=True)
class OrderRow:
    """A valid order and where it came from in Kafka."""

    order: Order
    partition: int
    offset: int


@dataclass
class WriteResult:
    """What the store did with one batch: rows inserted, harmless redeliveries, and rows for the DLQ."""

    inserted: int = 0
    duplicates: int = 0
    rejected: list[tuple[OrderRow, Rejection]] = field(default_factory=list)

    def add(self, other: WriteResult) -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record for the DLQ: the original key, value and headers untouched, where it came from, and why."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]
    topic: str
    partition: int
    offset: int
    why: Rejection


@dataclass
class Batch:
    """One unit of work: written, dead-lettered and committed together."""

    rows: list[OrderRow] = field(default_factory=list)
    invalid: list[tuple[KafkaRecord, Rejection]] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: list[KafkaRecord] = field(default_factory=list)
    # The rows in the store's wire form, made while the previous batch was being written (None: the
    # store encodes them itself). A batch changed by a rebalance is decoded anew, without it.
    encoded: bytes | None = None

    def __len__(self) -> int:
        return len(self.messages)

    def without_partitions(self, gone: Iterable[tuple[str, int]]) -> Batch:
        """The batch minus messages of partitions this process no longer owns (revoked or lost)."""
        gone_set = set(gone)
        return decode_batch([m for m in self.messages if (m.topic(), m.partition()) not in gone_set])

    def dead_letters(self, refused: Sequence[tuple[OrderRow, Rejection]] = ()) -> list[DeadLetter]:
        """The invalid records, then the rows the store refused, each as a letter with its original bytes."""
        rejected = list(self.invalid)
        if refused:
            by_position = {(m.partition(), m.offset()): m for m in self.messages}
            rejected += [(by_position[(row.partition, row.offset)], why) for row, why in refused]
        return [_letter(record, why) for record, why in rejected]


def decode_batch(messages: Sequence[KafkaRecord]) -> Batch:
    """Validate each message; valid orders become rows, the rest rejections. Order is kept."""
    batch = Batch(messages=list(messages))
    for msg in messages:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        result = decode_order(as_bytes(msg.key()), as_bytes(msg.value()))
        if isinstance(result, Rejection):
            batch.invalid.append((msg, result))
        else:
            batch.rows.append(OrderRow(result, partition, offset))
        tp = (topic, partition)
        batch.next_offsets[tp] = max(batch.next_offsets.get(tp, 0), offset + 1)
    return batch


def _letter(record: KafkaRecord, why: Rejection) -> DeadLetter:
    headers = record.headers() or []
    return DeadLetter(as_bytes(record.key()), as_bytes(record.value()),
                      list(headers.items() if isinstance(headers, Mapping) else headers),
                      record.topic() or "", record.partition() or 0, record.offset() or 0, why)


def as_bytes(data: bytes | str | None) -> bytes | None:
    """A key or value as bytes (the client returns bytes; str only when a deserializer is set)."""
    return data.encode() if isinstance(data, str) else data
