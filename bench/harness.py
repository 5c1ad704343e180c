"""Benchmark harness: throughput and latency of the pipeline against this machine's own ceilings, in one run.

`bin/pipeline bench [--smoke]` (or `python -m bench`). Starts private ZooKeeper, Kafka and
PostgreSQL (never a local pipeline's), measures, prints a table, and writes
`bench/results/<YYYY-MM-DD>-<hostname>.json` + `.png` (smoke runs: `smoke-*`, gitignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from loguru import logger
from rich.console import Console
from rich.table import Table

from bench import ceilings, chart, phases, scaling, soak, sysinfo
from bench.context import PRODUCERS_TOPIC, Bench, Sizes, key_value, progress_bars, result_paths
from bench.infra import private_infra
from bench.peers import run as peers
from bench.peers.install import PeerSetupError

TARGETS = {
    "pipeline_1_vs_ceiling": 0.75,
    "pipeline_best_vs_ceiling": 0.9,
    "pipeline_best_vs_baseline": 20.0,
    "producer_vs_raw_produce": 0.5,
    "metrics_on_vs_off": 0.97,
}
P99_TARGETS_MS = (20.0, 100.0)  # at the first and the second latency rate (1,000 and 10,000 orders/s)
RSS_TARGET_MB = 100.0  # the largest consumer resident set in any drain
DISTURBED_PCT = 15.0  # a phase during which other processes used more of the machine than this is flagged
SMOKE = Sizes(orders=3_000, baseline=300, baseline_timeout=60, consumers=(1, 2, 3), latency_rates=(200, 2_000),
              latency_seconds=5, latency_consumers=1, phase_timeout=60)
FULL = Sizes()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI): every phase, well under 2 minutes")
    p.add_argument("--out", type=Path, help="directory for the JSON and PNG (default bench/results)")
    p.add_argument("--orders", type=int, help=f"orders in the pre-filled topic and the ceilings ({FULL.orders})")
    p.add_argument("--baseline-orders", type=int, help=f"messages for the per-message baseline ({FULL.baseline})")
    p.add_argument("--consumers", type=str, help="consumer counts to run, comma-separated (1,2,3)")
    p.add_argument("--latency-rates", type=str,
                   help="orders/s of the latency phases, comma-separated "
                        f"({','.join(f'{r:g}' for r in FULL.latency_rates)})")
    p.add_argument("--latency-seconds", type=float, help=f"duration of the latency phase ({FULL.latency_seconds:g})")
    p.add_argument("--latency-consumers", type=int, help=f"consumers in the latency phase ({FULL.latency_consumers})")
    p.add_argument("--pg-batch", type=int, help=f"rows per transaction in the PostgreSQL ceiling ({FULL.pg_batch})")
    p.add_argument("--consumer-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the pipeline consumers (e.g. CONSUMER_BATCH_TIMEOUT_MS=20);\n"
                        "repeatable; recorded in the results. Default: the pipeline's own defaults")
    p.add_argument("--consumer-module", default="pipeline.consumer",
                   help="module run as the pipeline consumer (A/B-test a variant; default pipeline.consumer)")
    p.add_argument("--keep-state", action="store_true", help="keep the servers' temp dir (logs) after the run")
    peers.add_arguments(p)
    scaling.add_arguments(p)
    soak.add_arguments(p)
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = SMOKE if args.smoke else FULL
    consumers = tuple(int(c) for c in args.consumers.split(",")) if args.consumers else base.consumers
    return Sizes(
        orders=args.orders or base.orders,
        baseline=args.baseline_orders or base.baseline,
        baseline_timeout=base.baseline_timeout,
        consumers=consumers,
        latency_rates=(tuple(float(r) for r in args.latency_rates.split(",")) if args.latency_rates
                       else base.latency_rates),
        latency_seconds=args.latency_seconds or base.latency_seconds,
        latency_consumers=args.latency_consumers or base.latency_consumers,
        # The PostgreSQL ceiling uses the consumers' batch size unless told otherwise.
        pg_batch=args.pg_batch or int(dict(key_value(kv) for kv in args.consumer_env).get(
            "CONSUMER_BATCH_SIZE", base.pg_batch)),
        phase_timeout=max(base.phase_timeout, (args.orders or base.orders) / 500),
        consumer_env=tuple(key_value(kv) for kv in args.consumer_env),
        consumer_module=args.consumer_module,
    )


def ratios(p: dict[str, Any]) -> dict[str, Any]:
    """Every ratio from figures of this one run."""
    ceiling = min(p["ceiling_consume"]["rate"], p["ceiling_postgres"]["rate"])
    high = next((k for k in p if k.startswith("latency_")), None)
    pipes = {k: v for k, v in p.items() if k.startswith("pipeline_")}
    best_key = max(pipes, key=lambda k: pipes[k]["rate"])
    one = pipes.get("pipeline_1", pipes[min(pipes)])
    best = pipes[best_key]
    values = {
        "ceiling_used": "postgres" if p["ceiling_postgres"]["rate"] <= p["ceiling_consume"]["rate"] else "consume",
        "ceiling_rate": ceiling,
        "best_consumers": best["processes"],
        "pipeline_1_vs_ceiling": one["rate"] / ceiling,
        "pipeline_best_vs_ceiling": best["rate"] / ceiling,
        "pipeline_best_all_active_vs_ceiling": max(v.get("rate_all_active") or 0 for v in pipes.values()) / ceiling,
        "pipeline_1_vs_baseline": one["rate"] / p["baseline"]["rate"],
        "pipeline_best_vs_baseline": best["rate"] / p["baseline"]["rate"],
        "producer_vs_raw_produce": p["producer"]["rate"] / p["ceiling_produce"]["rate"],
        "producers_2_vs_raw_produce": p["producer_2"]["rate"] / p["ceiling_produce"]["rate"],
        "latency_p99_ms": p["latency"]["p99_ms"],
        "latency_high_p99_ms": p[high]["p99_ms"] if high else None,
        "consumer_rss_max_mb": max((v.get("consumer_rss_max_mb") or 0 for v in pipes.values()), default=0),
        "metrics_on_vs_off": p["metrics_cost"]["ratio_median"],
    }
    checks = {k: values[k] >= t for k, t in TARGETS.items()}
    checks["latency_p99_ms"] = values["latency_p99_ms"] <= P99_TARGETS_MS[0]
    if high:
        checks["latency_high_p99_ms"] = values["latency_high_p99_ms"] <= P99_TARGETS_MS[1]
    checks["consumer_rss_max_mb"] = values["consumer_rss_max_mb"] <= RSS_TARGET_MB
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}
    targets = {**TARGETS, "latency_p99_ms": P99_TARGETS_MS[0], "latency_high_p99_ms": P99_TARGETS_MS[1],
               "consumer_rss_max_mb": RSS_TARGET_MB}
    return {**rounded, "targets": targets, "met": checks}


def figures_table(p: dict[str, Any]) -> Table:
    t = Table(title="food-orders benchmark", show_lines=False)
    t.add_column("phase")
    t.add_column("rate /s", justify="right")
    t.add_column("seconds", justify="right")
    t.add_column("CPU s (clients+harness / kafka / postgres)", justify="right")
    t.add_column("machine busy", justify="right")
    t.add_column("other load", justify="right")

    def row(name: str, r: dict[str, Any], secs: float) -> None:
        cpu = r.get("cpu_s", {})
        client = sum(v for k, v in cpu.items() if k.startswith(("consumer_", "producer", "harness")))
        client_s = f"{client:.1f}" if client else "-"
        t.add_row(name, f"{r['rate']:,.0f}", f"{secs:.2f}",
                  f"{client_s} / {cpu.get('kafka', 0):.1f} / {cpu.get('postgres', 0):.1f}",
                  f"{cpu.get('machine_busy_pct', 0):.0f}%", f"{cpu.get('foreign_pct', 0):.0f}%")

    row("(a) ceiling: Kafka consume, no processing", p["ceiling_consume"], p["ceiling_consume"]["seconds"])
    row("(b) ceiling: PostgreSQL COPY + INSERT", p["ceiling_postgres"], p["ceiling_postgres"]["seconds"])
    sw = p["ceiling_postgres"]["store_write"]
    t.add_row("    reference: OrderStore.write (formats rows)", f"{sw['rate']:,.0f}", f"{sw['seconds']:.2f}",
              "", "", "")
    row("(c) ceiling: Kafka produce, pre-serialized", p["ceiling_produce"], p["ceiling_produce"]["seconds"])
    row("pipeline producer (incl. generation)", p["producer"], p["producer"]["seconds"])
    row("pipeline producer, 2 processes", p["producer_2"], p["producer_2"]["seconds"])
    row("baseline: per-message consumer", p["baseline"], p["baseline"]["seconds_first_to_last_row"])
    for k, v in p.items():
        if k.startswith("pipeline_"):
            row(f"pipeline: {v['processes']} consumer(s)", v, v["seconds_first_to_last_row"])
            if v["processes"] > 1 and v.get("rate_all_active"):
                t.add_row("    same, while all were writing", f"{v['rate_all_active']:,.0f}", "", "", "", "")
    for lat in (v for k, v in p.items() if k == "latency" or k.startswith("latency_")):
        t.add_row(f"latency @ {lat['achieved_rate']:,.0f}/s, {lat['consumers']} consumer(s)",
                  f"p50 {lat['p50_ms']:.0f} / p95 {lat['p95_ms']:.0f} / p99 {lat['p99_ms']:.0f} ms",
                  f"{lat['seconds']:g}", "", f"{lat['cpu_s'].get('machine_busy_pct', 0):.0f}%",
                  f"{lat['cpu_s'].get('foreign_pct', 0):.0f}%")
    return t


def ratios_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"ratios (ceiling = {r['ceiling_used']}, {r['ceiling_rate']:,.0f}/s)")
    t.add_column("ratio")
    t.add_column("measured", justify="right")
    t.add_column("target", justify="right")
    t.add_column("met")
    names = {
        "pipeline_1_vs_ceiling": "pipeline (1 consumer) / min ceiling (a, b)",
        "pipeline_best_vs_ceiling": f"pipeline (best, {r['best_consumers']} consumers) / min ceiling (a, b)",
        "pipeline_best_all_active_vs_ceiling": "pipeline (best, while all consumers wrote) / min ceiling",
        "pipeline_1_vs_baseline": "pipeline (1 consumer) / baseline",
        "pipeline_best_vs_baseline": "pipeline (best) / baseline",
        "producer_vs_raw_produce": "producer (1 process) / raw produce",
        "producers_2_vs_raw_produce": "producer (2 processes) / raw produce",
        "latency_p99_ms": "latency p99 (ms) at the first steady rate",
        "latency_high_p99_ms": "latency p99 (ms) at the second steady rate",
        "consumer_rss_max_mb": "largest consumer RSS in any drain (MB)",
        "metrics_on_vs_off": "1 consumer, metrics on / off (median of pairs)",
    }
    for key, label in names.items():
        target = r["targets"].get(key)
        met = r["met"].get(key)
        at_most = key in ("latency_p99_ms", "latency_high_p99_ms", "consumer_rss_max_mb")
        target_s = "-" if target is None else (f"<= {target:g}" if at_most else f">= {target:g}")
        met_s = "-" if met is None else ("[green]yes[/]" if met else "[red]no[/]")
        value = r.get(key)
        if value is None:
            continue
        t.add_row(label, f"{value:,.3f}" if value < 10 else f"{value:,.1f}", target_s, met_s)
    return t


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    sizes = sizes_from(args)
    mode = "smoke" if args.smoke else "full"
    results: dict[str, Any] = {"date": date.today().isoformat(), "mode": mode, "sizes": sizes.__dict__ | {
        "consumers": list(sizes.consumers), "consumer_env": dict(sizes.consumer_env)}}
    if sizes.consumer_module != "pipeline.consumer":
        mode += f" (consumer {sizes.consumer_module})"
        results["mode"] = mode
    started = time.monotonic()
    console.print(f"[bold]food-orders bench[/] ({mode}): starting private ZooKeeper, Kafka, PostgreSQL ...")
    with private_infra(keep_state=args.keep_state) as infra:
        results["machine"] = sysinfo.machine(infra)
        progress = progress_bars(console)
        bench = Bench(infra, sizes, progress)
        p: dict[str, Any] = {}
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("ceiling_produce", lambda: ceilings.ceiling_produce(bench)),
            ("producer", lambda: phases.pipeline_producer(bench)),
            # Two processes, as `numprocs = 2` of the producer program would run them (own topic).
            ("producer_2", lambda: phases.pipeline_producer(bench, 2, PRODUCERS_TOPIC)),
            ("ceiling_consume", lambda: ceilings.ceiling_consume(bench)),
            ("ceiling_postgres", lambda: ceilings.ceiling_postgres(bench)),
            ("baseline", lambda: phases.baseline(bench)),
            *[(f"pipeline_{n}", lambda n=n: phases.pipeline_consumers(bench, n))
              for n in sizes.consumers],
            *[(f"latency_{rate:g}" if i else "latency", lambda rate=rate: phases.latency(bench, rate))
              for i, rate in enumerate(sizes.latency_rates)],
            ("metrics_cost", lambda: phases.metrics_cost(bench, 1 if args.smoke else 3)),
        ]
        with progress:
            for name, step in steps:
                p[name] = step()
                if name == "ceiling_postgres":
                    bench.messages = []  # free the copy of the topic
        results["phases"] = p
        latencies = bench.latencies_ms
    results["ratios"] = ratios(p)
    results["disturbed_phases"] = {k: v["cpu_s"]["foreign_pct"] for k, v in p.items()
                                   if v.get("cpu_s", {}).get("foreign_pct", 0) > DISTURBED_PCT
                                   and v["cpu_s"].get("wall_s", 0) >= 1.0}  # sub-second phases are noise
    results["total_seconds"] = round(time.monotonic() - started, 1)
    json_path, png_path = result_paths(args.out, "", args.smoke, results["date"])
    results["chart"] = png_path.name
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    chart.draw(results, latencies, png_path)
    console.print(figures_table(p))
    console.print(ratios_table(results["ratios"]))
    if results["disturbed_phases"]:
        console.print(f"[yellow]warning:[/] other processes used > {DISTURBED_PCT:g}% of the machine during "
                      f"{', '.join(results['disturbed_phases'])}: those figures (and ratios using them) are "
                      "depressed; re-run on a quiet machine")
    console.print(f"wrote {json_path} and {png_path.name} in {results['total_seconds']:.0f}s")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logger.disable("pipeline")  # in-process pipeline calls (migrations, topics) would log over the progress bars
    console = Console()
    if not console.is_terminal:
        console = Console(width=132)
    try:
        if peers.wanted(args):
            peers.run_peers(args, console)
        elif scaling.wanted(args):
            scaling.run(args, console, sizes_from(args).consumer_env)
        elif soak.wanted(args):
            soak.run(args, console, sizes_from(args).consumer_env)
        else:
            run(args, console)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]; servers stopped")
        return 130
    except PeerSetupError as e:  # one line: what is missing or could not be downloaded
        console.print(f"[red]bench --peers:[/] {e}", soft_wrap=True)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the operator, the trace for the developer
        console.print(f"[red]bench failed:[/] {e}")
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        logger.enable("pipeline")  # main() may run inside a test session
    return 0


if __name__ == "__main__":
    sys.exit(main())
