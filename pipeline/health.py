"""`bin/pipeline status --check`: a status snapshot judged against thresholds, as a monitoring plugin.

Pure: a snapshot (pipeline.ops.snapshot) in, a verdict out. Exit codes are the monitoring-plugin
convention (Nagios, Icinga, Sensu, ...): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the output is one
line of summary, then `|` and the perfdata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# Program states that mean supervisord has given up or is between tries; the others (STOPPED by an
# operator, STARTING, an expected EXITED) are a warning.
BROKEN_STATES = frozenset({"FATAL", "BACKOFF", "UNKNOWN"})


@dataclass(frozen=True)
class Thresholds:
    lag_warn: int = 10_000
    lag_crit: int = 100_000
    lag_seconds_warn: float = 60.0
    lag_seconds_crit: float = 300.0
    dlq_growth_warn: int = 1
    dlq_growth_crit: int = 1_000


@dataclass(frozen=True)
class Verdict:
    code: int
    problems: list[str]  # worst first
    perfdata: str

    def line(self) -> str:
        text = "; ".join(self.problems) if self.problems else "pipeline healthy"
        return f"FOOD-ORDERS {NAMES[self.code]} - {text} | {self.perfdata}"


def evaluate(snap: dict[str, Any], limits: Thresholds, dlq_before: int | None) -> Verdict:
    """`dlq_before`: letters in the DLQ at the previous check (None: first check, no growth known)."""
    found: list[tuple[int, str]] = []

    def flag(code: int, text: str) -> None:
        found.append((code, text))

    for server, up in snap["servers"].items():
        if not up:
            flag(CRITICAL, f"{server} not answering")
    procs = snap["processes"] or []
    broken = [p["name"] for p in procs if p["state"] in BROKEN_STATES]
    idle = [f"{p['name']} {p['state']}" for p in procs if p["state"] != "RUNNING" and p["name"] not in broken]
    if broken:
        flag(CRITICAL, f"not running: {', '.join(broken)}")
    if idle:
        flag(WARNING, f"not running: {', '.join(idle)}")
    if snap["servers"]["supervisord"] and not any(p["name"].startswith("consumer") and p["state"] == "RUNNING"
                                                  for p in procs):
        flag(CRITICAL, "no consumer running")

    lag, age = snap["total_lag"], snap["max_lag_seconds"]
    if lag is not None:
        _against(flag, lag, limits.lag_warn, limits.lag_crit, f"lag {lag} messages")
    elif snap["servers"]["kafka"]:
        flag(WARNING, f"topic {snap['topic']['name']} missing: lag unknown")
    if age is not None:
        _against(flag, age, limits.lag_seconds_warn, limits.lag_seconds_crit, f"oldest unconsumed order {age:.0f}s old")

    letters = snap["dlq"]["messages"]
    growth = None if letters is None or dlq_before is None else max(0, letters - dlq_before)
    if growth is not None:
        _against(flag, growth, limits.dlq_growth_warn, limits.dlq_growth_crit,
                 f"{growth} new dead letter(s) since the last check")
    if snap["degraded"]:
        flag(WARNING, f"degraded: {', '.join(snap['degraded'])}")
    db = snap["database"]
    if db is not None and (db["duplicate_order_ids"] or db["stats_mismatches"]):
        flag(CRITICAL, f"database inconsistent: {db['duplicate_order_ids']} duplicate order ids, "
                       f"customer_stats wrong for {db['stats_mismatches']} customers")

    found.sort(key=lambda item: -item[0])
    code = found[0][0] if found else OK
    perf = [
        _perf("lag", lag, limits.lag_warn, limits.lag_crit),
        _perf("lag_seconds", None if age is None else round(age, 1), limits.lag_seconds_warn,
              limits.lag_seconds_crit, "s"),
        _perf("dlq", letters),
        _perf("dlq_growth", growth, limits.dlq_growth_warn, limits.dlq_growth_crit),
        _perf("programs_running", None if not snap["servers"]["supervisord"] else
              sum(p["state"] == "RUNNING" for p in procs)),
        _perf("degraded", None if snap["degraded"] is None else len(snap["degraded"]), 1),
    ]
    return Verdict(code, [text for _, text in found], " ".join(perf))


def _against(flag: Any, value: float, warn: float, crit: float, text: str) -> None:
    if value >= crit:
        flag(CRITICAL, text)
    elif value >= warn:
        flag(WARNING, text)


def _perf(label: str, value: float | None, warn: float | None = None, crit: float | None = None,
          unit: str = "") -> str:
    """One perfdata item: `label=value[unit];warn;crit;min`; `U` when unknown."""
    shown = "U" if value is None else f"{value:g}{unit}"
    return f"{label}={shown};{'' if warn is None else f'{warn:g}'};{'' if crit is None else f'{crit:g}'};0"
