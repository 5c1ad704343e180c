"""The pure parts of `bench --soak` (bench/soak.py): samples bucketed per minute, the verdict, the table, the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.table import Table

LAG_FIRST_MINUTE_FACTOR = 2.0  # lag bound: 2 x the first minute's max lag ...
LAG_RATE_SECONDS = 1.0  # ... + one second of orders at the soak rate
RSS_GROWTH_MIN_MB, RSS_GROWTH_SHARE = 16.0, 0.10  # RSS may grow by max(16 MB, 10 % of minute 2's) to the end
RULES = (
    f"Verdict: lag_bounded = max lag in the second half of the minutes (minute n//2 on) <= lag_bound = "
    f"{LAG_FIRST_MINUTE_FACTOR:g} x max lag of the first minute + rate x {LAG_RATE_SECONDS:g} s (the first "
    f"minute includes the start, so a backlog that keeps growing exceeds it); rss_growth_mb = RSS at the end of "
    f"the last minute - RSS at the end of the second minute (the first one warms up; a 1-minute run compares "
    f"the minute with itself); rss_bounded = growth <= max({RSS_GROWTH_MIN_MB:g} MB, "
    f"{RSS_GROWTH_SHARE:.0%} of the second minute's RSS); error_lines = ERROR/CRITICAL/traceback lines in the "
    f"consumer's and producer's logs; exactly_once = rows = distinct order ids = end offsets of the topic = "
    f"rate x duration. passed = all of lag_bounded, rss_bounded, error_lines == 0, exactly_once.")


def minute_of(t: float, minutes: int) -> int:
    """The minute a sample taken `t` seconds into the soak belongs to; the tail after the last minute (the
    drain of what is still in flight) counts in the last minute, anything before the start in the first."""
    return min(max(int(t // 60), 0), minutes - 1)


def minute_rows(samples: list[dict[str, Any]], latency: dict[int, dict[str, float]],
                minutes: int) -> list[dict[str, Any]]:
    """One row per minute from the ~1 s samples (dicts of bench.soak.Sample) and the per-minute latency.

    Counters (produced, rows, error lines, consumer CPU) are differences between the last sample of a minute
    and the last sample of the minute before (the topic and the table start empty; CPU and time start at the
    first sample); lag and RSS are the maximum over the minute's samples, and RSS also its last value."""
    rows: list[dict[str, Any]] = []
    first = samples[0] if samples else {"t": 0.0, "consumer_cpu_s": 0.0}
    prev: dict[str, Any] = {"t": first["t"], "consumer_cpu_s": first["consumer_cpu_s"], "produced": 0, "rows": 0,
                            "error_lines": 0, "rss_mb": 0.0}
    for m in range(minutes):
        mine = [s for s in samples if minute_of(s["t"], minutes) == m]
        last = mine[-1] if mine else prev
        seconds = last["t"] - prev["t"]
        lat = latency.get(m, {})
        rows.append({
            "minute": m + 1, "samples": len(mine),
            "produced": last["produced"] - prev["produced"], "written": last["rows"] - prev["rows"],
            "created": lat.get("created", 0), "p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms"),
            "max_ms": lat.get("max_ms"),
            "max_lag": max((s["lag"] for s in mine), default=0),
            "rss_end_mb": last["rss_mb"], "rss_max_mb": max((s["rss_mb"] for s in mine), default=last["rss_mb"]),
            "consumer_cpu_pct": round(100 * (last["consumer_cpu_s"] - prev["consumer_cpu_s"]) / seconds, 1)
            if seconds > 0 else 0.0,
            "error_lines": last["error_lines"] - prev["error_lines"],
        })
        prev = last
    return rows


