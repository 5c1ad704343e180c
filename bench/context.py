"""What every benchmark phase shares: sizes, the run context, topic names, helpers."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bench.infra import REPO, BenchInfra
from pipeline.mockdata import OrderGenerator, new_order_id
from pipeline.settings import Settings

ORDERS_TOPIC = "bench-orders"
RAW_TOPIC = "bench-raw"
LATENCY_TOPIC = "bench-latency"
PRODUCERS_TOPIC = "bench-producers"  # the two-producer phase's own topic (the orders topic holds N once)
PARTITIONS = 3
SEED = 20_260_101
RAW_PRODUCE_RUNS = 3

Result = dict[str, Any]
RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Sizes:
    """How much work each phase does (flags of the harness)."""

    orders: int = 200_000
    baseline: int = 10_000
    baseline_timeout: float = 120.0
    consumers: tuple[int, ...] = (1, 2, 3)
    latency_rates: tuple[float, ...] = (1_000.0, 10_000.0)  # the first is the phase "latency"
    latency_seconds: float = 60.0
    latency_consumers: int = 1
    pg_batch: int = Settings().consumer_batch_size  # the PostgreSQL ceiling batches like the consumers
    phase_timeout: float = 300.0
    consumer_env: tuple[tuple[str, str], ...] = ()  # extra environment for pipeline.consumer (experiments)
    consumer_module: str = "pipeline.consumer"


@dataclass
class Bench:
    """What every phase needs: the servers, the sizes, the progress display, and shared data."""

    infra: BenchInfra
    sizes: Sizes
    progress: Progress
    messages: list[tuple[int, int, bytes, bytes]] = field(default_factory=list)  # partition, offset, key, value
    latencies_ms: list[float] = field(default_factory=list)

    def task(self, description: str, total: float) -> TaskID:
        return self.progress.add_task(description, total=total)

    def server_pids(self) -> dict[str, int | None]:
        s = self.infra.services
        return {"kafka": s.kafka().pid(), "zookeeper": s.zookeeper().pid(), "postgres": s.postgres().pid(),
                "harness": os.getpid()}


def rate(n: float, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def generate(n: int) -> list[tuple[bytes, bytes]]:
    gen = OrderGenerator(SEED)
    return [gen.next_order_json(new_order_id(), datetime.now(UTC)) for _ in range(n)]


def key_value(text: str) -> tuple[str, str]:
    """One `--consumer-env KEY=VALUE` argument."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--consumer-env: expected KEY=VALUE, got {text!r}")
    return key, value


def result_paths(out: Path | None, kind: str, smoke: bool, day: str) -> tuple[Path, Path]:
    """Where a run writes its JSON and PNG: `[smoke-][<kind>-]<date>-<hostname>` in `out` or bench/results."""
    directory = out or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{'smoke-' if smoke else ''}{kind + '-' if kind else ''}{day}-{socket.gethostname()}"
    return directory / f"{stem}.json", directory / f"{stem}.png"


def progress_bars(console: Console) -> Progress:
    """The progress display every kind of run shows, one bar per phase."""
    return Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
