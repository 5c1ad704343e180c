"""PostgreSQL adapter: migrations and the batch writer.

One call to `OrderStore.write` is one transaction: COPY the batch into a temp staging table, insert
what is new (`ON CONFLICT (order_id) DO NOTHING`), add only the inserted rows to `customer_stats`,
and report orders whose id is already stored with different content (conflicts). A row PostgreSQL
itself refuses is isolated by bisecting the batch under savepoints, so the rest is still written.
Driver errors are translated here by SQLSTATE class, never by message text.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from loguru import logger
from psycopg2 import sql

from pipeline.batch import OrderRow, WriteResult
from pipeline.errors import DatabaseUnavailable, FatalError
from pipeline.orders import CONFLICT, DB_REJECTED, Rejection, items_json

MIGRATION_LOCK_ID = 0x0F00D0DE5  # pg_advisory_xact_lock key: one migrator at a time
COPY_CHUNK = 1 << 18  # bytes per COPY data message: fewer trips through Python than psycopg2's 8 KiB
# SQLSTATE classes: 08 connection, 53 resources, 57 operator intervention (shutdown), 40 rollback
# (deadlock, serialization), 55 object not in prerequisite state (lock not available), 58 system error
# (I/O error, e.g. a full or failing disk).
_RETRYABLE_CLASSES = ("08", "53", "57", "40", "55", "58")
# 22 data exception, 23 integrity constraint, 54 program limit (row too big): the row, not the DB.
_ROW_CLASSES = ("22", "23", "54")
# What PostgreSQL answers when it refuses this client for good (SQLSTATE 28P01, 28000, 3D000 and a
# missing role; libpq has no SQLSTATE for them), or libpq when the URL has no password. TLS problems
# (a CA file being replaced, a certificate being renewed) are retried like an outage.
_REFUSALS = re.compile(r'password authentication failed|no pg_hba\.conf entry|database ".*" does not exist'
                       r'|role ".*" does not exist|no password supplied|password is required')


COLUMNS = (
    "order_id, customer_id, customer_name, customer_email, items, total_amount, status, created_at, "
    "kafka_partition, kafka_offset, consumer_client_id"
)
_CONTENT = "customer_id, customer_name, customer_email, items, total_amount, status, created_at"
STAGING_TABLE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS orders_staging
    (LIKE orders INCLUDING DEFAULTS EXCLUDING CONSTRAINTS) ON COMMIT DELETE ROWS
"""
INSERT_SQL = f"""
WITH inserted AS (
    INSERT INTO orders ({COLUMNS})
    SELECT DISTINCT ON (order_id) {COLUMNS} FROM orders_staging
    ORDER BY order_id, kafka_partition, kafka_offset
    ON CONFLICT (order_id) DO NOTHING
    RETURNING customer_id, total_amount, created_at
), stats AS (
    INSERT INTO customer_stats (customer_id, order_count, total_spent, first_order_at, last_order_at)
    SELECT customer_id, count(*), sum(total_amount), min(created_at), max(created_at)
    FROM inserted GROUP BY customer_id ORDER BY customer_id  -- same lock order in every consumer
    ON CONFLICT (customer_id) DO UPDATE SET
        order_count = customer_stats.order_count + excluded.order_count,
        total_spent = customer_stats.total_spent + excluded.total_spent,
        first_order_at = least(customer_stats.first_order_at, excluded.first_order_at),
        last_order_at = greatest(customer_stats.last_order_at, excluded.last_order_at)
)
SELECT count(*) FROM inserted
"""
_CONFLICTS = f"""
SELECT s.kafka_partition, s.kafka_offset, o.kafka_partition, o.kafka_offset
FROM orders_staging s JOIN orders o USING (order_id)
WHERE ({', '.join('s.' + c for c in _CONTENT.split(', '))})
      IS DISTINCT FROM ({', '.join('o.' + c for c in _CONTENT.split(', '))})
"""
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


