"""status --check's verdicts from snapshots: exit codes, the summary line and the perfdata."""

from __future__ import annotations

from typing import Any

from pipeline.health import CRITICAL, OK, UNKNOWN, WARNING, Thresholds, evaluate


def snap(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "servers": {"supervisord": True, "kafka": True, "postgresql": True},
        "processes": [{"name": "consumer:consumer_01", "state": "RUNNING"}, {"name": "producer", "state": "RUNNING"},
                      {"name": "metrics", "state": "RUNNING"}],
        "topic": {"name": "food-orders", "partitions": 3},
        "total_lag": 12, "max_lag_seconds": 0.4,
        "dlq": {"topic": "food-orders.dlq", "messages": 5},
        "degraded": [],
        "database": {"duplicate_order_ids": 0, "stats_mismatches": 0},
    }
    base.update(changes)
    return base


LIMITS = Thresholds(lag_warn=100, lag_crit=1000, lag_seconds_warn=10, lag_seconds_crit=60, dlq_growth_warn=1,
                    dlq_growth_crit=10)


def test_healthy_is_ok_with_perfdata() -> None:
    v = evaluate(snap(), LIMITS, dlq_before=5)
    assert v.code == OK
    assert v.line() == ("FOOD-ORDERS OK - pipeline healthy | lag=12;100;1000;0 lag_seconds=0.4s;10;60;0 "
                        "dlq=5;;;0 dlq_growth=0;1;10;0 programs_running=3;;;0 degraded=0;1;;0")


def test_lag_in_messages_or_seconds_warns_then_goes_critical() -> None:
    assert evaluate(snap(total_lag=100), LIMITS, 5).code == WARNING
    assert evaluate(snap(total_lag=1000), LIMITS, 5).code == CRITICAL
    v = evaluate(snap(max_lag_seconds=75.2), LIMITS, 5)
    assert v.code == CRITICAL and v.problems == ["oldest unconsumed order 75s old"]


def test_dlq_growth_since_the_previous_check_and_none_on_the_first() -> None:
    assert evaluate(snap(), LIMITS, None).code == OK
    v = evaluate(snap(dlq={"topic": "d", "messages": 7}), LIMITS, 5)
    assert v.code == WARNING and v.problems == ["2 new dead letter(s) since the last check"]
    assert evaluate(snap(dlq={"topic": "d", "messages": 15}), LIMITS, 5).code == CRITICAL
    assert evaluate(snap(dlq={"topic": "d", "messages": 0}), LIMITS, 5).code == OK  # retention removed letters


def test_programs_servers_and_degraded_consumers() -> None:
    procs = [{"name": "consumer:consumer_01", "state": "FATAL"}, {"name": "consumer:consumer_02", "state": "RUNNING"},
             {"name": "producer", "state": "STOPPED"}]
    v = evaluate(snap(processes=procs, degraded=["consumer_02 (postgresql)"]), LIMITS, 5)
    assert v.code == CRITICAL
    assert v.problems == ["not running: consumer:consumer_01", "not running: producer STOPPED",
                          "degraded: consumer_02 (postgresql)"]
    v = evaluate(snap(processes=[{"name": "producer", "state": "RUNNING"}]), LIMITS, 5)
    assert v.problems == ["no consumer running"]


def test_everything_down_is_critical_and_unknowns_are_U() -> None:
    v = evaluate(snap(servers={"supervisord": False, "kafka": False, "postgresql": False}, processes=None,
                      total_lag=None, max_lag_seconds=None, dlq={"topic": "d", "messages": None}, degraded=None,
                      database=None), LIMITS, 5)
    assert v.code == CRITICAL
    assert v.line().startswith("FOOD-ORDERS CRITICAL - supervisord not answering; kafka not answering; "
                               "postgresql not answering | lag=U;100;1000;0 lag_seconds=U;10;60;0 dlq=U;;;0 "
                               "dlq_growth=U;1;10;0 programs_running=U;;;0 degraded=U;1;;0")


def test_a_missing_topic_warns_and_an_inconsistent_database_is_critical() -> None:
    assert evaluate(snap(total_lag=None, max_lag_seconds=None), LIMITS, 5).problems == [
        "topic food-orders missing: lag unknown"]
    v = evaluate(snap(database={"duplicate_order_ids": 0, "stats_mismatches": 2}), LIMITS, 5)
    assert v.code == CRITICAL and "customer_stats wrong for 2 customers" in v.problems[0]
    assert UNKNOWN == 3
