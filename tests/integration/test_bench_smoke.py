"""The benchmark harness in smoke mode, so it never rots: every phase runs and reports positive numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.harness import main

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PHASES = ("ceiling_consume", "ceiling_postgres", "ceiling_produce", "producer", "producer_2", "baseline",
          "pipeline_1", "pipeline_2", "pipeline_3", "latency", "latency_2000")


@pytest.mark.timeout(300)
def test_bench_smoke_writes_every_phase(tmp_path: Path) -> None:
    assert main(["--smoke", "--out", str(tmp_path)]) == 0

    [json_file] = tmp_path.glob("smoke-*.json")
    results = json.loads(json_file.read_text())
    assert results["mode"] == "smoke"
    phases = results["phases"]
    for name in PHASES:
        assert name in phases, name
        if not name.startswith("latency"):
            assert phases[name]["rate"] > 0, name
    assert phases["ceiling_postgres"]["store_write"]["rate"] > 0
    assert set(phases["ceiling_postgres"]["rate_by_connections"]) == {"1", "2", "3"}
    assert phases["ceiling_postgres"]["rate"] == max(phases["ceiling_postgres"]["rate_by_connections"].values())
    for name in ("pipeline_1", "pipeline_2", "pipeline_3"):
        assert phases[name]["orders"] == results["sizes"]["orders"], name
        assert phases[name]["exit_codes"] == [0] * phases[name]["processes"], name
    for name, rate in (("latency", 200), ("latency_2000", 2000)):
        lat = phases[name]
        assert lat["target_rate"] == rate and lat["orders"] == rate * 5
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert 20 < results["ratios"]["consumer_rss_max_mb"] < 1000
    assert [phases[k]["in_topic"] for k in ("producer", "producer_2")] == [results["sizes"]["orders"]] * 2
    assert phases["producer_2"]["processes"] == 2
    assert results["ratios"]["latency_high_p99_ms"] == phases["latency_2000"]["p99_ms"]
    for key in ("pipeline_1_vs_ceiling", "pipeline_best_vs_ceiling", "pipeline_best_vs_baseline",
                "producer_vs_raw_produce", "producers_2_vs_raw_produce"):
        assert results["ratios"][key] > 0, key
    for key in ("cpu_model", "logical_cpus", "ram_gib", "kernel", "python", "kafka", "postgresql"):
        assert results["machine"][key], key

    png = tmp_path / results["chart"]
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
