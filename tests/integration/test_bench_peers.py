"""`bench --peers-smoke` on the session's Kafka and PostgreSQL: every drain writes every order once.

Opt-in, because the peers are downloaded on first use (Maven: Kafka Connect + the Debezium JDBC sink;
pip: Quix Streams into .local/peers/quix-venv), which bin/test never does:

    PIPELINE_TEST_PEERS=1 .venv/bin/pytest tests/integration/test_bench_peers.py

About 30 s once the peers are installed (plus the servers' start when run alone).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from bench.harness import build_parser
from bench.infra import BenchInfra
from bench.peers.run import Installed, PeerPlan, drain_all
from tests.infra import Infra

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.needs_local_servers,  # CPU accounting reads the local servers' processes
    pytest.mark.peers,  # deselected unless PIPELINE_TEST_PEERS=1 (tests/conftest.py): it downloads the peers
]


@pytest.mark.timeout(180)
def test_peers_smoke_each_drain_writes_every_order_once(infra: Infra, tmp_path: Path) -> None:
    plan = PeerPlan.from_args(build_parser().parse_args(["--peers-smoke", "--orders", "1500",
                                                         "--consumers", "1,2"]))
    installed = Installed.for_plan(plan, Console(quiet=True))
    assert infra.services is not None
    bench_infra = BenchInfra(infra.bootstrap_servers, infra.database_url, infra.services, tmp_path)
    try:
        results = drain_all(bench_infra, plan, installed, Progress(disable=True))
    finally:
        bench_infra.stop_all()

    runs = results["runs"]
    assert set(runs) == {"pipeline_1", "pipeline_2", "connect", "quix"}
    assert results["reencode"]["messages"] == 1500
    for name, run in runs.items():
        check = run["check"]
        assert (check["rows"], check["distinct_order_ids"], check["missing"], check["unexpected"]) == \
            (1500, 1500, 0, 0), name
        assert check["total_cents"] == check["expected_total_cents"], name
        # The same content as the pipeline's rows: columns, partitions and offsets.
        assert check["same_content"] is True, name
        assert run["rate_start_to_last_row"] > 0 and run["startup_seconds"] > 0, name
        assert run["sink_cpu_s"] > 0 and run["postgres_backends_cpu_s"] > 0, name
    assert [row["rows_correct"] for row in results["table"]] == [True] * len(results["table"])
    assert runs["pipeline_2"]["exit_codes"] == [0, 0]
    # Quix Streams stops cleanly on SIGTERM; the JVM reports the signal (128 + 15) after its shutdown hooks.
    assert runs["quix"]["exit_codes"] == [0]
    assert runs["connect"]["exit_codes"] == [143]
