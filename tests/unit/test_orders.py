"""Order contract: what decode_order accepts, and the code it rejects each broken rule with."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline import orders
from pipeline.mockdata import OrderGenerator, new_order_id
from pipeline.orders import Order, Rejection, decode_order, encode_order, items_json, order_key

KEY = b"CUST-00007"
Change = Callable[[dict[str, Any]], None]
_DELETE = object()


def valid_payload() -> dict[str, Any]:
    return {
        "order_id": "ORD-1",
        "customer_id": "CUST-00007",
        "customer_name": "Grace Okafor",
        "customer_email": "grace@example.com",
        "items": [
            {"item_id": "ITEM-001", "name": "Pizza", "quantity": 2, "price": 11.5, "subtotal": 23.0},
            {"item_id": "ITEM-020", "name": "Lemonade", "quantity": 3, "price": 0.1, "subtotal": 0.3},
        ],
        "total_amount": 23.3,
        "status": "pending",
        "created_at": "2025-01-02T03:04:05.123456+01:00",
    }


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


VALID = dumps(valid_payload())


def setter(path: str, value: Any) -> Change:
    """Set (or with _DELETE remove) a field given as "a" or "items.0.b"."""

    def change(p: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = p
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return change


def many_items(n: int) -> Change:
    def change(p: dict[str, Any]) -> None:
        item = {"item_id": "I", "name": "x", "quantity": 1, "price": 1, "subtotal": 1}
        p["items"] = [item] * n
        p["total_amount"] = n

    return change


def free_pizza(p: dict[str, Any]) -> None:
    p["items"][0].update(price=0, subtotal=0)
    p["total_amount"] = 0.3


def max_total(p: dict[str, Any]) -> None:
    p["items"] = [
        {"item_id": "I", "name": "Banquet", "quantity": 1, "price": 99_999_999.99, "subtotal": 99_999_999.99}
    ]
    p["total_amount"] = 99_999_999.99


def mutated(*changes: Change) -> bytes:
    payload = valid_payload()
    for change in changes:
        change(payload)
    return dumps(payload)


def padded_to(size: int) -> bytes:
    base = len(mutated(setter("pad", "")))
    return mutated(setter("pad", "x" * (size - base)))


def test_valid_payload_decodes() -> None:
    result = decode_order(KEY, VALID)
    assert isinstance(result, Order)
    assert result.items[1].quantity == 3
    assert result.total_amount == 23.3
    assert result.created_at == datetime(2025, 1, 2, 2, 4, 5, 123456, tzinfo=UTC)


def test_generated_orders_validate_and_round_trip() -> None:
    gen = OrderGenerator(seed=7)
    for _ in range(2000):
        order = gen.next_order(new_order_id(), datetime.now(UTC))
        assert decode_order(order_key(order), encode_order(order)) == order
        assert order_key(order) == order.customer_id.encode()


def test_items_json_is_the_items_array() -> None:
    order = decode_order(KEY, VALID)
    assert isinstance(order, Order)
    assert json.loads(items_json(order)) == valid_payload()["items"]


def test_unknown_fields_are_ignored() -> None:
    value = mutated(
        setter("coupon", {"code": "X", "nested": [1, [2, {"a": None}]]}),
        setter("items.0.allergens", ["gluten"]),
    )
    assert decode_order(KEY, value) == decode_order(KEY, VALID)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(mutated(setter("order_id", "x" * 64)), id="order-id-64"),
        pytest.param(mutated(setter("customer_name", "é" * 200)), id="name-200-chars-not-bytes"),
        pytest.param(mutated(many_items(50)), id="50-items"),
        pytest.param(mutated(setter("items.0.subtotal", 23.01)), id="subtotal-within-0.01"),
        # 0.1 * 3 == 0.30000000000000004: float noise must not turn 0.01 into a rejection.
        pytest.param(mutated(setter("items.1.subtotal", 0.29)), id="subtotal-0.01-float-noise"),
        pytest.param(mutated(setter("total_amount", 23.29)), id="total-within-0.01"),
        pytest.param(mutated(free_pizza), id="price-0"),
        pytest.param(mutated(setter("created_at", "2025-01-02T03:04:05Z")), id="created-at-z"),
        pytest.param(mutated(max_total), id="max-total"),
        pytest.param(padded_to(orders.MAX_MESSAGE_BYTES), id="exactly-64KiB"),
    ],
)
def test_boundaries_accepted(value: bytes) -> None:
    assert isinstance(decode_order(KEY, value), Order), decode_order(KEY, value)


def bad(id_: str, value: bytes | None, code: str, detail: str = "", key: bytes | None = KEY) -> object:
    return pytest.param(key, value, code, detail, id=id_)


def bad_field(id_: str, path: str, value: Any, code: str = orders.SCHEMA) -> object:
    """A payload with one field changed; the detail must name that field."""
    named = path.replace(".0.", "[0].").replace(".1.", "[1].")
    return bad(id_, mutated(setter(path, value)), code, f"$.{named}")


@pytest.mark.parametrize(
    ("key", "value", "code", "detail_has"),
    [
        bad("invalid-json", b'{"order_id" "x"}', orders.INVALID_JSON, "malformed"),
        bad("truncated-json", b'{"order_id": ', orders.INVALID_JSON, "truncated"),
        bad("empty-value", b"", orders.INVALID_JSON),
        bad("none-value", None, orders.INVALID_JSON, "no value"),
        bad("non-utf8", VALID.replace(b"Pizza", b"Pi\xffzza"), orders.INVALID_JSON, "UTF-8"),
        bad("utf8-bom", b"\xef\xbb\xbf" + VALID, orders.INVALID_JSON),
        bad("deep-nesting", b'{"x": ' + b"[" * 30000 + b"]" * 30000 + b"}", orders.INVALID_JSON, "nested"),
        bad("nan", VALID.replace(b"23.3", b"NaN"), orders.INVALID_JSON),
        bad("infinity", VALID.replace(b"23.3", b"Infinity"), orders.INVALID_JSON),
        bad("minus-infinity", VALID.replace(b"23.3", b"-Infinity"), orders.INVALID_JSON),
        bad("overflowing-number", VALID.replace(b"23.3", b"1e999"), orders.SCHEMA, "$.total_amount"),
        bad("not-an-object", b"[1, 2]", orders.SCHEMA, "object"),
        bad("string-document", b'"order"', orders.SCHEMA, "object"),
        bad("missing-field", mutated(setter("total_amount", _DELETE)), orders.SCHEMA, "total_amount"),
        bad_field("wrong-type", "customer_name", 5),
        bad_field("null-field", "customer_email", None),
        bad_field("empty-order-id", "order_id", ""),
        bad_field("long-order-id", "order_id", "x" * 65),
        bad_field("long-customer-id", "customer_id", "x" * 65),
        bad_field("long-name", "customer_name", "x" * 201),
        bad_field("empty-email", "customer_email", ""),
        bad_field("empty-item-name", "items.0.name", ""),
        bad_field("long-item-id", "items.0.item_id", "x" * 201),
        bad("0-items", mutated(many_items(0)), orders.SCHEMA, "$.items"),
        bad("51-items", mutated(many_items(51)), orders.SCHEMA, "$.items"),
        bad_field("items-not-array", "items", {"a": 1}),
        bad_field("quantity-0", "items.0.quantity", 0),
        bad_field("quantity-str", "items.0.quantity", "2"),
        bad_field("quantity-bool", "items.0.quantity", True),
        bad_field("quantity-float", "items.0.quantity", 2.0),
        bad_field("quantity-huge", "items.0.quantity", 10**400),
        bad_field("negative-price", "items.0.price", -1),
        bad_field("price-str", "items.0.price", "11.5"),
        bad_field("subtotal-wrong", "items.0.subtotal", 23.5, orders.SUBTOTAL_MISMATCH),
        bad_field("subtotal-off-by-0.02", "items.1.subtotal", 0.32, orders.SUBTOTAL_MISMATCH),
        bad_field("total-wrong", "total_amount", 23.32, orders.TOTAL_MISMATCH),
        bad_field("total-0", "total_amount", 0),
        bad_field("total-negative", "total_amount", -23.3),
        bad_field("total-huge", "total_amount", 100_000_000),
        bad_field("total-rounds-past-numeric-10-2", "total_amount", 99_999_999.996),
        bad_field("status-delivered", "status", "delivered"),
        bad_field("status-5000-chars", "status", "x" * 5000),
        bad_field("naive-created-at", "created_at", "2025-01-02T03:04:05"),
        bad_field("bad-created-at", "created_at", "yesterday"),
        bad_field("epoch-created-at", "created_at", 1735787045),
        bad("key-mismatch", VALID, orders.KEY_MISMATCH, "CUST-00008", key=b"CUST-00008"),
        bad("key-empty", VALID, orders.KEY_MISMATCH, key=b""),
        bad("key-none", VALID, orders.KEY_MISMATCH, "no key", key=None),
        bad("over-64KiB", mutated(setter("pad", "x" * orders.MAX_MESSAGE_BYTES)), orders.TOO_LARGE, "bytes"),
        bad("64KiB-plus-1", padded_to(orders.MAX_MESSAGE_BYTES + 1), orders.TOO_LARGE, "65537"),
    ],
)
def test_broken_rule_is_rejected_with_its_code(
    key: bytes | None, value: bytes | None, code: str, detail_has: str
) -> None:
    result = decode_order(key, value)
    assert isinstance(result, Rejection), result
    assert result.code == code, result
    assert detail_has in result.detail
    assert 0 < len(result.detail) <= 200


def test_schema_error_detail_is_msgspecs_message() -> None:
    result = decode_order(KEY, mutated(setter("items.0.quantity", "2")))
    assert result == Rejection(orders.SCHEMA, "Expected `int`, got `str` - at `$.items[0].quantity`")


def test_codes_are_the_dlq_contract() -> None:
    codes = (orders.INVALID_JSON, orders.TOO_LARGE, orders.SCHEMA, orders.SUBTOTAL_MISMATCH)
    assert codes == ("invalid_json", "too_large", "schema", "subtotal_mismatch")
    codes = (orders.TOTAL_MISMATCH, orders.KEY_MISMATCH, orders.CONFLICT, orders.DB_REJECTED)
    assert codes == ("total_mismatch", "key_mismatch", "conflict", "db_rejected")
    assert orders.MAX_MESSAGE_BYTES == 65536
