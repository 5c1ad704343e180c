"""Mock data: deterministic content per seed, valid orders, unique time-ordered ids."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from pipeline import mockdata
from pipeline.mockdata import CUSTOMERS, MENU, OrderGenerator, new_order_id, new_order_ids
from pipeline.orders import Order, decode_order, encode_order, order_key

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def sequence(seed: int | None, n: int = 500) -> list[Order]:
    gen = OrderGenerator(seed)
    return [gen.next_order(f"ORD-{i}", T0 + timedelta(seconds=i)) for i in range(n)]


def test_same_seed_same_content() -> None:
    assert sequence(42) == sequence(42)


def test_different_seed_different_content() -> None:
    a, b = sequence(1), sequence(2)
    assert a != b
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 400


def test_unseeded_generators_differ() -> None:
    assert sequence(None) != sequence(None)


def test_pool_sizes_and_ids() -> None:
    assert [c.customer_id for c in CUSTOMERS] == [f"CUST-{n:05d}" for n in range(1, 101)]
    assert len({c.name for c in CUSTOMERS}) == 100
    assert len({c.email for c in CUSTOMERS}) == 100
    assert all(re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.com", c.email) for c in CUSTOMERS)
    assert [m.item_id for m in MENU] == [f"ITEM-{n:03d}" for n in range(1, 21)]
    assert len({m.name for m in MENU}) == 20
    assert all(0 < m.price == round(m.price, 2) for m in MENU)


def test_generated_orders_follow_the_rules() -> None:
    customers = {c.customer_id: c for c in CUSTOMERS}
    menu = {m.item_id: m for m in MENU}
    orders = sequence(3, 5000)
    for order in orders:
        assert decode_order(order_key(order), encode_order(order)) == order
        customer = customers[order.customer_id]
        assert (order.customer_name, order.customer_email) == (customer.name, customer.email)
        assert 1 <= len(order.items) <= 5
        assert len({i.item_id for i in order.items}) == len(order.items)
        for item in order.items:
            assert 1 <= item.quantity <= 3
            assert (item.name, item.price) == (menu[item.item_id].name, menu[item.item_id].price)
            assert item.subtotal == round(item.price * item.quantity, 2)
        assert order.total_amount == round(sum(i.subtotal for i in order.items), 2)
    # The generator really spreads over the pools and the ranges.
    assert len({o.customer_id for o in orders}) == 100
    assert {len(o.items) for o in orders} == {1, 2, 3, 4, 5}
    assert {i.item_id for o in orders for i in o.items} == set(menu)
    assert {i.quantity for o in orders for i in o.items} == {1, 2, 3}


def test_order_ids_unique_short_and_time_ordered() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_order_id() for _ in range(100_000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) <= 64 for i in ids)
    pattern = re.compile(r"ORD-[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    assert all(pattern.fullmatch(i) for i in ids)
    first_ms = int(ids[0][4:17].replace("-", ""), 16)
    assert before_ms <= first_ms <= after_ms + 1


def test_a_burst_of_ids_continues_the_same_strictly_increasing_sequence() -> None:
    pattern = re.compile(r"ORD-[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    ids = [new_order_id(), *new_order_ids(50_000), new_order_id(), *new_order_ids(3), *new_order_ids(0)]
    assert len(ids) == 50_005 and len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(pattern.fullmatch(i) for i in ids)


def test_a_burst_crossing_the_62_bit_boundary_formats_its_prefix_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    # "The same millisecond" for the whole burst (monkeypatch restores the generator's state after).
    monkeypatch.setattr(mockdata, "_last_ms", time.time_ns() // 1_000_000 + 60_000)
    monkeypatch.setattr(mockdata, "_last_rand", (1 << 62) - 2)
    ids = new_order_ids(4)
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert len({i[:23] for i in ids}) == 2, "the 63rd random bit changed in the burst"
    assert all(int(i[23:].replace("-", ""), 16) >> 62 == 0b10 for i in ids), "variant bits kept"


def test_order_ids_ignore_the_seeded_rng() -> None:
    random.seed(1)
    a = new_order_id()
    random.seed(1)
    b = new_order_id()
    assert a != b
    # Random bits differ in the first id of a new millisecond, not just a counter.
    time.sleep(0.002)
    c = new_order_id()
    time.sleep(0.002)
    d = new_order_id()
    assert c[19:] != d[19:]


def test_fast_json_path_gives_the_same_bytes_as_encoding_the_order() -> None:
    from datetime import UTC, datetime

    from pipeline.mockdata import OrderGenerator, new_order_id
    from pipeline.orders import Order, decode_order, encode_order

    slow, fast = OrderGenerator(11), OrderGenerator(11)
    now = datetime.now(UTC)
    for _ in range(2_000):
        order_id = new_order_id()
        order = slow.next_order(order_id, now)
        key, value = fast.next_order_json(order_id, now)
        assert (key, value) == (order.customer_id.encode(), encode_order(order))
        assert isinstance(decode_order(key, value), Order)
