"""The comparison of `bench --peers`: its rows (the pipeline with 1 and with its best N consumers, then
each peer), the rich table, and where the results file goes."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from bench.context import Result


def table_rows(runs: dict[str, Result]) -> list[dict[str, Any]]:
    """The rows of the comparison: pipeline with 1 consumer and with its best N, then each peer."""
    rows = []
    pipes = {k: v for k, v in runs.items() if k.startswith("pipeline_")}
    if pipes:
        one = pipes.get("pipeline_1")
        best_key = max(pipes, key=lambda k: pipes[k]["rate_after_first_row"] or 0)
        if one is not None:
            rows.append(_row("pipeline, 1 consumer", "pipeline_1", one))
        if best_key != "pipeline_1" or one is None:
            best = pipes[best_key]
            rows.append(_row(f"pipeline, best N = {best['processes']} consumers", best_key, best))
        else:
            rows.append(_row("pipeline, best N = 1 consumer", best_key, pipes[best_key]))
    if "connect" in runs:
        rows.append(_row("Kafka Connect + Debezium JDBC sink", "connect", runs["connect"]))
    if "quix" in runs:
        rows.append(_row("Quix Streams + PostgreSQLSink", "quix", runs["quix"]))
    return rows


def _row(name: str, key: str, r: Result) -> dict[str, Any]:
    return {"sink": name, "run": key, "orders_per_s_start_to_last_row": r["rate_start_to_last_row"],
            "orders_per_s_after_first_row": r["rate_after_first_row"], "startup_s": r["startup_seconds"],
            "sink_cpu_s": r["sink_cpu_s"], "postgres_cpu_s": r["postgres_backends_cpu_s"],
            "rows_correct": r["check"]["correct"] and r["check"].get("same_content") is not False,
            "rows": r["check"]["rows"],
            "other_load_pct": r["cpu_s"].get("foreign_pct")}


def peers_table(results: dict[str, Any]) -> Table:
    n = results["sizes"]["orders"]
    label = "SMOKE: tiny sizes, not a measurement" if results["mode"] == "peers-smoke" else "full run"
    t = Table(title=f"draining {n:,} orders into PostgreSQL ({label})")
    t.add_column("sink", no_wrap=True)
    t.add_column("orders/s\nstart to last row", justify="right")
    t.add_column("orders/s\nafter first row", justify="right")
    t.add_column("start-up s", justify="right")
    t.add_column("sink CPU s", justify="right")
    t.add_column("PostgreSQL\nCPU s", justify="right")
    t.add_column("rows correct")
    t.add_column("other load", justify="right")
    for row in results["table"]:
        after = row["orders_per_s_after_first_row"]
        pg = row["postgres_cpu_s"]
        correct = f"[green]yes[/] ({row['rows']:,})" if row["rows_correct"] else f"[red]NO[/] ({row['rows']:,})"
        t.add_row(row["sink"], f"{row['orders_per_s_start_to_last_row']:,.0f}",
                  "-" if after is None else f"{after:,.0f}", f"{row['startup_s']:.2f}", f"{row['sink_cpu_s']:.2f}",
                  "-" if pg is None else f"{pg:.2f}", correct, f"{row['other_load_pct'] or 0:.0f}%")
    return t