def verdict(minutes: list[dict[str, Any]], rate: float, exactly_once: bool) -> dict[str, Any]:
    """Whether lag stayed bounded, RSS stopped growing, nothing logged errors and every order landed once."""
    bound = LAG_FIRST_MINUTE_FACTOR * minutes[0]["max_lag"] + rate * LAG_RATE_SECONDS
    late_lag = max(r["max_lag"] for r in minutes[len(minutes) // 2:])
    base = minutes[min(1, len(minutes) - 1)]["rss_end_mb"]
    growth = round(minutes[-1]["rss_end_mb"] - base, 1)
    errors = sum(r["error_lines"] for r in minutes)
    checks = {"lag_bounded": late_lag <= bound,
              "rss_bounded": growth <= max(RSS_GROWTH_MIN_MB, RSS_GROWTH_SHARE * base),
              "no_error_lines": errors == 0, "exactly_once": exactly_once}
    failed = [k for k, ok in checks.items() if not ok]
    return {"lag_bounded": checks["lag_bounded"], "lag_bound": round(bound), "max_lag_second_half": late_lag,
            "rss_growth_mb": growth, "rss_bounded": checks["rss_bounded"], "error_lines": errors,
            "exactly_once": exactly_once, "passed": not failed, "failed": failed, "rules": RULES}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def soak_table(results: dict[str, Any]) -> Table:
    s, v = results["soak"], results["verdict"]
    label = "SMOKE: tiny sizes, not a measurement" if results["mode"] == "soak-smoke" else "full run"
    t = Table(title=f"soak: 1 consumer, {s['rate']:,.0f} orders/s for {s['seconds'] / 60:g} min ({label})")
    for name in ("minute", "produced", "written", "p50 ms", "p99 ms", "max ms", "max lag", "RSS end MB",
                 "RSS max MB", "consumer CPU", "error lines"):
        t.add_column(name, justify="right")
    for r in s["minutes"]:
        t.add_row(str(r["minute"]), f"{r['produced']:,}", f"{r['written']:,}", _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                  _ms(r["max_ms"]), f"{r['max_lag']:,}", f"{r['rss_end_mb']:.1f}", f"{r['rss_max_mb']:.1f}",
                  f"{r['consumer_cpu_pct']:.0f}%", str(r["error_lines"]))

    def yes(ok: bool) -> str:
        return "[green]yes[/]" if ok else "[red]NO[/]"

    c = s["check"]
    t.caption = (f"lag bounded: {yes(v['lag_bounded'])} (max {v['max_lag_second_half']:,} in the second half, "
                 f"bound {v['lag_bound']:,}) · RSS growth {v['rss_growth_mb']:+.1f} MB: {yes(v['rss_bounded'])} · "
                 f"error lines: {v['error_lines']} · exactly once: {yes(v['exactly_once'])} ({c['rows']:,} rows, "
                 f"{c['distinct_order_ids']:,} distinct, {c['in_topic']:,} in the topic) · "
                 f"verdict: {'[green]passed[/]' if v['passed'] else '[red]FAILED[/] ' + ', '.join(v['failed'])}")
    return t


def chart(results: dict[str, Any], path: Path) -> None:
    """Latency p50/p99 per minute, RSS per minute (end and max), lag over time."""
    s = results["soak"]
    minutes = s["minutes"]
    xs = [r["minute"] for r in minutes]
    fig, (lat, rss, lag) = plt.subplots(1, 3, figsize=(15, 4.8))
    for key, style in (("p50_ms", ":"), ("p99_ms", "-"), ("max_ms", "--")):
        lat.plot(xs, [r[key] or 0 for r in minutes], style, marker="o", label=key[:-3])
    lat.set_xticks(xs)
    lat.set_xlabel("minute")
    lat.set_ylabel("produce-to-row latency (ms)")
    lat.set_ylim(bottom=0)
    lat.legend(fontsize=8)
    lat.set_title("Latency per minute")
    rss.plot(xs, [r["rss_end_mb"] for r in minutes], marker="o", label="at minute end")
    rss.plot(xs, [r["rss_max_mb"] for r in minutes], "--", marker=".", label="max")
    rss.set_xticks(xs)
    rss.set_xlabel("minute")
    rss.set_ylabel("consumer RSS (MB)")
    rss.set_ylim(bottom=0)
    rss.legend(fontsize=8)
    rss.set_title("Consumer memory")
    lag.plot([p["t"] for p in s["samples"]], [p["lag"] for p in s["samples"]], linewidth=1)
    lag.axhline(results["verdict"]["lag_bound"], color="#d62728", linewidth=1, linestyle="--", label="bound")
    lag.set_xlabel("seconds since the producer started")
    lag.set_ylabel("group lag (messages)")
    lag.legend(fontsize=8)
    lag.set_title("Lag")
    m = results["machine"]
    fig.suptitle(f"food-orders soak {results['date']} on {m['hostname']} ({m['logical_cpus']} CPUs): 1 consumer, "
                 f"{s['rate']:,.0f} orders/s, mode {results['mode']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
