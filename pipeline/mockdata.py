"""Seeded mock orders for the producer. Pure: no Kafka, no I/O beyond ``os.urandom`` for ids."""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from datetime import datetime
from typing import NamedTuple

import msgspec

from pipeline.orders import Item, Order


class Customer(NamedTuple):
    """A pool customer; the same id always has the same name and email."""

    customer_id: str
    name: str
    email: str


class MenuItem(NamedTuple):
    """A menu entry; ``price`` has 2 decimals."""

    item_id: str
    name: str
    price: float


_FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas")
_LAST = ("Okafor", "Lindqvist", "Moreau", "Nakamura", "Patel", "Quinn", "Rossi", "Silva", "Tanaka", "Weber")

# Fixed, not seeded: a customer id always has the same name and email, across runs and seeds.
CUSTOMERS: tuple[Customer, ...] = tuple(
    Customer(
        f"CUST-{n:05d}",
        f"{_FIRST[(n - 1) % 10]} {_LAST[(n - 1) // 10]}",
        f"{_FIRST[(n - 1) % 10].lower()}.{_LAST[(n - 1) // 10].lower()}{n}@example.com",
    )
    for n in range(1, 101)
)

CUSTOMER_KEYS: tuple[bytes, ...] = tuple(c.customer_id.encode() for c in CUSTOMERS)
_encode = msgspec.json.Encoder().encode

MENU: tuple[MenuItem, ...] = tuple(
    MenuItem(f"ITEM-{i:03d}", name, price)
    for i, (name, price) in enumerate(
        (
            ("Margherita Pizza", 11.50),
            ("Pepperoni Pizza", 13.25),
            ("Cheeseburger", 9.99),
            ("Veggie Burger", 10.49),
            ("Chicken Caesar Salad", 8.75),
            ("Pad Thai", 12.90),
            ("Chicken Tikka Masala", 14.50),
            ("Beef Pho", 11.95),
            ("Salmon Nigiri (6 pcs)", 15.00),
            ("California Roll", 7.80),
            ("Falafel Wrap", 7.25),
            ("Fish and Chips", 12.40),
            ("Carbonara", 13.60),
            ("Beef Burrito", 9.45),
            ("Fish Tacos (3)", 10.20),
            ("Miso Soup", 3.50),
            ("French Fries", 3.99),
            ("Garlic Bread", 4.25),
            ("Tiramisu", 6.50),
            ("Lemonade", 2.95),
        ),
        start=1,
    )
)

# Every possible order line (menu item x quantity 1..3) built once: orders share these
# immutable Items, which keeps next_order cheap at high producer rates.
_LINES: tuple[tuple[Item, ...], ...] = tuple(
    tuple(Item(m.item_id, m.name, q, m.price, round(m.price * q, 2)) for q in (1, 2, 3)) for m in MENU
)


_MENU_SIZE = len(MENU)
_SUBTOTALS: tuple[tuple[float, ...], ...] = tuple(tuple(i.subtotal for i in lines) for lines in _LINES)


class OrderGenerator:
    """Deterministic order content: the same seed gives the same sequence of orders.

    Only ``Random.random()`` is used, whose sequence Python guarantees per seed across versions.
    """

    def __init__(self, seed: int | None) -> None:
        self._random = random.Random(seed).random
        self._picks = list(range(len(MENU)))  # a permutation of the menu, shuffled a little per order

    def _draw(self) -> tuple[int, list[tuple[int, int]], float]:
        """One order's random draws: customer index, (menu index, quantity index) lines, rounded total."""
        r = self._random
        customer = int(r() * len(CUSTOMERS))
        picks = self._picks
        lines = []
        total = 0.0
        for i in range(1 + int(r() * 5)):
            # Partial Fisher-Yates on the running permutation: distinct items without rejection
            # sampling, and no fresh list per order (any permutation is a fair start).
            j = i + int(r() * (_MENU_SIZE - i))
            pick = picks[j]
            picks[j] = picks[i]
            picks[i] = pick
            q = int(r() * 3)
            lines.append((pick, q))
            total += _SUBTOTALS[pick][q]
        return customer, lines, round(total, 2)

    def next_order(self, order_id: str, created_at: datetime) -> Order:
        """An order for a pool customer with 1-5 distinct menu items, quantity 1-3 each."""
        c, lines, total = self._draw()
        customer = CUSTOMERS[c]
        return Order(
            order_id=order_id,
            customer_id=customer.customer_id,
            customer_name=customer.name,
            customer_email=customer.email,
            items=tuple(_LINES[m][q] for m, q in lines),
            total_amount=total,
            status="pending",
            created_at=created_at,
        )

    def next_order_json(self, order_id: str, created_at: datetime) -> tuple[bytes, bytes]:
        """(key, value) of the order `next_order` would give, encoded straight to JSON bytes.

        Same random draws, same bytes as `encode_order(next_order(...))`: only faster.
        """
        c, lines, total = self._draw()
        parts = [_LINES_JSON[m][q] for m, q in lines]
        value = b"".join((
            b'{"order_id":"', order_id.encode(), _CUSTOMER_JSON[c], b",".join(parts), b'],"total_amount":',
            _encode(total), b',"status":"pending","created_at":', _encode(created_at), b"}",
        ))
        return CUSTOMER_KEYS[c], value


