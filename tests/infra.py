"""The servers integration tests run against: private ephemeral instances, or testcontainers.

`PIPELINE_TEST_BACKEND=local` (default): ZooKeeper + Kafka + PostgreSQL from the installed binaries,
on free loopback ports, under a temp dir. `PIPELINE_TEST_BACKEND=testcontainers`: Kafka (KRaft) and
PostgreSQL containers from images built here (tests/containers/, docs/testcontainers.md); the tests that
stop a server (`Infra.server`) are deselected there (tests/conftest.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
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
        afterwards whatever the test did. Under testcontainers, tests/conftest.py deselects the tests
        that call it; one it could not see (a call through a helper) fails here, naming the fix."""
        if self.services is None:
            pytest.fail(f"stopping {name} needs the local backend: mark the test "
                        "@pytest.mark.needs_local_servers", pytrace=False)
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
    """Kafka and PostgreSQL containers; an engine or image problem fails the tests in one line."""
    from tests.containers.engine import EngineError
    from tests.containers.servers import container_servers

    known = os.environ.get("PIPELINE_TEST_CONTAINERS_ERROR")  # bin/test's preparation failed already
    if known:
        pytest.fail(known, pytrace=False)
    try:
        with container_servers() as (bootstrap, url):
            yield Infra(bootstrap, url, None, None)
    except EngineError as e:
        pytest.fail(str(e), pytrace=False)


BACKENDS = ("local", "testcontainers")


def default_backend() -> str:
    backend = os.environ.get("PIPELINE_TEST_BACKEND", "local")
    if backend not in BACKENDS:
        raise pytest.UsageError(f"PIPELINE_TEST_BACKEND: expected local or testcontainers, got {backend!r}")
    return backend


def make_infra(backend: str | None = None) -> AbstractContextManager[Infra]:
    """The servers of one backend (default: PIPELINE_TEST_BACKEND)."""
    backend = backend or default_backend()
    if backend == "local":
        return local_infra(os.environ.get("PIPELINE_TEST_KAFKA_MODE", "zookeeper"))
    return testcontainers_infra()
