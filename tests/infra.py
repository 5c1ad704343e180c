"""The servers integration tests run against: private ephemeral instances, or testcontainers.

`PIPELINE_TEST_BACKEND=local` (default): ZooKeeper + Kafka + PostgreSQL from the installed binaries,
on free loopback ports, under a temp dir. `PIPELINE_TEST_BACKEND=testcontainers`: Kafka and
PostgreSQL containers (needs a reachable Docker engine and its image registry).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from pipeline.services import LocalServices, ServicesConfig, free_port
from pipeline.store import create_database


@dataclass
class Infra:
    """Where the test servers listen, plus handles to stop and start them (local backend)."""

    bootstrap_servers: str
    database_url: str  # the admin-capable URL of the pipeline role (it owns its databases)
    services: LocalServices | None
    state_dir: Path | None

    def new_database(self) -> str:
        """A fresh, empty database owned by the pipeline role; returns its URL."""
        return create_database(self.database_url, f"t_{uuid.uuid4().hex[:12]}")

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a pipeline process pointed at these servers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
        env.update(KAFKA_BOOTSTRAP_SERVERS=self.bootstrap_servers, DATABASE_URL=self.database_url)
        env.update(extra)
        return env


@contextmanager
def local_infra(kafka_mode: str = "zookeeper") -> Iterator[Infra]:
    root = Path(tempfile.mkdtemp(prefix="food-orders-test-"))
    os.chmod(root, 0o755)  # the postgres account must reach its data dir inside
    config = ServicesConfig.from_env({
        "PIPELINE_STATE_DIR": str(root),
        "PIPELINE_PREFIX": os.environ.get("PIPELINE_PREFIX", ".local"),
        "PIPELINE_KAFKA_MODE": kafka_mode,
        "PIPELINE_ZOOKEEPER_PORT": str(free_port()),
        "PIPELINE_KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "DATABASE_URL": f"postgresql://pipeline:{uuid.uuid4().hex}@127.0.0.1:{free_port()}/pipeline",
    })
    config = ServicesConfig(**{**config.__dict__, "kafka_heap": "768m"})
    services = LocalServices(config)
    try:
        services.start(timeout=120, say=lambda line: None)
        with psycopg2.connect(config.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        # CREATEDB lets each test have its own database.
        services._psql(f'ALTER ROLE "{config.db_user}" CREATEDB')
        yield Infra(config.bootstrap_servers, config.database_url, services, root)
    finally:
        services.stop(timeout=60, say=lambda line: None)
        if os.environ.get("PIPELINE_TEST_KEEP_STATE") != "1":
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def testcontainers_infra() -> Iterator[Infra]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with KafkaContainer("confluentinc/cp-kafka:7.9.0") as kafka, PostgresContainer(
        "postgres:15", username="pipeline", password=uuid.uuid4().hex, dbname="pipeline"
    ) as pg:
        url = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
        yield Infra(kafka.get_bootstrap_server(), url, None, None)


def make_infra() -> contextmanager[Infra]:  # type: ignore[type-arg]
    backend = os.environ.get("PIPELINE_TEST_BACKEND", "local")
    if backend == "local":
        return local_infra(os.environ.get("PIPELINE_TEST_KAFKA_MODE", "zookeeper"))
    if backend == "testcontainers":
        return testcontainers_infra()
    raise RuntimeError(f"PIPELINE_TEST_BACKEND: expected local or testcontainers, got {backend!r}")
