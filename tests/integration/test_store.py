"""The PostgreSQL sink on its own: migrations, COPY escaping, redeliveries, conflicts, refused rows."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg2
import pytest

from pipeline.batch import OrderRow
from pipeline.errors import FatalError
from pipeline.mockdata import OrderGenerator, new_order_id
from pipeline.orders import Item, Order
from pipeline.store import OrderStore
from tests.infra import Infra

pytestmark = pytest.mark.integration


def rows(n: int, seed: int = 1, start_offset: int = 0) -> list[OrderRow]:
    gen = OrderGenerator(seed)
    return [OrderRow(gen.next_order(new_order_id(), datetime.now(UTC)), 0, start_offset + i) for i in range(n)]


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_concurrent_migrations_do_not_race(database_url: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            OrderStore(database_url, "m").migrate()
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=migrate) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert query(database_url, "SELECT version FROM schema_migrations ORDER BY version") == [
        ("0001_initial",), ("0002_ids_collate_c",)]
    assert query(database_url, "SELECT table_name, column_name FROM information_schema.columns "
                               "WHERE collation_name = 'C' AND table_schema = 'public' ORDER BY 1, 2") == [
        ("customer_stats", "customer_id"), ("orders", "customer_id"), ("orders", "order_id")]
    assert OrderStore(database_url, "m").migrate() == []


def test_awkward_text_round_trips_exactly_through_copy(database_url: str) -> None:
    store = OrderStore(database_url, "client\twith-tab")
    store.migrate()
    text = 'tab\there, newline\nhere, back\\slash, "quotes", ünïcødé 🍕, \\N'
    order = Order(order_id="ORD-x", customer_id="CUST-00001", customer_name=text, customer_email="a@b.c",
                  items=(Item("ITEM-001", text, 2, 1.25, 2.5),), total_amount=2.5, status="pending",
                  created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    assert store.write([OrderRow(order, 1, 5)]).inserted == 1
    (name, items, total, client, created) = query(
        database_url, "SELECT customer_name, items, total_amount::text, consumer_client_id, created_at FROM orders")[0]
    assert name == text
    assert items == [msgspec.to_builtins(i) for i in order.items]
    assert (total, client, created) == ("2.50", "client\twith-tab", order.created_at)


def test_redelivery_changes_nothing_and_conflicts_are_reported(database_url: str) -> None:
    store = OrderStore(database_url, "c")
    store.migrate()
    batch = rows(100)
    first = store.write(batch)
    assert (first.inserted, first.duplicates, first.rejected) == (100, 0, [])
    stats = query(database_url, "SELECT * FROM customer_stats ORDER BY 1")

    changed = msgspec.structs.replace(batch[0].order, customer_name="Somebody Else")
    again = store.write([*batch, OrderRow(changed, 0, 100), OrderRow(batch[1].order, 0, 101)])
    assert (again.inserted, again.duplicates) == (0, 101)
    assert [(r.offset, e.code) for r, e in again.rejected] == [(100, "conflict")]
    assert query(database_url, "SELECT * FROM customer_stats ORDER BY 1") == stats


def test_same_id_twice_in_one_batch_keeps_the_first(database_url: str) -> None:
    store = OrderStore(database_url, "c")
    store.migrate()
    (row,) = rows(1)
    twin = OrderRow(msgspec.structs.replace(row.order, customer_name="Twin"), 0, 1)
    result = store.write([row, twin])
    assert result.inserted == 1 and [(r.offset, e.code) for r, e in result.rejected] == [(1, "conflict")]
    assert query(database_url, "SELECT customer_name FROM orders") == [(row.order.customer_name,)]


def test_refused_rows_are_isolated_and_the_rest_is_written(database_url: str) -> None:
    store = OrderStore(database_url, "c")
    store.migrate()
    batch = rows(64)
    bad = {5, 40}
    for i in bad:  # NUL cannot be stored in text; 0.004 rounds to 0.00 and breaks CHECK (total_amount > 0)
        order = batch[i].order
        fix = {"customer_name": "a\x00b"} if i == 5 else {"total_amount": 0.004}
        batch[i] = OrderRow(msgspec.structs.replace(order, **fix), 0, batch[i].offset)
    result = store.write(batch)
    assert result.inserted == 62
    assert sorted((r.offset, e.code) for r, e in result.rejected) == [(5, "db_rejected"), (40, "db_rejected")]
    assert all(e.detail for _, e in result.rejected)
    assert query(database_url, "SELECT count(*), (SELECT sum(order_count) FROM customer_stats) FROM orders") == [
        (62, 62)]


@pytest.mark.needs_local_servers  # roles are made by the cluster's superuser
def test_a_role_that_may_only_write_orders_starts_and_is_sent_to_the_owner_for_migrations(
        infra: Infra, database_url: str) -> None:
    OrderStore(database_url, "owner").migrate()
    assert infra.services is not None
    role, password = f"writer_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    parts = urlsplit(database_url)
    database = parts.path.lstrip("/")
    infra.services.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    infra.services.psql(f"GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA public "
                        f"TO {role}; GRANT INSERT, UPDATE ON orders, customer_stats TO {role}", db=database)
    writer = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
    store = OrderStore(writer, "writer")
    assert store.migrate() == []  # the schema is current: no DDL needed
    assert store.write(rows(3)).inserted == 3
    # As if a new migration had come:
    query(database_url, "DELETE FROM schema_migrations WHERE version = '0002_ids_collate_c' RETURNING version")
    with pytest.raises(FatalError, match=r"needs migrations 0002_ids_collate_c and this role may not change it .* "
                                         r"run `food-orders migrate` on the database host"):
        store.migrate()
    wrong = urlunsplit(parts._replace(netloc=f"{role}:wrong@{parts.hostname}:{parts.port}"))
    with pytest.raises(FatalError, match=r"PostgreSQL refused this client .*password authentication failed"):
        OrderStore(wrong, "writer").migrate()
