"""Session fixtures: real servers for the integration tests, stopped even on failure.

The servers come from one of two backends (tests/infra.py): `local` (default) or `testcontainers`
(PIPELINE_TEST_BACKEND). With PIPELINE_TEST_ALSO_CONTAINERS=1 (what bin/test sets) the tests of
CONTAINERS_SUBSET run once per backend, `[local]` and `[testcontainers]`, in the same session, so one
run and one summary cover both. Tests that stop a server (`Infra.server`) are deselected under
testcontainers, whose servers cannot be stopped from here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from loguru import logger

from tests.helpers import PipelineEnv
from tests.infra import Infra, default_backend, make_infra

# The integration tests that also run on the testcontainers backend in bin/test (and so in CI), about a
# minute there: end to end with replay, a crash between the DB commit and the offset commit, producer
# restarts, SIGTERM, added partitions (all of test_pipeline.py), bad input to the DLQ, every store path
# (redelivery, conflicts, refused rows, concurrent migrations), a killed consumer's partitions moving,
# the Java partitioner, and Kafka's own CLI against the broker. A file name means all its tests.
CONTAINERS_SUBSET = (
    "tests/integration/test_pipeline.py",
    "tests/integration/test_bad_input.py",
    "tests/integration/test_store.py",
    "tests/integration/test_resilience.py::test_three_consumers_own_one_partition_each_and_a_killed_ones_partition_moves",
    "tests/integration/test_partitioner_java.py",
    "tests/integration/test_infra.py::test_topic_with_three_partitions_is_described_by_admin_and_cli",
    "tests/integration/test_infra.py::test_produce_and_consume_round_trip",
)
NEEDS_LOCAL = "needs_local_servers"
PEERS = "peers"  # downloads the benchmark's peers (Kafka Connect, Quix Streams): opt-in


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{NEEDS_LOCAL}: stops or inspects the local servers; deselected under "
                                       "the testcontainers backend (calls of infra.server() are found by themselves)")
    config.addinivalue_line("markers", f"{PEERS}: downloads the benchmark's peers; deselected unless "
                                       "PIPELINE_TEST_PEERS=1 (bin/test never downloads them)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (os.environ.get("PIPELINE_TEST_ALSO_CONTAINERS") == "1" and "backend" in metafunc.fixturenames
            and in_containers_subset(metafunc.definition.nodeid) and default_backend() == "local"):
        metafunc.parametrize("backend", ["local", "testcontainers"])


def in_containers_subset(nodeid: str) -> bool:
    return any(nodeid == entry or nodeid.startswith(f"{entry}::") for entry in CONTAINERS_SUBSET)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip: they are not counted) the tests that need local servers, where the servers
    are containers, and the peers' test unless asked for."""
    peers = os.environ.get("PIPELINE_TEST_PEERS") == "1"
    gone = [item for item in items if (_backend_of(item) == "testcontainers" and _needs_local_servers(item))
            or (item.get_closest_marker(PEERS) is not None and not peers)]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = [item for item in items if item not in gone]


def _backend_of(item: pytest.Item) -> str | None:
    if "infra" not in getattr(item, "fixturenames", ()):
        return None
    callspec = getattr(item, "callspec", None)
    return str(callspec.params["backend"]) if callspec and "backend" in callspec.params else default_backend()


def _needs_local_servers(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    return item.get_closest_marker(NEEDS_LOCAL) is not None or (function is not None and calls_infra_server(function))


@functools.cache
def calls_infra_server(function: Callable[..., object]) -> bool:
    """Whether a test's own code calls `infra.server(...)`."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "server"
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "infra"
               for node in ast.walk(tree))


class ServerSets:
    """The servers of each backend, started when a test first asks for them, stopped at the end."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._made: dict[str, Infra] = {}
        self._failed: dict[str, BaseException] = {}

    def get(self, backend: str) -> Infra:
        if backend in self._failed:
            raise self._failed[backend]
        if backend not in self._made:
            try:
                self._made[backend] = self._stack.enter_context(make_infra(backend))
            except (Exception, pytest.fail.Exception) as e:
                self._failed[backend] = e  # every later test fails the same way, at once
                raise
        return self._made[backend]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def server_sets() -> Iterator[ServerSets]:
    sets = ServerSets()
    try:
        yield sets
    finally:
        sets.close()


@pytest.fixture
def backend() -> str:
    """Which backend's servers this test uses: PIPELINE_TEST_BACKEND, or the parameter added above."""
    return default_backend()


@pytest.fixture
def infra(backend: str, server_sets: ServerSets) -> Infra:
    return server_sets.get(backend)


@pytest.fixture
def log() -> Iterator[list[str]]:
    """What loguru logs during the test, one "LEVEL message" string per line."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m).strip()), level="DEBUG", format="{level} {message}")
    yield lines
    logger.remove(sink)


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
