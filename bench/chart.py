"""The PNG chart of one run: throughput against the ceilings, and the latency distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def draw(results: dict[str, Any], latencies_ms: list[float], path: Path) -> None:
    phases = results["phases"]
    bars: list[tuple[str, float, str]] = [
        ("ceiling: Kafka consume", phases["ceiling_consume"]["rate"], "#9e9e9e"),
        ("ceiling: PostgreSQL COPY", phases["ceiling_postgres"]["rate"], "#9e9e9e"),
        ("ceiling: Kafka produce", phases["ceiling_produce"]["rate"], "#9e9e9e"),
        ("pipeline producer", phases["producer"]["rate"], "#1f77b4"),
        *([("pipeline producer, 2 processes", phases["producer_2"]["rate"], "#1f77b4")]
          if "producer_2" in phases else []),
        ("baseline (per message)", phases["baseline"]["rate"], "#d62728"),
    ]
    for key, value in phases.items():
        if key.startswith("pipeline_"):
            bars.append((f"pipeline, {value['processes']} consumer(s)", value["rate"], "#2ca02c"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    left.barh(labels, values, color=[b[2] for b in bars][::-1])
    left.set_xscale("log")
    left.set_xlabel("messages / orders per second (log scale)")
    for y, v in enumerate(values):
        left.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    left.set_xlim(right=max(values) * 4)
    ratios = results.get("ratios", {})
    targets = ratios.get("targets", {})
    if ratios.get("ceiling_rate") and "pipeline_1_vs_ceiling" in targets:
        share = targets["pipeline_1_vs_ceiling"]
        target = share * ratios["ceiling_rate"]
        left.axvline(target, color="#2ca02c", linestyle="--", linewidth=1)
        left.text(target, len(values) - 0.45, f" target for 1 consumer: {share:g} x ceiling = {target:,.0f}/s",
                  fontsize=7, color="#2ca02c")
    left.set_title("Throughput vs this machine's ceilings")

    lat = phases["latency"]
    if latencies_ms:
        ordered = sorted(latencies_ms)
        n = len(ordered)
        right.plot(ordered, [100 * (i + 1) / n for i in range(n)], color="#1f77b4")
    for q, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-.")):
        right.axvline(lat[q], color="#555555", linestyle=style, label=f"{q[:3]} {lat[q]:.0f} ms")
    p99_target = targets.get("latency_p99_ms")
    if p99_target:
        right.axvline(p99_target, color="#d62728", linewidth=1, label=f"target p99 {p99_target:g} ms")
    right.set_xlabel("produce-to-row latency (ms)")
    right.set_ylabel("% of orders")
    right.set_title(f"Latency at {lat['target_rate']:g} orders/s, {lat['consumers']} consumer(s)")
    right.legend(loc="lower right", fontsize=8)
    m = results["machine"]
    fig.suptitle(f"food-orders bench {results['date']} on {m['hostname']} ({m['logical_cpus']} CPUs, "
                 f"{m['cpu_model']}), mode {results['mode']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
