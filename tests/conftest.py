"""Session fixtures: one set of real servers for all integration tests, stopped even on failure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

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
