"""`bench --scaling-smoke` and `bench --soak-smoke`, so they never rot: every point and every minute is
reported, with positive figures, and the soak's orders all land exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.harness import main

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(110)
def test_scaling_smoke_measures_every_point(tmp_path: Path) -> None:
    assert main(["--scaling-smoke", "--out", str(tmp_path)]) == 0

    [json_file] = tmp_path.glob("smoke-scaling-*.json")
    results = json.loads(json_file.read_text())
    assert results["mode"] == "scaling-smoke"
    n = results["sizes"]["orders"]
    assert n == 2_000
    assert {(p["partitions"], p["consumers"]) for p in results["points"]} == {(3, 1), (3, 2), (6, 1), (6, 2)}
    for p in results["points"]:
        where = (p["partitions"], p["consumers"])
        assert p["orders"] == n, where
        assert p["rate"] > 0, where
        assert p["exit_codes"] == [0] * p["consumers"], where
        assert p["cpu_s"]["consumers"] > 0 and p["cpu_us_per_order"]["consumers"] > 0, where
    for fill in results["fills"].values():
        assert fill["orders"] == n
    pr = results["projection"]
    assert pr["cores"] == 16 and pr["measured_rate"] == max(p["rate"] for p in results["points"])
    assert pr["rate_sharing"] > 0
    png = tmp_path / results["chart"]
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000


@pytest.mark.timeout(115)
def test_soak_smoke_reports_every_minute_and_writes_every_order_once(tmp_path: Path) -> None:
    assert main(["--soak-smoke", "--out", str(tmp_path)]) == 0

    [json_file] = tmp_path.glob("smoke-soak-*.json")
    results = json.loads(json_file.read_text())
    assert results["mode"] == "soak-smoke"
    soak = results["soak"]
    assert soak["rate"] == 500 and soak["orders"] == 30_000
    assert soak["exit_codes"] == {"consumer": 0, "producer": 0}
    [minute] = soak["minutes"]
    assert minute["minute"] == 1
    assert minute["produced"] == minute["written"] == minute["created"] == 30_000
    assert 0 < minute["p50_ms"] <= minute["p99_ms"] <= minute["max_ms"]
    assert minute["rss_end_mb"] > 0 and minute["rss_max_mb"] >= minute["rss_end_mb"]
    assert len(soak["samples"]) >= 55  # about one a second
    check = soak["check"]
    assert check["rows"] == check["distinct_order_ids"] == check["in_topic"] == 30_000
    verdict = results["verdict"]
    assert verdict["exactly_once"] is True
    assert verdict["error_lines"] == 0
    assert verdict["lag_bounded"] is True
    assert verdict["passed"] is True
    png = tmp_path / results["chart"]
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000
