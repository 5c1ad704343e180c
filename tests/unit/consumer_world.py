"""An in-memory world for the consumer loop: a broker with partitions and committed offsets, a fake
consumer that keeps pauses across reassignment like librdkafka, a store that dedupes and can be down
or refuse rows, a DLQ that can be down, and a fake clock (tests/unit/test_consumer_loop.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.batch import DeadLetter, OrderRow, WriteResult
from pipeline.commits import CommitPolicy
from pipeline.consumer_loop import ConsumerLoop, LoopPolicy, RebalanceListener
from pipeline.errors import CommitNotSent, DatabaseUnavailable, DeliveryFailed
from pipeline.mockdata import OrderGenerator, new_order_id
from pipeline.offsets import TP
from pipeline.orders import CONFLICT, DB_REJECTED, Order, Rejection, encode_order
from tests.unit.test_batch import FakeRecord

TOPIC = "orders"
P0, P1, P2 = (TOPIC, 0), (TOPIC, 1), (TOPIC, 2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Broker:
    """What outlives a consumer process: the partitions' logs and the group's committed offsets."""

    logs: dict[TP, list[FakeRecord]] = field(default_factory=lambda: {P0: [], P1: [], P2: []})
    committed: dict[TP, int] = field(default_factory=dict)
    journal: list[str] = field(default_factory=list)  # store, DLQ and commit calls, in order

    def append(self, tp: TP, key: bytes | None, value: bytes | None,
               headers: list[tuple[str, str | bytes | None]] | None = None) -> FakeRecord:
        record = FakeRecord(tp[0], tp[1], len(self.logs[tp]), key, value, headers)
        self.logs[tp].append(record)
        return record

    def end_offsets(self) -> dict[TP, int]:
        return {tp: len(log) for tp, log in self.logs.items() if log}


class SteppedWriter(Executor):
    """The loop's writer thread, made deterministic: a submitted write runs during the next consume()
    (after its fetch), as a real write overlaps the reading of the next batch."""

    def __init__(self) -> None:
        self.queued: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.queued.append((future, lambda: fn(*args, **kwargs)))
        return future

    def run_queued(self) -> None:
        queued, self.queued = self.queued, []
        for future, call in queued:
            try:
                future.set_result(call())
            except BaseException as e:  # noqa: BLE001 - handed to the loop, as a thread's future would
                future.set_exception(e)


class FakeKafka:
    """A group consumer on a `Broker`. Rebalances queued with `assign`/`revoke`/`lose` run inside the next
    consume() (before its fetch, or after it with `after_fetch`, as when records were already buffered).
    Asynchronous commits are answered at the next consume(). Like librdkafka, a pause survives unassign
    and assign. The clock moves by the timeout when consume() finds nothing."""

    def __init__(self, broker: Broker, clock: Clock, writer: SteppedWriter | None = None) -> None:
        self.broker = broker
        self.clock = clock
        self.writer = writer
        self.listener: RebalanceListener | None = None
        self.owned: list[TP] = []
        self.position: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.events: list[tuple[bool, Callable[[], None]]] = []
        self.answers: list[dict[TP, int]] = []
        self.refusal: str | None = None  # the broker refuses asynchronous commits with this reason
        self.unreachable = False  # commits cannot be sent at all
        self.fatal: str | None = None
        self.consumed_while_paused = 0
        self.closed = False

    # -- what tests do to it --
    def assign(self, *tps: TP, after_fetch: bool = False) -> None:
        def run() -> None:
            self.owned += tps
            self.position.update({tp: self.broker.committed.get(tp, 0) for tp in tps})
            assert self.listener is not None
            self.listener.assigned(list(tps))
        self.events.append((after_fetch, run))

    def revoke(self, *tps: TP, after_fetch: bool = False) -> None:
        self.events.append((after_fetch, lambda: self._remove(tps, lost=False)))

    def lose(self, *tps: TP, after_fetch: bool = False) -> None:
        self.events.append((after_fetch, lambda: self._remove(tps, lost=True)))

    def _remove(self, tps: Sequence[TP], lost: bool) -> None:
        assert self.listener is not None
        (self.listener.lost if lost else self.listener.revoked)(list(tps))
        self.owned = [tp for tp in self.owned if tp not in tps]

    def _run_events(self, after_fetch: bool) -> None:
        due = [run for after, run in self.events if after == after_fetch]
        self.events = [(after, run) for after, run in self.events if after != after_fetch]
        for run in due:
            run()

    # -- KafkaSource --
    def subscribe(self, listener: RebalanceListener) -> None:
        self.listener = listener

    def consume(self, max_messages: int, timeout: float) -> list[FakeRecord]:
        assert self.listener is not None and not self.closed
        for stored in self.answers:
            self.broker.committed.update(stored)
            self.listener.committed(stored, None)
        self.answers = []
        self._run_events(after_fetch=False)
        records: list[FakeRecord] = []
        for tp in self.owned:
            if tp in self.paused:
                continue
            take = self.broker.logs[tp][self.position[tp]:self.position[tp] + max_messages - len(records)]
            self.position[tp] += len(take)
            records += take
        if self.paused and set(self.owned) <= self.paused:
            self.consumed_while_paused += 1
        self._run_events(after_fetch=True)
        if self.writer is not None:
            self.writer.run_queued()
        if not records:
            self.clock.now += timeout
        return records

    def poll(self, timeout: float) -> FakeRecord | None:
        records = self.consume(1, timeout)
        return records[0] if records else None

    def assignment(self) -> list[TP]:
        return list(self.owned)

    def pause(self, partitions: list[TP]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: list[TP]) -> None:
        self.paused.difference_update(partitions)

    def commit_async(self, offsets: dict[TP, int]) -> None:
        if self.unreachable:
            raise CommitNotSent("no coordinator")
        self.broker.journal.append(f"commit {sorted(offsets.items())}")
        if self.refusal is not None:
            assert self.listener is not None
            self.listener.committed({}, self.refusal)
        else:
            self.answers.append(dict(offsets))

    def commit_sync(self, offsets: dict[TP, int]) -> dict[TP, int]:
        if self.unreachable:
            raise CommitNotSent("no coordinator")
        self.broker.journal.append(f"commit sync {sorted(offsets.items())}")
        self.broker.committed.update(offsets)
        return dict(offsets)

    def fatal_error(self) -> str | None:
        return self.fatal

    def close(self) -> None:
        # No revoke callback: a static member keeps its partitions, so the loop commits before closing.
        self.closed = True


class FakeStore:
    """PostgreSQL as the loop sees it: an order id is stored once, the same content again is a redelivery,
    other content a conflict; `refuse` holds order ids the database itself refuses; `down` fails all."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.orders: dict[str, Order] = {}
        self.down = False
        self.refuse: set[str] = set()
        self.closed = False

    def encode(self, rows: Sequence[OrderRow]) -> bytes:
        return ",".join(r.order.order_id for r in rows).encode()

    def write(self, rows: Sequence[OrderRow], encoded: bytes | None = None) -> WriteResult:
        if encoded is not None:
            assert encoded == self.encode(rows), "an encoding made for other rows"
            self.broker.journal.append("(encoded ahead)")
        if self.down:
            raise DatabaseUnavailable("PostgreSQL unavailable: connection refused")
        self.broker.journal.append(f"write {len(rows)}")
        result = WriteResult()
        for row in rows:
            stored = self.orders.get(row.order.order_id)
            if row.order.order_id in self.refuse:
                result.rejected.append((row, Rejection(DB_REJECTED, "22021: invalid byte sequence")))
            elif stored is None:
                self.orders[row.order.order_id] = row.order
                result.inserted += 1
            elif stored == row.order:
                result.duplicates += 1
            else:
                result.rejected.append((row, Rejection(CONFLICT, "stored with different content")))
        return result

    def close(self) -> None:
        self.closed = True