class OrderStore:
    """Writes order batches for one consumer process over one connection."""

    def __init__(self, database_url: str, client_id: str) -> None:
        self._url = database_url
        self._client_id = client_id  # PostgreSQL's application_name: what pg_stat_activity shows
        self._copy_client_id = client_id.translate(_COPY_ESCAPES)  # as a COPY text field
        self._conn: psycopg2.extensions.connection | None = None

    def connect(self) -> psycopg2.extensions.connection:
        """The open connection, reconnecting if needed. Raises DatabaseUnavailable."""
        if self._conn is None or self._conn.closed:
            self._conn = self._open()
            with self._conn.cursor() as cur:
                cur.execute(STAGING_TABLE_SQL)
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the versions applied now."""
        conn = self._open()
        try:
            return migrate(conn)
        except psycopg2.Error as e:
            raise _translate(e) from e
        finally:
            conn.close()

    def _open(self) -> psycopg2.extensions.connection:
        """A new connection with bounded waits and an explicit encoding. Raises DatabaseUnavailable.

        A hung server (network partition, stalled disk, a lock held by a stuck session) must surface as
        an error well within the consumer's max.poll.interval.ms, or the consumer would drop out of its
        group. The encoding is explicit so that a SQL_ASCII database refuses a row (SQLSTATE 22P05,
        dead-lettered) instead of raising UnicodeEncodeError in the client."""
        try:
            return psycopg2.connect(
                self._url, application_name=self._client_id, connect_timeout=5, client_encoding="UTF8",
                options="-c statement_timeout=30000 -c lock_timeout=15000",
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3, tcp_user_timeout=15000,
            )
        except psycopg2.Error as e:
            reason = _connect_failure(e)
            if _REFUSALS.search(reason):
                # Retrying the same credentials cannot help: exit, and let the operator fix the env file.
                raise FatalError(f"PostgreSQL refused this client (DATABASE_URL in the env file): {reason}") from e
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {reason}") from e

    def encode(self, rows: Sequence[OrderRow]) -> bytes:
        """The rows as the COPY data `write` sends, UTF-8 (pure CPU: the loop encodes the next batch
        while PostgreSQL works on this one)."""
        return "".join([self.copy_line(r) for r in rows]).encode()

    def write(self, rows: Sequence[OrderRow], encoded: bytes | None = None) -> WriteResult:
        """Store a batch in one transaction (`encoded`: `encode(rows)`, if already made). Raises
        DatabaseUnavailable (nothing was committed)."""
        if not rows:
            return WriteResult()
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                try:
                    result = self._write_rows(cur, rows, encoded)
                except psycopg2.Error as e:
                    if not _is_row_error(e):
                        raise
                    conn.rollback()
                    logger.warning("batch of {} refused ({}); isolating the bad rows", len(rows), e.pgcode)
                    result = self._write_isolating(cur, rows)
            conn.commit()
            return result
        except psycopg2.Error as e:
            self._discard(conn)
            raise _translate(e) from e

    def _write_rows(self, cur: psycopg2.extensions.cursor, rows: Sequence[OrderRow],
                    encoded: bytes | None = None) -> WriteResult:
        # Bytes (shared by BytesIO, not copied), not a StringIO: that holds 4 bytes per character.
        buf = io.BytesIO(self.encode(rows) if encoded is None else encoded)
        cur.copy_expert(f"COPY orders_staging ({COLUMNS}) FROM STDIN", buf, COPY_CHUNK)
        cur.execute(INSERT_SQL)
        inserted: int = cur.fetchone()[0]  # type: ignore[index]
        result = WriteResult(inserted=inserted)
        if inserted < len(rows):
            result.add(self._conflicts(cur, rows, inserted))
        return result

    def _conflicts(self, cur: psycopg2.extensions.cursor, rows: Sequence[OrderRow], inserted: int) -> WriteResult:
        cur.execute(_CONFLICTS)
        by_coords = {(r.partition, r.offset): r for r in rows}
        result = WriteResult()
        for partition, offset, kept_partition, kept_offset in cur.fetchall():
            row = by_coords[(partition, offset)]
            detail = (f"order_id {row.order.order_id!r} is already stored with different content "
                      f"(from partition {kept_partition} offset {kept_offset})")
            result.rejected.append((row, Rejection(CONFLICT, detail)))
        result.duplicates = len(rows) - inserted - len(result.rejected)
        return result

    def _write_isolating(self, cur: psycopg2.extensions.cursor, rows: Sequence[OrderRow]) -> WriteResult:
        """Write rows under a savepoint; on a row-level refusal bisect until the bad rows stand alone."""
        cur.execute("SAVEPOINT rows")
        try:
            result = self._write_rows(cur, rows)
            cur.execute("TRUNCATE orders_staging")
            cur.execute("RELEASE SAVEPOINT rows")
            return result
        except psycopg2.Error as e:
            if not _is_row_error(e):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT rows")
            if len(rows) == 1:
                logger.bind(order_id=rows[0].order.order_id).warning("row refused by PostgreSQL: {}", e.pgcode)
                return WriteResult(rejected=[(rows[0], Rejection(DB_REJECTED, f"{e.pgcode}: {_first_line(e)}"))])
            mid = len(rows) // 2
            result = self._write_isolating(cur, rows[:mid])
            result.add(self._write_isolating(cur, rows[mid:]))
            return result

    def copy_line(self, row: OrderRow) -> str:
        """One row in COPY text format (for `COPY orders_staging (COLUMNS)`). The hot path: escape only
        when a field needs it (rarely)."""
        o = row.order
        items = items_json(o)
        if "\\" in items:  # JSON escapes tabs and newlines itself; only its backslashes need doubling
            items = items.translate(_COPY_ESCAPES)
        fields: tuple[str, ...] = (o.order_id, o.customer_id, o.customer_name, o.customer_email)
        if _NEEDS_ESCAPE.search("".join(fields)):
            fields = tuple(f.translate(_COPY_ESCAPES) for f in fields)
        # status is validated to be "pending": nothing to escape.
        return (f"{fields[0]}\t{fields[1]}\t{fields[2]}\t{fields[3]}\t{items}\t{o.total_amount!r}\t{o.status}\t"
                f"{o.created_at.isoformat()}\t{row.partition}\t{row.offset}\t{self._copy_client_id}\n")

    def _discard(self, conn: psycopg2.extensions.connection) -> None:
        try:
            conn.rollback()
        except psycopg2.Error:
            self.close()


def migrate(conn: psycopg2.extensions.connection) -> list[str]:
    """Apply every migration not yet in schema_migrations, each in one transaction, serialized by an
    advisory lock so processes starting together do not race. A schema that is current needs no
    privilege beyond reading schema_migrations: a role that may only write orders starts too."""
    files = sorted(
        (f for f in resources.files("pipeline.migrations").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    versions = [f.name.removesuffix(".sql") for f in files]
    if not set(versions) - applied_migrations(conn):
        return []
    applied_now: list[str] = []
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {v for (v,) in cur.fetchall()}
            for f, version in zip(files, versions, strict=True):
                if version in done:
                    continue
                cur.execute(f.read_text())
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
    except psycopg2.errors.InsufficientPrivilege as e:
        pending = sorted(set(versions) - applied_migrations(conn))
        raise FatalError(f"the schema needs migrations {', '.join(pending)} and this role may not change it "
                         f"({_first_line(e)}): run `food-orders migrate` on the database host, as the "
                         "schema's owner") from e
    if applied_now:
        logger.info("applied migrations {}", ", ".join(applied_now))
    return applied_now


def applied_migrations(conn: psycopg2.extensions.connection) -> set[str]:
    """The versions recorded in schema_migrations (none when the table does not exist yet)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return set()
        cur.execute("SELECT version FROM schema_migrations")
        return {v for (v,) in cur.fetchall()}


def create_database(url: str, name: str) -> str:
    """Create an empty database `name` owned by the user of `url` (needs CREATEDB); returns its URL."""
    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _is_row_error(e: psycopg2.Error) -> bool:
    return e.pgcode is not None and e.pgcode[:2] in _ROW_CLASSES


def _translate(e: psycopg2.Error) -> Exception:
    if e.pgcode is None or e.pgcode[:2] in _RETRYABLE_CLASSES:
        # No SQLSTATE means the connection itself failed (server gone, network).
        return DatabaseUnavailable(f"PostgreSQL unavailable: {e.pgcode or ''} {_first_line(e)}".strip())
    return FatalError(f"PostgreSQL error {e.pgcode}: {_first_line(e)}")


def _connect_failure(e: BaseException) -> str:
    """libpq's whole message on one line (it names the server, then the reason)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
