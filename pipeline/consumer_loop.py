"""The consumer loop, one step at a time, with Kafka, PostgreSQL and the DLQ behind small interfaces.

Each batch goes through the same numbered steps, so offsets never run ahead of the database:
  1. consume a batch (up to the batch size, or the first message within the batch timeout)
  2. decode + validate (pure)
  3. write the valid orders in one PostgreSQL transaction
  4. send invalid ones, conflicts and rows PostgreSQL refused to the DLQ, and wait for delivery
  5. commit the batch's offsets
A retryable failure in 3-5 keeps the batch, pauses the assignment (polling goes on, so the group
membership holds), backs off and retries; nothing is committed meanwhile.

While PostgreSQL works on batch k (step 3 runs on a writer thread; psycopg2 releases the GIL while it
waits for the server), the loop already consumes, decodes and encodes batch k+1 for the store. Only
that pure work overlaps: batch k+1's write, dead letters and commit still come strictly after k's.

`pipeline.consumer` wires it to confluent-kafka, `OrderStore` and `DeadLetterQueue`; the unit tests
wire it to in-memory fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from loguru import logger

from pipeline import faults
from pipeline.batch import Batch, DeadLetter, KafkaRecord, OrderRow, WriteResult, decode_batch
from pipeline.commits import CommitPolicy, Commits, OffsetCommitter
from pipeline.errors import DatabaseUnavailable, FatalError, RetryableError
from pipeline.offsets import TP
from pipeline.runtime import BACKOFF_MAX, BACKOFF_START

STATS_EVERY = 10.0
DEFAULT_COMMITS = CommitPolicy()


class RebalanceListener(Protocol):
    """What the Kafka side reports to the loop, from inside `consume`/`poll` (and `close`)."""

    def assigned(self, partitions: list[TP]) -> None: ...
    def revoked(self, partitions: list[TP]) -> None: ...
    def lost(self, partitions: list[TP]) -> None: ...
    def committed(self, stored: dict[TP, int], refusal: str | None) -> None: ...


class KafkaSource(OffsetCommitter, Protocol):
    """The group consumer as the loop sees it. `consume` and `poll` return records only (error events
    are the adapter's to log) and run the listener's callbacks; partitions are added to the assignment
    before `assigned` is called. Raises FatalError on a fatal client error."""

    def subscribe(self, listener: RebalanceListener) -> None: ...
    def consume(self, max_messages: int, timeout: float) -> Sequence[KafkaRecord]: ...
    def poll(self, timeout: float) -> KafkaRecord | None: ...
    def assignment(self) -> list[TP]: ...
    def pause(self, partitions: list[TP]) -> None: ...
    def resume(self, partitions: list[TP]) -> None: ...
    def fatal_error(self) -> str | None:
        """Set by a client callback (fatal error, fenced instance): the loop stops with it."""
    def close(self) -> None: ...


class OrderSink(Protocol):
    """Where valid orders go (`OrderStore`)."""

    def encode(self, rows: Sequence[OrderRow]) -> bytes:
        """The rows in the sink's wire form, for `write` (pure CPU, no I/O)."""
    def write(self, rows: Sequence[OrderRow], encoded: bytes | None = None) -> WriteResult:
        """One transaction; raises DatabaseUnavailable (a RetryableError) when nothing was committed."""
    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    """Where rejected records go (`DeadLetterQueue`)."""

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Returns once every letter is confirmed; raises DeliveryFailed (a RetryableError) otherwise."""
    def close(self) -> None: ...


class LoopMetrics(Protocol):
    """What the loop reports as it goes (`pipeline.metrics.ConsumerMetrics`): once per batch, never per order."""

    def batch_done(self, batch: Batch, result: WriteResult, letters: Sequence[DeadLetter],
                   write_seconds: float) -> None: ...
    def degraded(self, dependency: str | None) -> None:
        """The dependency that is down now ("postgresql", "kafka"), None once all are back."""
    def retried(self, dependency: str) -> None: ...
    def rebalanced(self, kind: str, partitions: int, assigned: int) -> None:
        """`partitions` were assigned/revoked/lost; `assigned` is how many the loop owns now."""


class NoMetrics:
    """LoopMetrics that records nothing (metrics off, unit tests)."""

    def batch_done(self, batch: Batch, result: WriteResult, letters: Sequence[DeadLetter],
                   write_seconds: float) -> None:
        pass

    def degraded(self, dependency: str | None) -> None:
        pass

    def retried(self, dependency: str) -> None:
        pass

    def rebalanced(self, kind: str, partitions: int, assigned: int) -> None:
        pass


def dependency_of(error: RetryableError) -> str:
    """Which dependency a retryable failure is about, as the metrics name it."""
    return "postgresql" if isinstance(error, DatabaseUnavailable) else "kafka"


@dataclass(frozen=True, slots=True)
class LoopPolicy:
    """Batching and retry timing of the loop."""

    batch_size: int
    batch_timeout: float  # seconds to wait for the first message of a batch
    read_ahead: bool = True  # consume + decode the next batch while PostgreSQL writes this one
    backoff_start: float = BACKOFF_START
    backoff_max: float = BACKOFF_MAX

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_timeout < 0 or not 0 < self.backoff_start <= self.backoff_max:
            raise ValueError(f"invalid loop policy: {self}")


class ConsumerLoop:
    """One member of the consumer group writing orders to the store. `run_once` is one step."""

    def __init__(self, kafka: KafkaSource, store: OrderSink, dlq: DeadLetterSink, policy: LoopPolicy,
                 commit_policy: CommitPolicy = DEFAULT_COMMITS, clock: Callable[[], float] = time.monotonic,
                 fault: Callable[[str], None] = faults.point, metrics: LoopMetrics | None = None,
                 writer: Executor | None = None) -> None:
        self.kafka = kafka
        self.store = store
        self.dlq = dlq
        self.policy = policy
        self.commits = Commits(kafka, commit_policy, clock)
        self._clock = clock
        self._fault = fault
        self.metrics: LoopMetrics = metrics or NoMetrics()
        self.stopping = False
        self.degraded = False  # a dependency is down: the assignment is paused
        self.pending: Batch | None = None  # consumed, not yet fully processed
        self.ahead: Batch | None = None  # the next batch, consumed while `pending` was being written
        # Where step 3 runs while the next batch is read (a thread; the unit tests pass a stepped executor).
        self._writer = (writer or ThreadPoolExecutor(1, thread_name_prefix="writer")) if policy.read_ahead else None
        self._backoff = policy.backoff_start
        self.totals = {"batches": 0, "inserted": 0, "duplicates": 0, "dead": 0}
        self._last_stats = clock()

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Subscribe, step until a stop is requested, then finish: commit, close."""
        self.kafka.subscribe(self)
        while not self.stopping:
            self.run_once()
        self.shutdown()

    def run_once(self) -> None:
        """One step: consume a batch if none is pending, then write, dead-letter and commit it. A
        retryable failure keeps the batch and polls paused for the current backoff instead."""
        fatal = self.kafka.fatal_error()
        if fatal:
            raise FatalError(fatal)
        if self.pending is None:
            batch = self.ahead or self._consume_batch()  # steps 1 + 2
            self.ahead = None
            if not len(batch):
                self.commits.resend_if_due()
                self._log_stats()
                return
            self.pending = batch
        try:
            self._process(self.pending)  # steps 3-5
        except RetryableError as e:
            self._keep_ahead()
            self._degrade(e)
            self._backoff = min(self._backoff * 2, self.policy.backoff_max)
            return
        self.pending = None
        self._backoff = self.policy.backoff_start
        if self.degraded:
            self._recover()
        self._log_stats()

    def _consume_batch(self) -> Batch:
        """What the client has already fetched, up to the batch size; when nothing is there, wait up to
        the batch timeout for the first message only. Full batches under load, no timer at low rates."""
        size = self.policy.batch_size
        records = self.kafka.consume(size, 0)
        if not records:
            first = self.kafka.poll(self.policy.batch_timeout)
            records = [first, *self.kafka.consume(size - 1, 0)] if first is not None else []
        return self._owned(records)

    def _owned(self, records: Sequence[KafkaRecord]) -> Batch:
        """Decoded, keeping only partitions still ours: a rebalance callback can run inside consume()."""
        owned = self.commits.offsets.owned
        return decode_batch([r for r in records if (r.topic(), r.partition()) in owned])

    def _write(self, batch: Batch) -> tuple[WriteResult, float]:
        """Step 3. With read-ahead, the next batch is consumed and decoded while PostgreSQL works."""
        def timed() -> tuple[WriteResult, float]:
            started = time.perf_counter()
            result = self.store.write(batch.rows, batch.encoded)
            return result, time.perf_counter() - started

        if self._writer is None or self.stopping:
            return timed()
        written = self._writer.submit(timed)
        records: list[KafkaRecord] = []
        size = self.policy.batch_size
        while not written.done() and len(records) < size and not self.stopping:
            records.extend(self.kafka.consume(size - len(records), 0.002))
        if records:
            ahead = self._owned(records)
            ahead.encoded = self.store.encode(ahead.rows)
            self.ahead = ahead
        return written.result()

    def _keep_ahead(self) -> None:
        """The write failed: what was read ahead joins the kept batch (nothing read is dropped)."""
        if self.ahead is not None and self.pending is not None:
            self.pending = decode_batch([*self.pending.messages, *self.ahead.messages])
        self.ahead = None

    def _process(self, batch: Batch) -> None:
        result, write_seconds = self._write(batch)  # 3
        self._fault("after_db_commit")
        letters = batch.dead_letters(result.rejected)
        self.dlq.send(letters)  # 4
        self._fault("after_dlq")
        self.commits.batch_done(batch.next_offsets)  # 5 (asynchronous: the answer arrives in committed)
        self.totals["batches"] += 1
        self.totals["inserted"] += result.inserted
        self.totals["duplicates"] += result.duplicates
        self.totals["dead"] += len(letters)
        self.metrics.batch_done(batch, result, letters, write_seconds)

    # -- degraded mode: a dependency is down ---------------------------------------------------

    def _degrade(self, error: RetryableError) -> None:
        assignment = self.kafka.assignment()
        self.metrics.degraded(dependency_of(error))
        self.metrics.retried(dependency_of(error))
        if not self.degraded:
            logger.warning("{}; pausing {} partition(s), keeping the batch of {}, retrying with backoff",
                           error, len(assignment), len(self.pending or []))
            self.degraded = True
        else:
            logger.info("still unavailable ({}); next retry in {:.1f}s", error, self._backoff)
        self.kafka.pause(assignment)
        self._poll_paused(self._backoff)

    def _poll_paused(self, seconds: float) -> None:
        """Keep polling while paused so the group membership holds; keep anything that still arrives."""
        deadline = self._clock() + seconds
        while not self.stopping and self._clock() < deadline:
            late = self.kafka.consume(self.policy.batch_size, min(0.5, max(0.0, deadline - self._clock())))
            if late and self.pending is not None:
                self.pending = decode_batch([*self.pending.messages, *late])

    def _recover(self) -> None:
        self.degraded = False
        self.metrics.degraded(None)
        assignment = self.kafka.assignment()
        self.kafka.resume(assignment)
        logger.info("dependency back; resumed {} partition(s)", len(assignment))

    # -- what the Kafka side reports (runs inside consume()) -------------------------------------

    def assigned(self, partitions: list[TP]) -> None:
        self.commits.offsets.assigned(partitions)
        # The client keeps a partition's pause across unassign/assign: one lost while paused and
        # handed back must follow the current mode, not the old one.
        if self.degraded:
            self.kafka.pause(partitions)
        elif partitions:
            self.kafka.resume(partitions)
        self.metrics.rebalanced("assigned", len(partitions), len(self.commits.offsets.owned))
        logger.info("assigned {}", _names(partitions) or "nothing new")

    def revoked(self, partitions: list[TP]) -> None:
        gone = set(partitions)
        self.commits.commit_now(gone)  # what we wrote must be committed before the next owner starts
        self._forget(gone)
        self.metrics.rebalanced("revoked", len(partitions), len(self.commits.offsets.owned))
        logger.info("revoked {}", _names(partitions))

    def lost(self, partitions: list[TP]) -> None:
        self._forget(set(partitions))
        self.metrics.rebalanced("lost", len(partitions), len(self.commits.offsets.owned))
        logger.warning("lost {} (session timed out); the new owner redoes uncommitted work", _names(partitions))

    def committed(self, stored: dict[TP, int], refusal: str | None) -> None:
        self.commits.answered(stored, refusal)

    def _forget(self, gone: set[TP]) -> None:
        self.commits.offsets.forget(gone)
        if self.pending is not None:
            self.pending = self.pending.without_partitions(gone)

    # -- stats and shutdown ---------------------------------------------------------------------

    def _log_stats(self) -> None:
        now = self._clock()
        if now - self._last_stats >= STATS_EVERY:
            logger.info("batches {batches}, orders inserted {inserted}, redelivered {duplicates}, "
                        "dead-lettered {dead}", **self.totals)
            self._last_stats = now

    def shutdown(self) -> None:
        """Commit what is done, close the clients. A pending batch stays uncommitted (redelivered)."""
        unwritten = len(self.pending or []) + len(self.ahead or [])
        if unwritten:
            logger.warning("stopping with {} unwritten message(s); they stay uncommitted and are redelivered",
                           unwritten)
        if self._writer is not None:
            self._writer.shutdown()
        self.commits.commit_now()
        self.kafka.close()
        self.dlq.close()
        self.store.close()
        logger.info("stopped: batches {batches}, inserted {inserted}, redelivered {duplicates}, "
                    "dead-lettered {dead}", **self.totals)


def _names(partitions: list[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in partitions)