class FakeDlq:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.letters: list[DeadLetter] = []
        self.down = False
        self.closed = False

    def send(self, letters: Sequence[DeadLetter]) -> None:
        if self.down:
            raise DeliveryFailed("DLQ delivery failed for 1 message(s): broker down")
        self.broker.journal.append(f"dlq {len(letters)}")
        self.letters += letters

    def close(self) -> None:
        self.closed = True


class Crash(BaseException):
    """PIPELINE_FAULT's os._exit: nothing after the fault point runs, no cleanup."""


@dataclass
class World:
    """One consumer process (loop + fakes) on a broker and a database that outlive it."""

    broker: Broker = field(default_factory=Broker)
    clock: Clock = field(default_factory=Clock)
    crash_at: str | None = None
    gen: OrderGenerator = field(default_factory=lambda: OrderGenerator(5))
    read_ahead: bool = False  # the loop's read-ahead, with a SteppedWriter

    def __post_init__(self) -> None:
        self.store = FakeStore(self.broker)
        self.start()

    def start(self, batch_size: int = 10, commit_every: float = 0.0) -> None:
        """A new process: fresh client, loop and DLQ producer; the same broker and database."""
        self.writer = SteppedWriter() if self.read_ahead else None
        self.kafka = FakeKafka(self.broker, self.clock, self.writer)
        self.dlq = FakeDlq(self.broker)
        self.loop = ConsumerLoop(self.kafka, self.store, self.dlq,
                                 LoopPolicy(batch_size, 0.1, read_ahead=self.read_ahead),
                                 CommitPolicy(resend_every=1.0, every=commit_every), self.clock, self._fault,
                                 writer=self.writer)
        self.kafka.subscribe(self.loop)

    def _fault(self, point: str) -> None:
        if point == self.crash_at:
            raise Crash(point)

    def produce(self, tp: TP, n: int = 1) -> list[Order]:
        orders = [self.gen.next_order(new_order_id(), datetime.now(UTC)) for _ in range(n)]
        for order in orders:
            self.broker.append(tp, order.customer_id.encode(), encode_order(order))
        return orders

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.loop.run_once()

    def drain(self, limit: int = 100) -> None:
        """Step until every record is committed (answers arrive one consume() later)."""
        for _ in range(limit):
            if self.broker.committed == self.broker.end_offsets() and not self.kafka.answers:
                return
            self.loop.run_once()
        raise AssertionError(f"not drained: committed {self.broker.committed}, end {self.broker.end_offsets()}")
