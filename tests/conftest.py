"""Session fixtures: one set of real servers for all integration tests, stopped even on failure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import PipelineEnv
from tests.infra import Infra, make_infra


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with make_infra() as servers:
        yield servers


@pytest.fixture
def database_url(infra: Infra) -> str:
    """A fresh database for one test."""
    return infra.new_database()


@pytest.fixture
def topic_name() -> str:
    """A topic name no other test uses."""
    return f"food-orders-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pipe(infra: Infra, database_url: str, topic_name: str, tmp_path_factory: pytest.TempPathFactory) -> PipelineEnv:
    """A topic, a consumer group and a database of one test's own, plus a directory for process logs."""
    return PipelineEnv(infra.bootstrap_servers, database_url, topic_name, f"group-{topic_name}",
                       tmp_path_factory.mktemp("logs"))
