"""Order contract: bytes in, a validated :class:`Order` or a typed :class:`Rejection` out.

Pure: no Kafka, no database, no I/O. The consumer's hot path, so decoding is done by
msgspec against typed Structs (bounds checked in C via ``Meta``), followed by a few
arithmetic checks that a schema cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import msgspec

# Rejection codes: they travel as the DLQ ``error`` header, so they are a contract.
INVALID_JSON = "invalid_json"
TOO_LARGE = "too_large"
SCHEMA = "schema"
SUBTOTAL_MISMATCH = "subtotal_mismatch"
TOTAL_MISMATCH = "total_mismatch"
KEY_MISMATCH = "key_mismatch"
CONFLICT = "conflict"
DB_REJECTED = "db_rejected"

MAX_MESSAGE_BYTES = 64 * 1024
# numeric(10,2) holds at most 99_999_999.99; a float just below 1e8 would round up
# to 100_000_000.00 on insert and overflow, so the bound is the largest storable value.
MAX_TOTAL = 99_999_999.99
# Not in the wire contract, but an unbounded JSON int overflows float arithmetic.
MAX_QUANTITY = 1_000_000
# "± 0.01" plus float noise, so 0.1 * 3 vs 0.29 is still within the tolerance.
AMOUNT_TOLERANCE = 0.01 + 1e-9
_MAX_DETAIL = 200

OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
CustomerId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
# JSON has no NaN/Infinity and msgspec rejects out-of-range numbers, so floats are finite.
Money = Annotated[float, msgspec.Meta(ge=0)]
Total = Annotated[float, msgspec.Meta(gt=0, le=MAX_TOTAL)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class Item(msgspec.Struct, frozen=True, gc=False):
    """One order line. ``subtotal`` must equal ``price * quantity`` within 0.01."""

    item_id: Text
    name: Text
    quantity: Quantity
    price: Money
    subtotal: Money


class Order(msgspec.Struct, frozen=True, gc=False):
    """A validated order. Unknown JSON fields are ignored on decode."""

    order_id: OrderId
    customer_id: CustomerId
    customer_name: Text
    customer_email: Text
    items: Annotated[tuple[Item, ...], msgspec.Meta(min_length=1, max_length=50)]
    total_amount: Total
    status: Literal["pending"]
    created_at: AwareDatetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot be stored, from decode to DLQ letter: ``code`` is one of the module constants
    (the DLQ ``error`` header), ``detail`` is for humans (``error_detail``)."""

    code: str
    detail: str


_decoder = msgspec.json.Decoder(Order)
_encoder = msgspec.json.Encoder()


def _short(text: str) -> str:
    """Cap detail length: msgspec quotes offending values (a 60 KB status), headers stay small.

    The head is cut, keeping msgspec's trailing " - at `$.path`" that names the field.
    """
    if len(text) <= _MAX_DETAIL:
        return text
    head, sep, path = text.rpartition(" - at `")
    tail = sep + path if sep and len(sep + path) < _MAX_DETAIL // 2 else ""
    return (head if tail else text)[: _MAX_DETAIL - len(tail) - 3] + "..." + tail


def decode_order(key: bytes | None, value: bytes | None) -> Order | Rejection:
    """Decode and validate one Kafka message.

    Rules are checked in this order and the first failure wins: size (TOO_LARGE), JSON
    syntax and UTF-8 (INVALID_JSON), schema and bounds (SCHEMA), key == customer_id
    (KEY_MISMATCH), item subtotals (SUBTOTAL_MISMATCH), total (TOTAL_MISMATCH).
    A ``None`` value (tombstone) is INVALID_JSON, like an empty value: neither is a document.
    """
    if value is None:
        return Rejection(INVALID_JSON, "message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        return Rejection(TOO_LARGE, f"value is {len(value)} bytes, limit {MAX_MESSAGE_BYTES}")
    try:
        order = _decoder.decode(value)
    except msgspec.ValidationError as e:  # subclass of DecodeError: must come first
        return Rejection(SCHEMA, _short(str(e)))
    except msgspec.DecodeError as e:
        return Rejection(INVALID_JSON, _short(str(e)))
    except UnicodeDecodeError as e:
        return Rejection(INVALID_JSON, _short(f"not UTF-8: {e}"))
    except RecursionError:
        # Deeply nested junk in an ignored field; must not crash the consumer.
        return Rejection(INVALID_JSON, "JSON nested too deeply")

    if key is None:
        return Rejection(KEY_MISMATCH, "message has no key, expected customer_id")
    if key != order.customer_id.encode():
        return Rejection(KEY_MISMATCH, _short(f"key {key!r} != customer_id {order.customer_id!r}"))

    total = 0.0
    for i, item in enumerate(order.items):
        # "not (x <= tol)" so that a NaN could never pass.
        if not abs(item.price * item.quantity - item.subtotal) <= AMOUNT_TOLERANCE:
            return Rejection(
                SUBTOTAL_MISMATCH,
                f"$.items[{i}].subtotal {item.subtotal} != price {item.price} * quantity {item.quantity}",
            )
        total += item.subtotal
    if not abs(total - order.total_amount) <= AMOUNT_TOLERANCE:
        return Rejection(
            TOTAL_MISMATCH, f"$.total_amount {order.total_amount} != sum of subtotals {total:.2f}"
        )
    return order


def encode_order(order: Order) -> bytes:
    """The order as a UTF-8 JSON object (the Kafka message value)."""
    return _encoder.encode(order)


def order_key(order: Order) -> bytes:
    """The Kafka message key: customer_id as UTF-8, so a customer's orders share a partition."""
    return order.customer_id.encode()


def items_json(order: Order) -> str:
    """The items as JSON array text, for the ``orders.items`` jsonb column."""
    return _encoder.encode(order.items).decode()
