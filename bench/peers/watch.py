"""When a drain's first row, and its last, became visible in PostgreSQL (committed), whatever the sink.

`processed_at` (the `now()` of the writing transaction) is no common clock for every sink: it is when a
transaction *started*, and a sink may keep one open long before it writes (Quix Streams' PostgreSQL
sink begins one at connect time and commits it with its first batch). So a thread asks the database
itself, every `every` seconds, with queries that cost an index lookup at most:

- first row: `EXISTS (SELECT 1 FROM orders)`, then how many rows that first commit brought;
- last row: every sink writes a partition in offset order, so when the order at the end of each
  partition is visible, all are. `order_id = ANY(the last order id of each partition)`, by primary key.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2


@dataclass
class Sighting:
    """A moment, on both clocks the harness uses (unix seconds for rows, monotonic for CPU samples)."""

    wall: float
    mono: float

    @classmethod
    def now(cls) -> Sighting:
        return cls(time.time(), time.monotonic())


class RowWatcher:
    """Watches `orders` of the database `url()` returns (None: not created yet) until `last_ids` are in."""

    def __init__(self, url: Callable[[], str | None], last_ids: tuple[str, ...], every: float = 0.02) -> None:
        self._url = url
        self._last_ids = list(last_ids)
        self._every = every
        self.first: Sighting | None = None
        self.rows_at_first = 0
        self.last: Sighting | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="row-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_last(self, timeout: float) -> Sighting | None:
        """The last row's sighting, waiting up to `timeout` for it (the row counter may be ahead of us)."""
        self._thread.join(timeout)
        return self.last

    def _loop(self) -> None:
        conn = None
        try:
            while not self._stop.is_set() and self.last is None:
                url = self._url()
                if url is not None and conn is None:
                    with contextlib.suppress(psycopg2.OperationalError):
                        conn = psycopg2.connect(url, application_name="bench-row-watcher", connect_timeout=5)
                        conn.autocommit = True
                if conn is not None:
                    with contextlib.suppress(psycopg2.errors.UndefinedTable):  # not migrated yet
                        self._look(conn)
                self._stop.wait(self._every)
        except psycopg2.Error as e:
            self.error = f"row watcher: {e}".strip()
        finally:
            if conn is not None:
                conn.close()

    def _look(self, conn: psycopg2.extensions.connection) -> None:
        with conn.cursor() as cur:
            if self.first is None:
                cur.execute("SELECT EXISTS (SELECT 1 FROM orders)")
                seen = cur.fetchone()
                if not seen or not seen[0]:
                    return
                sighting = Sighting.now()
                cur.execute("SELECT count(*) FROM orders")
                counted = cur.fetchone()
                self.first, self.rows_at_first = sighting, int(counted[0]) if counted else 0
            cur.execute("SELECT count(*) FROM orders WHERE order_id = ANY(%s)", (self._last_ids,))
            found = cur.fetchone()
            if found and int(found[0]) == len(self._last_ids):
                self.last = Sighting.now()
