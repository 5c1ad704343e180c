"""The arithmetic of `bench --scaling` and `bench --soak`: points, the 16-core projection, samples per
minute, the soak's verdict, and counting error lines in logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.scaling import point, projection
from bench.soak import ErrorLines
from bench.soak_report import minute_of, minute_rows, verdict


def drained(orders: int, rate: float, consumers: int, kafka: float, postgres: float) -> dict[str, Any]:
    cpu = {f"consumer_{i + 1}": 1.0 for i in range(consumers)}
    cpu.update(kafka=kafka, postgres=postgres, zookeeper=0.1, harness=0.2, machine_busy_pct=80.0,
               foreign_pct=3.0, foreign_cpu_s=0.1, wall_s=5.0)
    return {"orders": orders, "rate": rate, "rate_all_active": None, "processes_that_wrote": consumers,
            "exit_codes": [0] * consumers, "cpu_s": cpu}


def test_a_point_sums_the_consumers_and_gives_microseconds_per_order() -> None:
    p = point(6, 2, drained(200_000, 30_000.0, 2, kafka=1.0, postgres=4.0))
    assert p["cpu_s"] == {"consumers": 2.0, "kafka": 1.0, "postgres": 4.0, "zookeeper": 0.1, "harness": 0.2}
    assert p["cpu_us_per_order"]["consumers"] == 10.0  # 2 s / 200,000 orders
    assert p["cpu_us_per_order"]["postgres"] == 20.0
    assert (p["machine_busy_pct"], p["foreign_pct"]) == (80.0, 3.0)


def test_projection_uses_the_best_point_and_divides_cores_by_cpu_per_order() -> None:
    slow = point(3, 1, drained(200_000, 20_000.0, 1, kafka=1.0, postgres=4.0))
    best = point(6, 2, drained(200_000, 30_000.0, 2, kafka=2.0, postgres=4.0))  # 10 + 10 + 20 µs per order
    pr = projection([slow, best], cores=16)
    assert (pr["partitions"], pr["consumers"], pr["measured_rate"]) == (6, 2, 30_000.0)
    assert pr["cpu_s_per_order"]["total"] == pytest.approx(40e-6)
    assert pr["rate_if_alone"] == {"consumers": 1_600_000, "kafka": 1_600_000, "postgres": 800_000}
    assert pr["rate_sharing"] == 400_000  # 16 / 40 µs
    assert pr["bound_by"] == "postgres"


def sample(t: float, rows: int, lag: int = 0, rss: float = 50.0, cpu: float = 0.0, errors: int = 0) -> dict[str, Any]:
    return {"t": t, "rss_mb": rss, "consumer_cpu_s": cpu, "lag": lag, "produced": rows + lag, "rows": rows,
            "error_lines": errors}


def test_samples_fall_in_their_minute_and_the_tail_in_the_last() -> None:
    assert [minute_of(t, 2) for t in (-0.5, 0.0, 59.9, 60.0, 119.9, 130.0)] == [0, 0, 0, 1, 1, 1]


def test_minute_rows_are_differences_of_counters_and_maxima_of_gauges() -> None:
    samples = [sample(0.0, 0, cpu=1.0), sample(30.0, 300, lag=40, rss=51.0, cpu=4.0),
               sample(59.0, 590, lag=10, rss=50.5, cpu=7.0, errors=1),
               sample(90.0, 900, lag=5, rss=52.0, cpu=10.0, errors=1),
               sample(125.0, 1200, rss=51.5, cpu=13.0, errors=1)]
    latency = {0: {"created": 600, "p50_ms": 8.0, "p99_ms": 30.0, "max_ms": 90.0}}
    first, second = minute_rows(samples, latency, 2)
    assert (first["minute"], first["samples"], first["written"], first["produced"]) == (1, 3, 590, 600)
    assert (first["max_lag"], first["rss_end_mb"], first["rss_max_mb"]) == (40, 50.5, 51.0)
    assert first["consumer_cpu_pct"] == pytest.approx(100 * 6.0 / 59.0, abs=0.1)
    assert first["error_lines"] == 1 and first["p99_ms"] == 30.0
    # The tail at 125 s belongs to the second (last) minute.
    assert (second["samples"], second["written"], second["produced"], second["max_lag"]) == (2, 610, 600, 5)
    assert (second["rss_end_mb"], second["rss_max_mb"], second["error_lines"]) == (51.5, 52.0, 0)
    assert second["p99_ms"] is None and second["created"] == 0


def minutes(lags: list[int], rss: list[float], errors: int = 0) -> list[dict[str, Any]]:
    return [{"max_lag": lag, "rss_end_mb": r, "error_lines": errors if i == 0 else 0}
            for i, (lag, r) in enumerate(zip(lags, rss, strict=True))]


def test_verdict_passes_a_steady_soak() -> None:
    v = verdict(minutes([300, 100, 120, 90], [60.0, 70.0, 72.0, 74.0]), rate=1_000.0, exactly_once=True)
    assert v["lag_bound"] == 1_600  # 2 x 300 + 1,000 orders/s x 1 s
    assert v["lag_bounded"] and v["rss_bounded"] and v["passed"]
    assert (v["max_lag_second_half"], v["rss_growth_mb"], v["error_lines"]) == (120, 4.0, 0)


def test_verdict_fails_growing_lag_growing_memory_errors_and_lost_orders() -> None:
    v = verdict(minutes([300, 1_000, 2_000, 4_000], [60.0, 70.0, 90.0, 120.0], errors=2), rate=1_000.0,
                exactly_once=False)
    assert not v["lag_bounded"] and not v["rss_bounded"] and not v["passed"]
    assert v["rss_growth_mb"] == 50.0
    assert v["failed"] == ["lag_bounded", "rss_bounded", "no_error_lines", "exactly_once"]


def test_a_one_minute_soak_compares_the_minute_with_itself() -> None:
    v = verdict(minutes([50], [48.0]), rate=500.0, exactly_once=True)
    assert (v["lag_bounded"], v["rss_growth_mb"], v["passed"]) == (True, 0.0, True)


def test_error_lines_are_counted_once_even_when_a_line_arrives_in_two_reads(tmp_path: Path) -> None:
    log = tmp_path / "consumer.log"
    count = ErrorLines([log, tmp_path / "missing.log"])
    assert count() == 0
    log.write_text("2026-11-27 10:00:00.000 INFO    [consumer:1] starting: ERROR in a message is no error\n"
                   "2026-11-27 10:00:01.000 ERROR   [consumer:1] fatal: x\n"
                   "2026-11-27 10:00:02.000 WARNING [consumer:1] retrying\n2026-11-27 10:00:03.000 ERR")
    assert count() == 1
    with log.open("a") as f:
        f.write("OR   [consumer:1] again\nTraceback (most recent call last):\n"
                '{"ts": "x", "level": "CRITICAL", "msg": "y"}\n')
    assert count() == 4
    assert count() == 4
