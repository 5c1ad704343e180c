"""`bin/pipeline top`: a live view of the host, refreshed every second, from the same collectors the
metrics endpoint serves (built in-process, so it works while the `metrics` program is down).

Per process: state and rate; per partition: lag with a sparkline of the last minute and its age;
end-to-end latency percentiles and DB rows/s over the last WINDOW seconds; dead letters by error code;
degraded flags. `q` or Ctrl-C quits; it fits 80 columns.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

SPARKS = "▁▂▃▄▅▆▇█"
WINDOW = 10.0  # seconds over which rates and latency percentiles are computed
HISTORY = 60  # lag samples kept per partition for its sparkline


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Prometheus text format → {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one name whose labels include `labels`."""
    want = set(labels.items())
    return {lbl: v for (n, lbl), v in samples.items() if n == name and want <= set(lbl)}


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(pick(samples, name, **labels).values())


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for lbl, v in pick(samples, name).items():
        key = dict(lbl).get(label, "")
        out[key] = out.get(key, 0.0) + v
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts {upper bound: count}; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            width = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width if width else 1.0)
        prev_bound, prev_count = bound, count
    return prev_bound


def histogram_delta(now: Samples, before: Samples, name: str) -> dict[float, float]:
    out = {}
    for (n, lbl), v in now.items():
        if n == f"{name}_bucket":
            le = float(dict(lbl)["le"])
            out[le] = v - before.get((n, lbl), 0.0)
    return out


def sparkline(values: list[float], width: int) -> str:
    values = values[-width:]
    top = max(values, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] for v in values)


@dataclass
class History:
    """Scrapes over time: rates and percentiles come from the difference to one WINDOW ago."""

    frames: deque[tuple[float, Samples]] = field(default_factory=lambda: deque(maxlen=600))
    lags: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, at: float, samples: Samples) -> None:
        self.frames.append((at, samples))
        for lbl, v in pick(samples, "food_orders_consumer_lag_messages").items():
            self.lags.setdefault(dict(lbl)["partition"], deque(maxlen=HISTORY)).append(v)

    def window(self) -> tuple[float, Samples, Samples]:
        """(seconds between, oldest frame within WINDOW, newest)."""
        at, now = self.frames[-1]
        then_at, then = self.frames[0]
        for t, s in self.frames:
            if at - t <= WINDOW:
                then_at, then = t, s
                break
        return at - then_at, then, now

    def rate(self, name: str, **labels: str) -> float | None:
        seconds, then, now = self.window()
        if seconds <= 0:
            return None
        return max(0.0, total(now, name, **labels) - total(then, name, **labels)) / seconds


def render(history: History, host: str, interval: float) -> Group:
    _seconds, then, now = history.window()
    head = Text.assemble(("food-orders top", "bold"), f"  {host}  {time.strftime('%H:%M:%S')}  ",
                         (f"every {interval:g}s, rates over {WINDOW:g}s  q quits", "dim"))
    servers = Text("servers: ")
    for lbl, up in sorted(pick(now, "food_orders_server_up").items()):
        servers.append(f"{dict(lbl)['server']} ", style="green" if up else "bold red")
        servers.append("up  " if up else "DOWN  ", style="green" if up else "bold red")

    procs = Table(box=None, pad_edge=False, expand=False, header_style="bold")
    for col, justify in (("process", "left"), ("state", "left"), ("orders/s", "right"), ("partitions", "right"),
                         ("degraded", "left")):
        procs.add_column(col, justify=justify)  # type: ignore[arg-type]
    degraded = {(dict(lbl)["process"], dict(lbl)["dependency"]) for lbl, v in
                pick(now, "food_orders_consumer_degraded").items() if v}
    assigned = {dict(lbl)["process"]: v for lbl, v in pick(now, "food_orders_assigned_partitions").items()}
    for lbl, up in sorted(pick(now, "food_orders_program_up").items()):
        name = dict(lbl)["program"].split(":")[-1]
        if name.startswith("consumer"):
            r = history.rate("food_orders_consumer_messages_total", process=name)
        elif name == "producer":
            r = history.rate("food_orders_producer_orders_generated_total", process=name)
        else:
            r = None
        down = ", ".join(d for p, d in degraded if p == name)
        procs.add_row(name, Text("RUNNING" if up else "not running", style="green" if up else "bold red"),
                      "-" if r is None else f"{r:,.0f}", f"{assigned[name]:.0f}" if name in assigned else "",
                      Text(down or "", style="bold yellow"))

    lag = Table(box=None, pad_edge=False, header_style="bold")
    for col, justify in (("partition", "right"), ("lag", "right"), ("age s", "right"), ("last minute", "left")):
        lag.add_column(col, justify=justify)  # type: ignore[arg-type]
    ages = {dict(lbl)["partition"]: v for lbl, v in pick(now, "food_orders_consumer_lag_seconds").items()}
    for part, values in sorted(history.lags.items(), key=lambda kv: int(kv[0])):
        lag.add_row(part, f"{values[-1]:,.0f}", f"{ages[part]:.1f}" if part in ages else "?",
                    Text(sparkline(list(values), 40), style="cyan"))

    latency = histogram_delta(now, then, "food_orders_end_to_end_latency_seconds")
    pcts = [(q, quantile(q, latency)) for q in (0.5, 0.9, 0.99)]
    lat = "  ".join(f"p{int(q * 100)} {_ms(v)}" for q, v in pcts)
    rows = history.rate("food_orders_orders_inserted_total")
    dead = by_label(now, "food_orders_dead_letters_total", "error")
    letters = total(now, "food_orders_dead_letter_queue_messages")
    summary = Text.assemble(
        ("end-to-end latency ", "bold"), lat or "-", "\n",
        ("DB rows/s ", "bold"), "-" if rows is None else f"{rows:,.0f}",
        ("   DLQ letters present ", "bold"), f"{letters:,.0f}", "\n",
        ("dead-lettered since start ", "bold"),
        ", ".join(f"{code} {n:,.0f}" for code, n in sorted(dead.items())) or "none",
    )
    return Group(head, servers, Text(""), procs, Text(""), lag, Text(""), summary)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.0f}s"


@contextlib.contextmanager
def keys() -> Iterator[Any]:
    """Single key presses from a terminal (cbreak), restored on exit; nothing when stdin is not a tty."""
    if not sys.stdin.isatty():
        yield lambda: None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> str | None:
        ready, _, _ = select.select([fd], [], [], 0)
        return os.read(fd, 1).decode(errors="ignore") if ready else None

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(scrape: Any, interval: float = 1.0, once: bool = False, console: Console | None = None) -> int:
    """`scrape()` returns the exposition text; `once` prints a single frame (after two scrapes, so
    rates are known) and returns."""
    console = console or Console()
    history = History()
    host = socket.gethostname()
    history.add(time.monotonic(), parse(scrape()))
    if once:
        time.sleep(interval)
        history.add(time.monotonic(), parse(scrape()))
        console.print(render(history, host, interval))
        return 0
    try:
        with keys() as key, Live(render(history, host, interval), console=console, screen=False,
                                 auto_refresh=False) as live:
            next_at = time.monotonic()
            while True:
                next_at += interval
                while time.monotonic() < next_at:
                    if key() in ("q", "Q"):
                        return 0
                    time.sleep(0.05)
                history.add(time.monotonic(), parse(scrape()))
                live.update(render(history, host, interval), refresh=True)
    except KeyboardInterrupt:
        return 0
