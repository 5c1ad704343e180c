"""`bin/pipeline bench --soak` / `--soak-smoke`: one consumer under a steady load for minutes; does anything drift?

1. The rate R: `--soak-rate`, or 80 % of the 1-consumer maximum measured first in the same run (the orders
   topic filled by `bench.phases.pipeline_producer` with `--orders`, default 200,000, drained like
   `bench.phases.pipeline_consumers(b, 1)`; recorded as `max_1_consumer`).
2. One `python -m pipeline.consumer` on a fresh topic `bench-soak` (3 partitions) and a fresh database,
   waited for until its group is Stable with every partition; then `python -m pipeline.producer` with
   PRODUCER_RATE=R, PRODUCER_MAX_ORDERS=R x duration (`--soak-minutes`, default 10).
3. Every ~1 s (`Sampler`): the consumer's RSS and CPU (psutil), the group's lag (end offsets minus the
   group's committed offsets), the topic's end offsets (orders produced), rows in `orders`, and lines at
   level ERROR or CRITICAL, or starting a traceback, in the consumer's and the producer's log files.
4. After the producer exits and every order is written: the processes are stopped, and every produced
   order must be in PostgreSQL exactly once (count = distinct order ids = the topic's end offsets = R x duration).

Per minute of the run (samples by their time since the producer was spawned; the drain's tail after the last
minute counts in the last minute): orders produced and written, p50/p99/max latency of the orders *created*
in that minute (processed_at - created_at, as the latency phase), max lag, RSS at the minute's end and max,
consumer CPU %, error lines. Verdict: see `verdict`. Writes `bench/results/soak-<date>-<host>.json` + `.png`
(smoke: `smoke-soak-*`, gitignored). Smoke: 1 minute at a fixed 500 orders/s, no maximum measured.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psutil
import psycopg2
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console

from bench import phases, sysinfo
from bench.context import Bench, Sizes, progress_bars, result_paths
from bench.infra import private_infra, stop
from bench.measure import CpuMeter, RowCounter, wait_group_stable
from bench.soak_report import chart, minute_rows, soak_table, verdict
from pipeline.kafka_admin import ensure_topics
from pipeline.store import OrderStore

TOPIC = "bench-soak"
PARTITIONS = 3
FULL_MINUTES, SMOKE_MINUTES, SMOKE_RATE = 10.0, 1.0, 500.0
SHARE_OF_MAX = 0.8
_ERROR_LINE = re.compile(rb"^\S+ \S+ (ERROR|CRITICAL)\b|^Traceback |\"level\": \"(ERROR|CRITICAL)\"")
_MINUTE_SQL = """
SELECT least(greatest(floor((extract(epoch FROM created_at) - %(t0)s) / 60), 0), %(last)s)::int AS minute,
       count(*),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)),
       max(extract(epoch FROM processed_at - created_at))
FROM orders GROUP BY 1 ORDER BY 1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The harness's soak options (bench/harness.py calls this)."""
    g = p.add_argument_group("soak (bench/soak.py)")
    g.add_argument("--soak", action="store_true",
                   help="1 consumer under a steady producer for --soak-minutes: per-minute latency, lag, RSS,\n"
                        "error lines, then an exactly-once check; rate 80%% of a 1-consumer maximum measured\n"
                        "first (--orders) unless --soak-rate; writes bench/results/soak-<date>-<host>.json + .png")
    g.add_argument("--soak-smoke", action="store_true",
                   help=f"--soak for {SMOKE_MINUTES:g} minute at {SMOKE_RATE:g} orders/s, no maximum measured")
    g.add_argument("--soak-rate", type=float, help="orders/s of the soak (default: 80%% of the measured maximum)")
    g.add_argument("--soak-minutes", type=float, help=f"duration of the soak ({FULL_MINUTES:g})")


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.soak or args.soak_smoke)


@dataclass(frozen=True)
class Sample:
    """One look at the running soak, `t` seconds after the producer was spawned."""

    t: float
    rss_mb: float
    consumer_cpu_s: float
    lag: int
    produced: int  # end offsets of the topic
    rows: int
    error_lines: int  # so far, consumer + producer logs


