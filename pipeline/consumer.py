"""The consumer process: `python -m pipeline.consumer` (supervisord's `[program:consumer]`).

The loop itself is `pipeline.consumer_loop.ConsumerLoop`; this module builds its Kafka client (the
`KafkaSource` adapter over confluent-kafka), its store and its DLQ, and runs it until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from loguru import logger

from pipeline import runtime
from pipeline.commits import CommitPolicy
from pipeline.consumer_loop import ConsumerLoop, LoopPolicy, RebalanceListener
from pipeline.dlq import DeadLetterQueue
from pipeline.errors import CommitNotSent, FatalError
from pipeline.kafka_admin import ensure_topics
from pipeline.logs import KafkaErrorLog, kafka_logger, process_name
from pipeline.metrics import ConsumerMetrics, usable_dir
from pipeline.offsets import TP
from pipeline.settings import Settings
from pipeline.store import OrderStore


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
        # Prefetch a few batches, not librdkafka's 100,000 messages per partition (up to 64 MB):
        # enough to keep the loop fed, and the process stays well under 100 MB.
        "queued.min.messages": 20_000,
        "queued.max.messages.kbytes": 4_096,
        # ...and fetch again soon once the loop has taken some (librdkafka waits a whole second).
        "fetch.queue.backoff.ms": 20,
    }
    if settings.consumer_instance_id:
        # Static membership: a restart within session.timeout.ms gets the same partitions, no rebalance.
        config["group.instance.id"] = settings.consumer_instance_id
    return config


class KafkaConsumer:
    """confluent_kafka.Consumer as the loop's `KafkaSource`: error events logged (rate-limited) and
    kept out of the records, commit answers and rebalances passed on as (topic, partition) pairs."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._topic = settings.kafka_topic
        self._instance_id = settings.consumer_instance_id
        self._errors = KafkaErrorLog()
        self._fenced: str | None = None
        self._listener: RebalanceListener | None = None
        config = {**consumer_config(settings, client_id), "on_commit": self._on_commit, "error_cb": self._errors}
        self._consumer = Consumer(config, logger=kafka_logger())

    def subscribe(self, listener: RebalanceListener) -> None:
        self._listener = listener

        def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            consumer.incremental_assign(partitions)
            listener.assigned(_pairs(partitions))

        self._consumer.subscribe([self._topic], on_assign=on_assign,
                                 on_revoke=lambda _c, partitions: listener.revoked(_pairs(partitions)),
                                 on_lost=lambda _c, partitions: listener.lost(_pairs(partitions)))

    def consume(self, max_messages: int, timeout: float) -> list[Message[bytes, bytes]]:
        return self._without_errors(self._consumer.consume(max_messages, timeout))

    def poll(self, timeout: float) -> Message[bytes, bytes] | None:
        msg = self._consumer.poll(timeout)
        return None if msg is None or not self._without_errors([msg]) else msg

    def assignment(self) -> list[TP]:
        return _pairs(self._consumer.assignment())

    def pause(self, partitions: list[TP]) -> None:
        self._flow("pause", partitions)

    def resume(self, partitions: list[TP]) -> None:
        self._flow("resume", partitions)

    def _flow(self, action: str, partitions: list[TP]) -> None:
        """pause()/resume() run inside rebalance callbacks too, where an exception would escape consume();
        a partition that just went away is harmless to skip: the loop pauses or resumes on its next step."""
        try:
            getattr(self._consumer, action)([TopicPartition(t, p) for t, p in partitions])
        except KafkaException as e:
            logger.warning("{} of {} partition(s) refused: {}", action, len(partitions), e.args[0].str())

    def commit_async(self, offsets: dict[TP, int]) -> None:
        try:
            self._consumer.commit(offsets=_tps(offsets), asynchronous=True)
        except KafkaException as e:
            raise CommitNotSent(e.args[0].str()) from e

    def commit_sync(self, offsets: dict[TP, int]) -> dict[TP, int]:
        try:
            result = self._consumer.commit(offsets=_tps(offsets), asynchronous=False)
        except KafkaException as e:
            raise CommitNotSent(e.args[0].str()) from e
        return {(tp.topic, tp.partition): tp.offset for tp in result or [] if tp.error is None}

    def fatal_error(self) -> str | None:
        return self._fenced or self._errors.fatal

    def close(self) -> None:
        self._consumer.close()

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if self._listener is None:
            return
        if err is None:
            self._listener.committed({(tp.topic, tp.partition): tp.offset for tp in partitions if tp.error is None},
                                     None)
        elif err.code() == KafkaError.FENCED_INSTANCE_ID:
            self._fenced = (f"the group coordinator fenced group.instance.id {self._instance_id} (FENCED_INSTANCE_ID "
                            "on an offset commit): another process uses that id, or the coordinator restarted "
                            "and this member's session is gone; exiting so supervisord starts it with a new "
                            "session (uncommitted batches are redelivered, nothing is lost)")
        elif err.code() != KafkaError._NO_OFFSET:
            self._listener.committed({}, err.str())

    def _without_errors(self, messages: Sequence[Message[bytes, bytes]]) -> list[Message[bytes, bytes]]:
        """The messages; error events go to the same rate-limited log as the client's error_cb."""
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            else:
                self._errors(err)
                if self._errors.fatal:
                    raise FatalError(self._errors.fatal)
        return good


def _pairs(partitions: list[TopicPartition]) -> list[TP]:
    return [(tp.topic, tp.partition) for tp in partitions]


def _tps(offsets: dict[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def prepare(settings: Settings, store: OrderStore) -> None:
    """Schema migrated and topics present; raises RetryableError while either is unavailable."""
    store.migrate()
    ensure_topics(settings)


def main() -> int:
    settings = runtime.settings_and_logging("consumer")
    if settings is None:
        return 2
    client_id = settings.client_id()
    store = OrderStore(settings.database_url, client_id)
    policy = LoopPolicy(settings.consumer_batch_size, settings.consumer_batch_timeout_ms / 1000)
    metrics = ConsumerMetrics(process_name("consumer")) if usable_dir(settings, "consumer") else None
    loop: ConsumerLoop | None = None
    stop_requested = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        logger.info("{} received: finishing the current batch", signal.Signals(signum).name)
        stop_requested = True
        if loop is not None:
            loop.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("starting: client.id {}, group {}, instance {}, topic {}", client_id,
                settings.consumer_group_id, settings.consumer_instance_id or "(dynamic)", settings.kafka_topic)
    try:
        if not runtime.retry(lambda: prepare(settings, store), lambda: stop_requested):
            return 0
        # The Kafka clients are made only now that the broker has answered: librdkafka reads the CA file
        # once, so one made while TLS failed (a CA being replaced) would keep failing for good.
        loop = ConsumerLoop(KafkaConsumer(settings, client_id), store, DeadLetterQueue(settings, client_id), policy,
                            CommitPolicy(every=settings.consumer_commit_interval_ms / 1000), metrics=metrics)
        loop.stopping = stop_requested
        loop.run()
    except FatalError as e:
        logger.error("fatal: {}", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