# Pre-encoded JSON fragments for next_order_json: the producer's hot path builds the message bytes
# from these instead of creating an Order and encoding it (same bytes, a fraction of the work).
_CUSTOMER_JSON: tuple[bytes, ...] = tuple(
    b'","customer_id":' + msgspec.json.encode(c.customer_id) + b',"customer_name":'
    + msgspec.json.encode(c.name) + b',"customer_email":' + msgspec.json.encode(c.email) + b',"items":['
    for c in CUSTOMERS
)
_LINES_JSON: tuple[tuple[bytes, ...], ...] = tuple(tuple(msgspec.json.encode(i) for i in lines) for lines in _LINES)


_RAND_BITS = 74
_RAND_MASK = (1 << _RAND_BITS) - 1
_LOW_MASK = (1 << 62) - 1
_VARIANT = 0b10 << 62  # RFC 9562 variant bits above the low 62 random bits
_id_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_prefix_key: tuple[int, int] | None = None
_prefix = ""


def _reset_after_fork() -> None:
    # A forked child must not continue the parent's counter, or both would emit the same ids.
    global _last_ms, _last_rand, _id_lock, _prefix_key
    _last_ms, _last_rand, _id_lock, _prefix_key = 0, 0, threading.Lock(), None


os.register_at_fork(after_in_child=_reset_after_fork)


def new_order_id() -> str:
    """A globally unique, time-ordered order id: ``ORD-`` + a UUIDv7 (RFC 9562), 40 characters.

    48-bit unix milliseconds + 74 bits from ``secrets`` (fresh each millisecond), so ids stay
    unique across restarts, processes and hosts. Within one process ids are strictly increasing: in
    the same millisecond (or if the clock steps back) the random part is incremented (RFC 9562
    "monotonic random"). Independent of any seeded RNG.
    """
    return new_order_ids(1)[0]


def new_order_ids(n: int) -> list[str]:
    """`n` ids, as `n` calls of `new_order_id` in the same millisecond would give them: one clock
    read and one lock for the lot (the producer's hot path takes its ids a burst at a time)."""
    global _last_ms, _last_rand, _prefix_key, _prefix
    now_ms = time.time_ns() // 1_000_000
    ids = []
    with _id_lock:
        ms, rand, prefix_key, prefix = _last_ms, _last_rand, _prefix_key, _prefix
        for _ in range(n):
            if now_ms > ms:
                ms, rand = now_ms, secrets.randbits(_RAND_BITS)
            else:
                rand += 1
                if rand > _RAND_MASK:  # counter exhausted: borrow the next millisecond
                    ms, rand = ms + 1, secrets.randbits(_RAND_BITS)
            # Only the low 62 bits change between ids of one millisecond: format the rest once.
            if (ms, rand >> 62) != prefix_key:
                high = f"{(ms & 0xFFFF_FFFF_FFFF) << 16 | 0x7 << 12 | rand >> 62:016x}"
                prefix_key, prefix = (ms, rand >> 62), f"ORD-{high[:8]}-{high[8:12]}-{high[12:]}-"
            low = f"{_VARIANT | (rand & _LOW_MASK):016x}"
            ids.append(f"{prefix}{low[:4]}-{low[4:]}")
        _last_ms, _last_rand, _prefix_key, _prefix = ms, rand, prefix_key, prefix
    return ids
