"""The decode step: messages in, rows and rejections out, with the offsets to commit; rejections become
dead letters with the original key, value and headers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.batch import decode_batch
from pipeline.mockdata import OrderGenerator, new_order_id
from pipeline.orders import CONFLICT, Rejection, encode_order


@dataclass
class FakeRecord:
    """Stands in for confluent_kafka.Message (also in the consumer loop's tests)."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, str | bytes | None]] | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, str | bytes | None]] | None:
        return self._headers


def test_rows_dead_letters_and_next_offsets() -> None:
    gen = OrderGenerator(1)
    orders = [gen.next_order(new_order_id(), datetime.now(UTC)) for _ in range(3)]
    records = [
        FakeRecord("t", 0, 10, orders[0].customer_id.encode(), encode_order(orders[0])),
        FakeRecord("t", 0, 11, b"CUST-00001", b"nope", [("trace", b"x")]),
        FakeRecord("t", 2, 7, orders[1].customer_id.encode(), encode_order(orders[1])),
        FakeRecord("t", 0, 12, orders[2].customer_id.encode(), encode_order(orders[2])),
    ]
    batch = decode_batch(records)
    assert [(r.partition, r.offset, r.order.order_id) for r in batch.rows] == [
        (0, 10, orders[0].order_id), (2, 7, orders[1].order_id), (0, 12, orders[2].order_id)]
    assert [(d.partition, d.offset, d.why.code, d.key, d.value, d.headers) for d in batch.dead_letters()] == [
        (0, 11, "invalid_json", b"CUST-00001", b"nope", [("trace", b"x")])]
    assert batch.next_offsets == {("t", 0): 13, ("t", 2): 8}

    # A row the store refuses becomes a letter from its original record, after the invalid ones.
    conflict = Rejection(CONFLICT, "stored with different content")
    letters = batch.dead_letters([(batch.rows[1], conflict)])
    assert [(d.partition, d.offset, d.why) for d in letters[1:]] == [(2, 7, conflict)]
    assert (letters[1].key, letters[1].value, letters[1].headers) == (records[2].key(), records[2].value(), [])

    rest = batch.without_partitions({("t", 0)})
    assert [r.offset for r in rest.rows] == [7] and rest.invalid == [] and rest.next_offsets == {("t", 2): 8}