class ErrorLines:
    """Counts error lines in log files, reading only what was appended since the last call."""

    def __init__(self, paths: list[Path]) -> None:
        self._offsets = dict.fromkeys(paths, 0)
        self._partial = dict.fromkeys(paths, b"")
        self.count = 0

    def __call__(self) -> int:
        for path, offset in self._offsets.items():
            if not path.exists():
                continue
            with path.open("rb") as f:
                f.seek(offset)
                data = self._partial[path] + f.read()
                self._offsets[path] = f.tell()
            *lines, self._partial[path] = data.split(b"\n")
            self.count += sum(1 for line in lines if _ERROR_LINE.search(line))
        return self.count


class Sampler:
    """RSS and CPU of the consumer, the group's lag and the topic's end offsets, rows, error lines."""

    def __init__(self, bootstrap: str, group: str, consumer_pid: int, url: str, logs: list[Path]) -> None:
        self._proc = psutil.Process(consumer_pid)
        self._kafka = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                                "log_level": 3})
        self._tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        self._rows = RowCounter(url)
        self._errors = ErrorLines(logs)
        self._last = (0, 0)

    def lag_and_end(self) -> tuple[int, int]:
        """(end offsets - committed offsets of the group, end offsets), over the topic's partitions."""
        try:
            ends = [self._kafka.get_watermark_offsets(tp, timeout=5)[1] for tp in self._tps]
            committed = [max(0, tp.offset) for tp in self._kafka.committed(self._tps, timeout=5)]
            self._last = (sum(ends) - sum(committed), sum(ends))
        except Exception:  # noqa: BLE001 - a slow broker answer: keep the last figures, try again next second
            pass
        return self._last

    def __call__(self, t: float) -> Sample:
        try:
            cpu = self._proc.cpu_times()
            rss, cpu_s = self._proc.memory_info().rss / 2**20, cpu.user + cpu.system
        except psutil.Error:
            rss, cpu_s = 0.0, 0.0
        lag, end = self.lag_and_end()
        return Sample(round(t, 2), round(rss, 1), round(cpu_s, 2), lag, end, self._rows(), self._errors())

    def close(self) -> None:
        self._kafka.close()
        self._rows.close()


