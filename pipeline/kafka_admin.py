"""Kafka administration the pipeline needs: topics (create, grow), and group/lag descriptions."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions, NewTopic
from loguru import logger

from pipeline.errors import FatalError, RetryableError
from pipeline.logs import KafkaErrorLog, kafka_logger
from pipeline.settings import Settings

JAVA_TOOLS = Path(__file__).resolve().parent / "java"  # package data: the Admin-API helper
RETENTION_MS = str(7 * 24 * 3600 * 1000)
_NOT_READY = {KafkaError.INVALID_REPLICATION_FACTOR, KafkaError.NOT_CONTROLLER, KafkaError._TIMED_OUT,
              KafkaError.REQUEST_TIMED_OUT}


def admin_client(settings: Settings, errors: KafkaErrorLog | None = None) -> AdminClient:
    config: dict[str, Any] = {**settings.kafka_common(), "client.id": settings.client_id()}
    if errors is not None:
        config["error_cb"] = errors
    return AdminClient(config, logger=kafka_logger())


def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create the orders topic and its DLQ if missing (idempotent; safe from many processes at once)."""
    errors = KafkaErrorLog()
    admin = admin_client(settings, errors)
    wanted = [
        NewTopic(settings.kafka_topic, settings.kafka_partitions, settings.kafka_replication_factor,
                 config={"retention.ms": RETENTION_MS}),
        NewTopic(settings.kafka_dlq_topic, 1, settings.kafka_replication_factor,
                 config={"retention.ms": RETENTION_MS}),
    ]
    existing = _topics(admin, errors, timeout)
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout).items():
        try:
            future.result(timeout)
            logger.info("created topic {}", name)
        except TimeoutError as e:
            raise RetryableError(f"creating topic {name} timed out") from e
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if err.retriable() or err.code() in _NOT_READY:  # a broker still starting up
                raise RetryableError(f"cannot create topic {name} yet: {err.str()}") from e
            raise FatalError(f"cannot create topic {name}: {err.str()}") from e


def _topics(admin: AdminClient, errors: KafkaErrorLog, timeout: float) -> dict[str, Any]:
    """The cluster's topics. Asked in short rounds, so that refused credentials or ACLs end the wait
    at once (FatalError) instead of after the whole timeout; RetryableError when Kafka does not answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            topics: dict[str, Any] = admin.list_topics(timeout=min(2.0, timeout)).topics
            return topics
        except KafkaException as e:
            admin.poll(0)  # serve the error callbacks the failed request queued
            if errors.fatal:  # retrying cannot help
                raise FatalError(errors.fatal) from e
            if time.monotonic() >= deadline:
                raise RetryableError(f"Kafka unavailable while checking topics: {e}") from e


def topic_partition_count(settings: Settings, topic: str | None = None) -> int | None:
    """Partitions of the orders topic, or None when the topic does not exist or Kafka is down."""
    topic = topic or settings.kafka_topic
    try:
        md = admin_client(settings).list_topics(topic, timeout=5)
    except KafkaException:
        return None
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    return len(meta.partitions)


def grow_partitions(settings: Settings, count: int, topic: str | None = None) -> int:
    """Raise the partition count to `count`. Kafka cannot remove partitions: a decrease is refused."""
    topic = topic or settings.kafka_topic
    current = topic_partition_count(settings, topic)
    if current is None:
        raise FatalError(f"topic {topic} does not exist or Kafka is unreachable")
    if count < current:
        raise FatalError(
            f"topic {topic} has {current} partitions; Kafka cannot remove partitions (the data in them "
            "would be lost and key-to-partition mapping would break). Create a new topic instead."
        )
    if count == current:
        return current
    admin = admin_client(settings)
    for future in admin.create_partitions([NewPartitions(topic, count)]).values():
        future.result(30)
    logger.info("topic {} grown from {} to {} partitions", topic, current, count)
    return count


def after_scale(settings: Settings, kafka_lib: Path, stopped: list[str], consumers: int) -> list[str]:
    """What follows a scale of the consumers, for `bin/pipeline scale` and `supervisorctl scale` alike:
    the stopped processes' static members leave the group, and a warning if some consumers will idle.
    Returns the lines to show; never raises for Kafka being unreachable (then there is nothing to say)."""
    lines = [f"group: {line}" for line in release_static_members(settings, kafka_lib, stopped)]
    partitions = topic_partition_count(settings)
    if partitions is not None and consumers > partitions:
        lines.append(f"warning: {consumers} consumers but {settings.kafka_topic} has {partitions} partitions: "
                     f"{consumers - partitions} will idle. Add partitions: bin/pipeline topic partitions {consumers}")
    return lines


def release_static_members(settings: Settings, kafka_lib: Path, process_names: list[str]) -> list[str]:
    """Remove the static members of consumer processes stopped for good (a scale down) from the
    group, so their partitions move now rather than after the session timeout. Returns what happened,
    one line per member; never raises (the timeout still moves the partitions if this fails).

    Static members never leave on their own (that is what lets a restarted process keep its
    partitions) and confluent-kafka has no binding for the Admin call, so Kafka's Java Admin client
    does it, from the installed jars under `kafka_lib` (pipeline/java/RemoveStaticMembers.java)."""
    if not process_names:
        return []
    if dict(settings.kafka_security).get("security.protocol", "PLAINTEXT") != "PLAINTEXT":
        return ["static members not released (secured cluster): partitions move after the session timeout"]
    host = socket.gethostname()
    wanted = {f"{host}-{name}" for name in process_names}
    present = sorted(wanted & _static_members(settings))
    if not present:  # Kafka unreachable, or their sessions already ended
        return []
    cmd = ["java", "-Xmx128m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
           f"-Dlog4j.configuration=file:{JAVA_TOOLS / 'tools-log4j.properties'}",
           "-cp", f"{kafka_lib}/*", str(JAVA_TOOLS / "RemoveStaticMembers.java"),
           settings.kafka_bootstrap_servers, settings.consumer_group_id,
           *present]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [f"static members not released ({e}): partitions move after the session timeout"]
    return [line for line in out.stdout.splitlines() if line.strip()] or [out.stderr.strip()[-300:]]


def _static_members(settings: Settings) -> set[str]:
    """group.instance.ids currently in the consumer group; empty when Kafka cannot be reached quickly."""
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        admin = admin_client(settings)  # keep a reference: a collected client never completes its futures
        desc = admin.describe_consumer_groups(
            [settings.consumer_group_id], request_timeout=5)[settings.consumer_group_id].result(10)
    except (OSError, ValueError, KafkaException, TimeoutError):
        return set()
    return {m.group_instance_id for m in desc.members if m.group_instance_id}
