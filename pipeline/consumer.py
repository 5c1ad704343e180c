"""The consumer process: `python -m pipeline.consumer` (supervisord's `[program:consumer]`).

Each batch goes through the same numbered steps, so offsets never run ahead of the database:
  1. consume a batch (up to CONSUMER_BATCH_SIZE messages or CONSUMER_BATCH_TIMEOUT_MS)
  2. decode + validate (pure)
  3. write the valid orders in one PostgreSQL transaction
  4. send invalid ones, conflicts and rows PostgreSQL refused to the DLQ, and wait for delivery
  5. commit the batch's offsets
A retryable failure in 3-5 keeps the batch, pauses the assignment (polling goes on, so the group
membership holds), backs off and retries; nothing is committed meanwhile.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from loguru import logger

from pipeline import faults, runtime
from pipeline.batch import Batch, DeadLetter, decode_batch
from pipeline.dlq import DeadLetterQueue
from pipeline.errors import FatalError, RetryableError
from pipeline.kafka_admin import ensure_topics
from pipeline.logs import KafkaErrorLog, kafka_logger
from pipeline.offsets import OffsetTracker
from pipeline.runtime import BACKOFF_MAX, BACKOFF_START
from pipeline.settings import Settings
from pipeline.store import OrderStore, WriteResult

STATS_EVERY = 10.0


def consumer_config(settings: Settings, client_id: str) -> dict[str, str | int | bool]:
    config: dict[str, str | int | bool] = {
        **settings.kafka_common(),
        "group.id": settings.consumer_group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.consumer_session_timeout_ms,
        # Frequent heartbeats: members learn of a rebalance sooner, so scaling settles faster.
        "heartbeat.interval.ms": 500,
        # Partitions added to the topic trigger a rebalance within seconds, not librdkafka's 5 minutes.
        "topic.metadata.refresh.interval.ms": 5_000,
    }
    if settings.consumer_instance_id:
        # Static membership: a restart within session.timeout.ms gets the same partitions, no rebalance.
        config["group.instance.id"] = settings.consumer_instance_id
    return config


class OrderConsumer:
    """One member of the consumer group writing orders to PostgreSQL."""

    def __init__(self, settings: Settings, store: OrderStore, dlq: DeadLetterQueue, client_id: str) -> None:
        self.settings = settings
        self.store = store
        self.dlq = dlq
        self.client_id = client_id
        self.kafka_errors = KafkaErrorLog()
        config = {**consumer_config(settings, client_id), "on_commit": self._on_commit, "error_cb": self.kafka_errors}
        self.kafka = Consumer(config, logger=kafka_logger())
        self.stopping = False
        self.degraded = False  # a dependency is down: the assignment is paused
        self.pending: Batch | None = None  # consumed, not yet fully processed
        self.offsets = OffsetTracker()
        self.fatal: str | None = None  # set by a callback, raised by the loop
        self._last_commit_try = 0.0
        self.totals = {"batches": 0, "inserted": 0, "duplicates": 0, "dead": 0}
        self._last_stats = time.monotonic()

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        self.kafka.subscribe([self.settings.kafka_topic], on_assign=self._on_assign,
                             on_revoke=self._on_revoke, on_lost=self._on_lost)
        backoff = BACKOFF_START
        while not self.stopping:
            if self.fatal or self.kafka_errors.fatal:
                raise FatalError(self.fatal or self.kafka_errors.fatal or "")
            if self.pending is None:
                self.pending = self._consume_batch()  # steps 1 + 2
                if not len(self.pending):
                    self.pending = None
                    self._retry_commit()
                    self._log_stats()
                    continue
            try:
                self._process(self.pending)  # steps 3-5
            except RetryableError as e:
                self._degrade(e, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self.pending = None
            backoff = BACKOFF_START
            if self.degraded:
                self._recover()
            self._log_stats()
        self._shutdown()

    def _consume_batch(self) -> Batch:
        """What the client has already fetched, up to the batch size; when nothing is there, wait up to
        the batch timeout for the first message only. Full batches under load, no timer at low rates."""
        size = self.settings.consumer_batch_size
        messages = self.kafka.consume(size, 0)
        if not messages:
            first = self.kafka.poll(self.settings.consumer_batch_timeout_ms / 1000)
            messages = [first, *self.kafka.consume(size - 1, 0)] if first is not None else []
        # A rebalance callback can run inside consume(): keep only partitions still ours.
        owned = self.offsets.owned
        return decode_batch([m for m in self._without_errors(messages) if (m.topic(), m.partition()) in owned])

    def _process(self, batch: Batch) -> None:
        result = self._write(batch)  # 3
        faults.point("after_db_commit")
        self._dead_letter(batch, result)  # 4
        faults.point("after_dlq")
        self.offsets.processed(batch.next_offsets)
        self._commit()  # 5 (asynchronous: the broker's answer arrives in _on_commit)
        self.totals["batches"] += 1
        self.totals["inserted"] += result.inserted
        self.totals["duplicates"] += result.duplicates
        self.totals["dead"] += len(batch.dead) + len(result.rejected)

    def _write(self, batch: Batch) -> WriteResult:
        return self.store.write(batch.rows)

    def _dead_letter(self, batch: Batch, result: WriteResult) -> None:
        """Invalid messages plus rows the store refused, each with its original key and value bytes."""
        originals = {(m.partition(), m.offset()): m for m in batch.messages} if result.rejected else {}
        refused = []
        for row, err in result.rejected:
            msg = originals[(row.partition, row.offset)]
            refused.append(DeadLetter(_bytes(msg.key()), _bytes(msg.value()), self.settings.kafka_topic,
                                      row.partition, row.offset, err.code, err.detail))
        self.dlq.send([*batch.dead, *refused])

    def _commit(self) -> None:
        """Send the offsets of everything written and dead-lettered; confirmations come in _on_commit."""
        offsets = self.offsets.to_commit()
        if not offsets:
            return
        self._last_commit_try = time.monotonic()
        try:
            self.kafka.commit(offsets=_tps(offsets), asynchronous=True)
        except KafkaException as e:  # e.g. no coordinator right now: the idle loop tries again
            logger.info("offset commit not sent ({}); retried shortly", e.args[0].str())

    def _commit_now(self, only: set[tuple[str, int]] | None = None) -> None:
        """Synchronous commit, before partitions are handed over and at shutdown."""
        offsets = self.offsets.to_commit(only)
        if not offsets:
            return
        try:
            result = self.kafka.commit(offsets=_tps(offsets), asynchronous=False)
        except KafkaException as e:
            logger.warning("commit failed ({}); the next owner redoes that work, the DB dedupes", e.args[0].str())
            return
        stored = {(tp.topic, tp.partition): tp.offset for tp in result or [] if tp.error is None}
        self.offsets.confirm(stored)
        logger.info("committed {}", {f"{t}[{p}]": o for (t, p), o in stored.items()})
        if len(stored) < len(offsets):
            logger.warning("commit refused for {} partition(s); the next owner redoes that work",
                           len(offsets) - len(stored))

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is None:
            self.offsets.confirm({(tp.topic, tp.partition): tp.offset for tp in partitions if tp.error is None})
        elif err.code() == KafkaError.FENCED_INSTANCE_ID:
            self.fatal = f"another process uses group.instance.id {self.settings.consumer_instance_id}"
        elif err.code() != KafkaError._NO_OFFSET:
            # Mid-rebalance refusals (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS...): sent again when idle.
            logger.info("offset commit refused ({}); retried shortly", err.str())

    def _retry_commit(self) -> None:
        """Offsets not yet confirmed, sent again while no new batch comes (at most once a second)."""
        if time.monotonic() - self._last_commit_try >= 1.0:
            self._commit()

    # -- degraded mode: a dependency is down ---------------------------------------------------

    def _degrade(self, error: RetryableError, backoff: float) -> None:
        assignment = self.kafka.assignment()
        if not self.degraded:
            logger.warning("{}; pausing {} partition(s), keeping the batch of {}, retrying with backoff",
                           error, len(assignment), len(self.pending or []))
            self.degraded = True
        else:
            logger.info("still unavailable ({}); next retry in {:.1f}s", error, backoff)
        self.kafka.pause(assignment)
        self._poll_paused(backoff)

    def _poll_paused(self, seconds: float) -> None:
        """Keep polling while paused so the group membership holds; keep anything that still arrives."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            messages = self.kafka.consume(self.settings.consumer_batch_size,
                                          min(0.5, max(0.0, deadline - time.monotonic())))
            late = self._without_errors(messages)
            if late and self.pending is not None:
                self.pending = decode_batch([*self.pending.messages, *late])

    def _recover(self) -> None:
        self.degraded = False
        assignment = self.kafka.assignment()
        self.kafka.resume(assignment)
        logger.info("dependency back; resumed {} partition(s)", len(assignment))

    # -- rebalance callbacks (run inside consume()) --------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        self.offsets.assigned((tp.topic, tp.partition) for tp in partitions)
        if self.degraded:
            consumer.pause(partitions)
        logger.info("assigned {}", _names(partitions) or "nothing new")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._commit_now(gone)  # what we wrote must be committed before the next owner starts
        self._forget(gone)
        logger.info("revoked {}", _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions})
        logger.warning("lost {} (session timed out); the new owner redoes uncommitted work", _names(partitions))

    def _forget(self, gone: set[tuple[str, int]]) -> None:
        self.offsets.forget(gone)
        if self.pending is not None:
            self.pending = self.pending.without_partitions(gone)

    # -- helpers --------------------------------------------------------------------------------

    def _without_errors(self, messages: Sequence[Message[bytes, bytes]]) -> list[Message[bytes, bytes]]:
        """The messages; error events go to the same rate-limited log as the client's error_cb."""
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            else:
                self.kafka_errors(err)
                if self.kafka_errors.fatal:
                    raise FatalError(self.kafka_errors.fatal)
        return good

    def _log_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats >= STATS_EVERY:
            logger.info("batches {batches}, orders inserted {inserted}, redelivered {duplicates}, "
                        "dead-lettered {dead}", **self.totals)
            self._last_stats = now

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("{} received: finishing the current batch", signal.Signals(signum).name)
        self.stopping = True

    def _shutdown(self) -> None:
        if self.pending is not None and len(self.pending):
            logger.warning("stopping with {} unwritten message(s); they stay uncommitted and are redelivered",
                           len(self.pending))
        self._commit_now()
        self.kafka.close()
        self.dlq.close()
        self.store.close()
        logger.info("stopped: batches {batches}, inserted {inserted}, redelivered {duplicates}, "
                    "dead-lettered {dead}", **self.totals)


def _tps(offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def _bytes(data: bytes | str | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def prepare(settings: Settings, store: OrderStore) -> None:
    """Schema migrated and topics present; raises RetryableError while either is unavailable."""
    store.migrate()
    ensure_topics(settings)


def main() -> int:
    settings = runtime.start("consumer")
    if settings is None:
        return 2
    client_id = settings.client_id()
    store = OrderStore(settings.database_url, client_id)
    consumer = OrderConsumer(settings, store, DeadLetterQueue(settings, client_id), client_id)
    signal.signal(signal.SIGTERM, consumer.stop)
    signal.signal(signal.SIGINT, consumer.stop)
    logger.info("starting: client.id {}, group {}, instance {}, topic {}", client_id,
                settings.consumer_group_id, settings.consumer_instance_id or "(dynamic)", settings.kafka_topic)
    try:
        if runtime.retry(lambda: prepare(settings, store), lambda: consumer.stopping):
            consumer.run()
        else:
            consumer.kafka.close()
    except FatalError as e:
        logger.error("fatal: {}", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
