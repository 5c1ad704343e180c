"""The servers integration tests run against: private ephemeral instances, or testcontainers.

`PIPELINE_TEST_BACKEND=local` (default): ZooKeeper + Kafka + PostgreSQL from the installed binaries,
on free loopback ports, under a temp dir. `PIPELINE_TEST_BACKEND=testcontainers`: Kafka and
PostgreSQL containers (needs a reachable Docker engine and its image registry).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.services import LocalServices, ManagedProcess
from pipeline.services.ephemeral import ephemeral_services
from pipeline.store import create_database


@dataclass
class Infra:
    """Where the test servers listen, plus handles to stop and start them (local backend)."""

    bootstrap_servers: str
    database_url: str  # the admin-capable URL of the pipeline role (it owns its databases)
    services: LocalServices | None
    state_dir: Path | None

    @contextmanager
    def server(self, name: str) -> Iterator[ManagedProcess]:
        """One of the local servers ("kafka", "postgres"), for a test that stops it; running again
        afterwards whatever the test did. Skips under testcontainers, whose servers we cannot stop."""
        if self.services is None:
            pytest.skip(f"stopping {name} needs the local backend")
        server: ManagedProcess = getattr(self.services, name)()
        try:
            yield server
        finally:
            if server.pid() is None:
                server.start(timeout=120)

    def new_database(self) -> str:
        """A fresh, empty database owned by the pipeline role; returns its URL."""
        return create_database(self.database_url, f"t_{uuid.uuid4().hex[:12]}")


@contextmanager
def local_infra(kafka_mode: str = "zookeeper") -> Iterator[Infra]:
    keep = os.environ.get("PIPELINE_TEST_KEEP_STATE") == "1"
    with ephemeral_services("test", kafka_mode, kafka_heap="768m", keep_state=keep) as services:
        c = services.config
        yield Infra(c.bootstrap_servers, c.database_url, services, c.state_dir)


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
