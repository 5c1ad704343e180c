"""How `bin/pipeline` shows what it found: the status tables, the chaos verdicts, dead letters (rich)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pipeline.chaos import Check
    from pipeline.dlq_tools import Letter


def show_status(console: Console, snap: dict[str, Any]) -> None:
    procs = Table(title="Processes (supervisord)", title_justify="left")
    for col in ("name", "state", "pid", "uptime"):
        procs.add_column(col)
    for p in snap["processes"] or []:
        procs.add_row(p["name"], p["state"], str(p["pid"] or "-"), _duration(p["uptime_s"]))
    console.print(procs if snap["processes"] is not None else "[yellow]processes: unknown (supervisord is not "
                                                                "running)[/]")

    members = snap["group"]["members"]
    topic = snap["topic"]
    group = Table(title=f"Consumer group {snap['group']['id']} on {topic['name']} "
                        f"({topic['partitions'] or '?'} partitions)", title_justify="left")
    for col in ("client.id", "host", "instance", "process (pid now)", "partitions"):
        group.add_column(col)
    for m in members or []:
        proc = f"{m['process']} ({m['pid']})" if m["process"] else "-"
        if m["pid"] and not m["client_id"].endswith(f"-{m['pid']}"):
            proc += " [dim]*[/]"
        group.add_row(m["client_id"], m["host"], m["instance_id"] or "-", proc,
                      ", ".join(map(str, m["partitions"])) or "[dim]idle[/]")
    console.print(group if members is not None else "[yellow]consumer group: unknown (Kafka unreachable)[/]")
    if any(m["pid"] and not m["client_id"].endswith(f"-{m['pid']}") for m in members or []):
        console.print("[dim]* restarted without a rebalance (static membership): the coordinator still shows "
                      "the client.id of the previous pid until the next rebalance[/]")

    if snap["lag"] is None:
        console.print("[yellow]lag: unknown (Kafka unreachable or topic missing)[/]")
    else:
        age = snap["max_lag_seconds"]
        lag = Table(title=f"Lag (total {snap['total_lag']}, oldest unconsumed "
                          f"{'unknown' if age is None else f'{age:.1f}s'})", title_justify="left")
        for col in ("partition", "committed", "end", "lag", "lag s"):
            lag.add_column(col, justify="right")
        for r in snap["lag"]:
            lag.add_row(str(r["partition"]), str(r["committed"] if r["committed"] is not None else "-"),
                        str(r["end"]), str(r["lag"]), "?" if r["lag_seconds"] is None else f"{r['lag_seconds']:.1f}")
        console.print(lag)

    db = snap["database"]
    if db is None:
        console.print("[yellow]database: unknown (PostgreSQL unreachable)[/]")
    else:
        stats = ("match the rows, customer by customer" if not db["stats_mismatches"] else
                 f"[red]DO NOT match the rows for {db['stats_mismatches']} customers[/]")
        console.print(f"database: {db['orders']} orders, {db['unique_customers']} customers, average order "
                      f"{db['avg_order_value']:.2f}, duplicate order ids {db['duplicate_order_ids']}, "
                      f"customer_stats {stats}")
    letters = snap["dlq"]["messages"]
    console.print(f"dead-letter queue {snap['dlq']['topic']}: "
                  f"{'unknown (Kafka unreachable)' if letters is None else f'{letters} letters present'}")
    degraded = snap["degraded"]
    console.print("degraded consumers: " + ("unknown (no metrics directory)" if degraded is None else
                                            ", ".join(degraded) or "none"))


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def show_chaos(console: Console, checks: list[Check], counts: Counter[str]) -> bool:
    """The faults injected and a verdict per check; True when every check held."""
    table = Table(title="chaos verdicts", title_justify="left")
    for col in ("check", "expected", "found", "verdict"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, c.expected, c.found, "[green]OK[/]" if c.ok else "[red]VIOLATED[/]")
    console.print(f"faults: {', '.join(f'{name} {n}' for name, n in sorted(counts.items())) or 'none'}")
    console.print(table)
    ok = all(c.ok for c in checks)
    console.print("verdict: " + ("OK, nothing lost, nothing doubled, nothing reordered" if ok else "FAILED"))
    return ok


def show_letters(console: Console, topic: str, letters: list[Letter], error: str | None,
                 since: datetime | None) -> None:
    table = Table(title=f"{topic}: {len(letters)} letter(s)" + (f" with error {error}" if error else "")
                  + (f" since {since:%Y-%m-%d %H:%M:%S}" if since else ""), title_justify="left")
    for col in ("offset", "time (UTC)", "error", "source", "replays", "key", "detail"):
        table.add_column(col, overflow="fold")
    for x in letters:
        j = x.as_json()
        table.add_row(f"{x.partition}@{x.offset}", j["time"][:19].replace("T", " "), x.error, j["source"],
                      str(x.replay_count), (j["key"] or "-")[:24], x.detail[:80])
    console.print(table)
