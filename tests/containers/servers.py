"""Kafka and PostgreSQL containers for one test session, started through testcontainers and ready.

Images: the ones built here from deploy/containers/ (default), or with PIPELINE_TEST_IMAGES=official the
public postgres:15 and apache/kafka:3.9.x (an engine that reaches Docker Hub). Every container carries
the run labels of tests/containers/runs.py, so a sweep can find it whatever happens to this process.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import TypeVar

# testcontainers reads these at import: no Ryuk (its image cannot be pulled here; our labels and sweep
# do its job), and published ports on this host (a /.dockerenv makes it think it runs in a container).
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

import docker.errors
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from testcontainers.community.postgres import PostgresContainer
from testcontainers.core.container import DockerContainer

from tests.containers.engine import EngineError, connect, first_line
from tests.containers.images import ensure_images, image_set
from tests.containers.runs import run_id, run_labels, sweep

OFFICIAL_POSTGRES = os.environ.get("PIPELINE_TEST_POSTGRES_IMAGE", "postgres:15")
OFFICIAL_KAFKA = os.environ.get("PIPELINE_TEST_KAFKA_IMAGE", "apache/kafka:3.9.1")
LOOPBACK = "127.0.0.1"
T = TypeVar("T")
C = TypeVar("C", bound=DockerContainer)


def wait_until(check: Callable[[], T | None], timeout: float, what: str, alive: Callable[[], str | None]) -> T:
    """Poll check() until it returns a value; stop early when alive() names why it never will."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        dead = alive()
        if dead:
            raise EngineError(f"{what}: {dead}")
        if time.monotonic() > deadline:
            raise EngineError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.2)


def _exited(container: DockerContainer) -> Callable[[], str | None]:
    def why() -> str | None:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            logs = wrapped.logs(tail=5).decode(errors="replace")
            return f"container exited ({first_line(logs)})"
        return None
    return why


def _kafka_metadata(bootstrap: str) -> str | None:
    """The broker answers metadata requests from this host through the published port."""
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
        md = admin.list_topics(timeout=2)
    except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
        return None
    return bootstrap if md.brokers else None


def _group_coordinator(bootstrap: str) -> str | None:
    """The group coordinator answers (its first use creates __consumer_offsets, which takes a while on
    a fresh broker: a test's first offset fetch would meet NOT_COORDINATOR otherwise)."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "food-orders-test-warmup", "log_level": 0})
    try:
        probe.committed([TopicPartition("food-orders-test-warmup", 0)], timeout=5)
    except KafkaException:
        return None
    finally:
        probe.close()
    return bootstrap


class KafkaServer(DockerContainer):
    """A Kafka container whose advertised address is its published port, known only after start: the
    container waits for it (the same trick as testcontainers' own Kafka module)."""

    def __init__(self, image: str, official: bool) -> None:
        super().__init__(image)
        self.official = official
        self.with_bind_ports(9092, None)
        if official:
            # apache/kafka's own start script, run once the advertised address is written.
            self.with_command(["sh", "-c", "while [ ! -s /tmp/kafka-advertised ]; do sleep 0.05; done; "
                               "export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://$(cat /tmp/kafka-advertised),"
                               "CONTROLLER://localhost:9093; exec /etc/kafka/docker/run"])
            self.with_envs(
                KAFKA_NODE_ID="1", KAFKA_PROCESS_ROLES="broker,controller",
                KAFKA_LISTENERS="PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093",
                KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER", KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
                KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1", KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
                KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1", KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
                KAFKA_AUTO_CREATE_TOPICS_ENABLE="false", KAFKA_NUM_PARTITIONS="3",
            )

    def begin(self) -> str:
        """Start, and tell the broker the address clients reach it at (returned)."""
        self.start()
        advertised = f"{LOOPBACK}:{self.get_exposed_port(9092)}"
        self.exec(["sh", "-c", f"echo {advertised} >/tmp/kafka-advertised.new && "
                               "mv /tmp/kafka-advertised.new /tmp/kafka-advertised"])
        return advertised

    def ready(self, advertised: str, timeout: float = 120) -> str:
        """Wait until the broker and its group coordinator answer from this host; the bootstrap address."""
        what = f"kafka container {self.image}"
        wait_until(lambda: _kafka_metadata(advertised), timeout, what, _exited(self))
        return wait_until(lambda: _group_coordinator(advertised), timeout, what, _exited(self))


@contextmanager
def _running(container: C) -> Iterator[C]:
    """Remove the container at the end, and also when its start failed half-way (testcontainers' own
    context manager does not: __exit__ never runs when __enter__ raised)."""
    try:
        yield container
    finally:
        if container._container is not None:
            with suppress(docker.errors.NotFound):
                container.stop()


def _loopback_postgres(image: str, password: str, labels: dict[str, str]) -> PostgresContainer:
    pg = PostgresContainer(image, username="pipeline", password=password, dbname="pipeline", driver=None)
    pg.ports = {}  # published on loopback only: the test servers are nobody else's
    pg.with_bind_ports(5432, None)
    pg.with_kwargs(labels=labels, shm_size="256m")
    return pg


def _bind_loopback(container: DockerContainer) -> None:
    """Every published port on 127.0.0.1 (docker-py takes (address, None) as 'any free port there')."""
    container.ports = {k: (LOOPBACK, v) for k, v in container.ports.items()}  # type: ignore[misc]


@contextmanager
def container_servers(say: Callable[[str], None] = lambda line: None) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, database URL) of fresh Kafka and PostgreSQL containers; removed at the end,
    pass or fail, and swept by the next run if this process dies first."""
    official = os.environ.get("PIPELINE_TEST_IMAGES", "local") == "official"
    client = connect()
    swept = sweep(client)
    if swept:
        say(f"removed {len(swept)} container(s) of finished test runs")
    if official:
        postgres_image, kafka_image = OFFICIAL_POSTGRES, OFFICIAL_KAFKA
    else:
        tags = ensure_images(client, image_set(), say)
        postgres_image, kafka_image = tags["postgres"], tags["kafka"]
    labels = run_labels()
    password = uuid.uuid4().hex
    with ExitStack() as stack:
        stack.callback(lambda: sweep(client, also=run_id()))  # whatever the steps below left
        pg = stack.enter_context(_running(_loopback_postgres(postgres_image, password, labels)))
        kafka = stack.enter_context(_running(KafkaServer(kafka_image, official)))
        kafka.with_kwargs(labels=labels)
        _bind_loopback(pg)
        _bind_loopback(kafka)
        try:
            started = time.monotonic()
            advertised = kafka.begin()  # the broker starts while PostgreSQL does
            pg.start()
            pg_seconds = time.monotonic() - started
            bootstrap = kafka.ready(advertised)
            say(f"containers ready: postgres after {pg_seconds:.1f}s, kafka after {time.monotonic() - started:.1f}s")
        except (docker.errors.DockerException, TimeoutError) as e:
            raise EngineError(f"test containers did not start: {first_line(str(e))}") from e
        url = f"postgresql://pipeline:{password}@{LOOPBACK}:{pg.get_exposed_port(5432)}/pipeline"
        yield bootstrap, url