def latency_by_minute(url: str, t0: float, minutes: int) -> dict[int, dict[str, float]]:
    """p50/p99/max produce-to-row latency (ms) of the orders created in each minute after `t0`."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(_MINUTE_SQL, {"t0": t0, "last": minutes - 1})
        out = {int(m): {"created": int(n), "p50_ms": round(1000 * q[0], 2), "p99_ms": round(1000 * q[1], 2),
                        "max_ms": round(1000 * float(worst), 2)} for m, n, q, worst in cur.fetchall()}
    conn.close()
    return out


def exactly_once(url: str, in_topic: int, expected: int) -> dict[str, Any]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT order_id) FROM orders")
        rows, distinct = cur.fetchone() or (0, 0)
    conn.close()
    return {"rows": int(rows), "distinct_order_ids": int(distinct), "in_topic": in_topic, "expected": expected,
            "exactly_once": int(rows) == int(distinct) == in_topic == expected}


def measure_max(b: Bench) -> dict[str, Any]:
    """The 1-consumer maximum: fill the orders topic, drain it with one consumer (as the harness does)."""
    producer = phases.pipeline_producer(b)
    drained = phases.pipeline_consumers(b, 1)
    return {"rate": drained["rate"], "orders": drained["orders"], "producer_rate": producer["rate"],
            "cpu_s": drained["cpu_s"], "method": drained["method"]}


def soak(b: Bench, rate: float, seconds: float) -> dict[str, Any]:
    """The soak itself; samples every ~1 s until every order is written (or the timeout)."""
    total = int(rate * seconds)
    minutes = max(1, math.ceil(seconds / 60))
    infra = b.infra
    url = infra.new_database("soak")
    group = f"bench-soak-{uuid.uuid4().hex[:6]}"
    env = infra.env(KAFKA_TOPIC=TOPIC, KAFKA_DLQ_TOPIC=f"{TOPIC}.dlq", KAFKA_PARTITIONS=str(PARTITIONS),
                    DATABASE_URL=url, CONSUMER_GROUP_ID=group, **dict(b.sizes.consumer_env))
    ensure_topics(infra.settings(KAFKA_TOPIC=TOPIC, KAFKA_DLQ_TOPIC=f"{TOPIC}.dlq", KAFKA_PARTITIONS=str(PARTITIONS)))
    OrderStore(url, "bench").migrate()
    consumer = infra.spawn(b.sizes.consumer_module, env, "soak-consumer")
    settle = wait_group_stable(infra.bootstrap_servers, group, PARTITIONS, 90.0)
    cpu = CpuMeter(b.server_pids())
    cpu.add("consumer_1", consumer.pid)
    cpu.start()
    t0 = time.time()
    producer = infra.spawn("pipeline.producer", {**env, "PRODUCER_RATE": f"{rate:g}",
                                                 "PRODUCER_MAX_ORDERS": str(total)}, "soak-producer")
    cpu.add("producer", producer.pid)
    sampler = Sampler(infra.bootstrap_servers, group, consumer.pid, url,
                      [infra.log_dir / "soak-consumer.log", infra.log_dir / "soak-producer.log"])
    task = b.task(f"soak: {rate:,.0f} orders/s for {seconds / 60:g} min", total)
    samples: list[Sample] = []
    deadline = time.monotonic() + seconds + max(120.0, seconds / 2)
    while time.monotonic() < deadline:
        cpu.sample()
        s = sampler(time.time() - t0)
        samples.append(s)
        b.progress.update(task, completed=s.rows)
        if producer.poll() is not None and (s.rows >= total or producer.returncode != 0):
            break
        if consumer.poll() is not None:
            break
        time.sleep(max(0.0, 1.0 - (time.time() - t0 - s.t)))
    cpu_s = cpu.stop()
    _, in_topic = sampler.lag_and_end()
    sampler.close()
    codes = stop([consumer, producer])
    latency = latency_by_minute(url, t0, minutes)
    return {"rate": rate, "seconds": seconds, "orders": total, "group_settle_seconds": round(settle, 2),
            "exit_codes": {"consumer": codes[0], "producer": codes[1]}, "cpu_s": cpu_s,
            "check": exactly_once(url, in_topic, total),
            "minutes": minute_rows([asdict(s) for s in samples], latency, minutes),
            "samples": [asdict(s) for s in samples]}


def run(args: argparse.Namespace, console: Console,
        consumer_env: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """The whole run; `consumer_env` is `--consumer-env`, parsed by the harness."""
    smoke = bool(args.soak_smoke or args.smoke)
    minutes = args.soak_minutes or (SMOKE_MINUTES if smoke else FULL_MINUTES)
    orders = args.orders or 200_000
    sizes = Sizes(orders=orders, consumer_env=consumer_env, consumer_module=args.consumer_module,
                  phase_timeout=max(300.0, orders / 500))
    mode = "soak-smoke" if smoke else "soak"
    results: dict[str, Any] = {"date": date.today().isoformat(), "mode": mode,
                               "sizes": {"minutes": minutes, "consumer_env": dict(consumer_env),
                                         "consumer_module": args.consumer_module}}
    started = time.monotonic()
    console.print(f"[bold]food-orders bench[/] ({mode}): starting private ZooKeeper, Kafka, PostgreSQL ...")
    with private_infra(keep_state=args.keep_state) as infra:
        results["machine"] = sysinfo.machine(infra)
        progress = progress_bars(console)
        b = Bench(infra, sizes, progress)
        with progress:
            rate = args.soak_rate or (SMOKE_RATE if smoke else None)
            if rate is None:
                results["max_1_consumer"] = measure_max(b)
                rate = round(SHARE_OF_MAX * results["max_1_consumer"]["rate"])
                results["sizes"]["orders_for_max"] = orders
            results["rate_source"] = ("--soak-rate" if args.soak_rate else "smoke default" if smoke
                                      else f"{SHARE_OF_MAX:.0%} of max_1_consumer")
            results["soak"] = soak(b, float(rate), 60 * minutes)
    s = results["soak"]
    results["verdict"] = verdict(s["minutes"], s["rate"], s["check"]["exactly_once"])
    results["method"] = (
        "lag = sum over partitions of (end offset - the group's committed offset), sampled every ~1 s with the "
        "RSS and CPU of the consumer process (psutil), rows and log error lines (level ERROR/CRITICAL or a "
        "traceback). Latency per minute: processed_at - created_at of the orders created in that minute. "
        + results["verdict"]["rules"])
    results["total_seconds"] = round(time.monotonic() - started, 1)
    json_path, png_path = result_paths(args.out, "soak", smoke, results["date"])
    results["chart"] = png_path.name
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, png_path)
    console.print(soak_table(results))
    console.print(f"wrote {json_path} and {png_path.name} in {results['total_seconds']:.0f}s")
    if not results["verdict"]["passed"]:
        raise RuntimeError(f"soak verdict failed: {results['verdict']['failed']} (see {json_path.name})")
    return results
