"""top's arithmetic: parsing a scrape, rates over the window, percentiles from buckets, sparklines."""

from __future__ import annotations

import math

import pytest

from pipeline.top import History, by_label, histogram_delta, parse, quantile, sparkline

SCRAPE = """# TYPE food_orders_orders_inserted_total counter
food_orders_orders_inserted_total{process="consumer_01"} %d
food_orders_orders_inserted_total{process="consumer_02"} %d
# TYPE food_orders_dead_letters_total counter
food_orders_dead_letters_total{error="schema",process="consumer_01"} 2
food_orders_dead_letters_total{error="schema",process="consumer_02"} 1
food_orders_dead_letters_total{error="conflict",process="consumer_02"} 4
# TYPE food_orders_consumer_lag_messages gauge
food_orders_consumer_lag_messages{group="g",partition="0",topic="t"} %d
# TYPE food_orders_end_to_end_latency_seconds histogram
food_orders_end_to_end_latency_seconds_bucket{le="0.01"} %d
food_orders_end_to_end_latency_seconds_bucket{le="0.1"} %d
food_orders_end_to_end_latency_seconds_bucket{le="+Inf"} %d
food_orders_end_to_end_latency_seconds_count %d
food_orders_end_to_end_latency_seconds_sum 1.0
"""


def test_rates_over_the_window_and_totals_by_label() -> None:
    h = History()
    h.add(0.0, parse(SCRAPE % (100, 50, 7, 0, 0, 0, 0)))
    h.add(5.0, parse(SCRAPE % (600, 550, 3, 10, 90, 100, 100)))
    assert h.rate("food_orders_orders_inserted_total") == 200.0
    assert h.rate("food_orders_orders_inserted_total", process="consumer_01") == 100.0
    assert list(h.lags["0"]) == [7.0, 3.0]
    _, then, now = h.window()
    assert by_label(now, "food_orders_dead_letters_total", "error") == {"schema": 3.0, "conflict": 4.0}
    assert histogram_delta(now, then, "food_orders_end_to_end_latency_seconds") == {0.01: 10, 0.1: 90,
                                                                                    math.inf: 100}


def test_quantiles_interpolate_within_buckets_like_histogram_quantile() -> None:
    buckets = {0.01: 10.0, 0.1: 90.0, math.inf: 100.0}
    assert quantile(0.05, buckets) == pytest.approx(0.005)
    assert quantile(0.5, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.99, buckets) == 0.1  # beyond the last finite bound: that bound
    assert quantile(0.5, {0.01: 0.0, math.inf: 0.0}) is None


def test_sparkline_scales_to_the_largest_value_and_keeps_the_last_width() -> None:
    assert sparkline([0, 50, 100], 10) == "▁▅█"
    assert sparkline([0, 0], 10) == "▁▁"
    assert sparkline([1, 2, 3, 7, 8, 100], 3) == "▁▂█"
