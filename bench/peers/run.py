"""`bin/pipeline bench --peers` / `--peers-smoke`: one topic of N orders, drained by each peer in turn.

1. the peers' downloads, if missing (`install`), before any server starts;
2. private ZooKeeper, Kafka and PostgreSQL (`bench.infra.private_infra`), and the pipeline's own producer
   filling the orders topic (`bench.phases.pipeline_producer`);
3. untimed: the topic read back (the expected order ids) and re-encoded for Kafka Connect (`topics`);
4. each drain into a fresh database: this pipeline with each consumer count (`bench.phases.pipeline_consumers`,
   which migrates its own database), Kafka Connect + the Debezium JDBC sink, Quix Streams (both into the
   `orders` table of our migrations, `customer_stats` dropped: the peers maintain no aggregate);
5. one table, and `bench/results/[smoke-]peers-<date>-<host>.json`.

Every drain is measured the same way: from its process start to the last row seen committed (`watch`,
one clock for every sink), CPU of the sink's process tree and of the PostgreSQL backends serving it
(`meter`) up to the moment all rows were counted, and the rows checked against the topic. The table
and the results file: `report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
from rich.console import Console
from rich.progress import Progress

from bench import phases, sysinfo
from bench.context import ORDERS_TOPIC, Bench, Result, Sizes, key_value, progress_bars, rate, result_paths
from bench.infra import BenchInfra, private_infra, stop
from bench.measure import CpuMeter, RowCounter, row_span, wait_for
from bench.peers import install
from bench.peers.connect import ConnectOptions, start_connect
from bench.peers.install import ConnectInstall
from bench.peers.meter import SinkMeter
from bench.peers.quix import QuixOptions, start_quix
from bench.peers.report import peers_table, table_rows
from bench.peers.topics import Expected, expected_of, read_topic, reencode_for_connect
from bench.peers.watch import RowWatcher, Sighting
from pipeline.store import OrderStore

PEERS = ("pipeline", "connect", "quix")
SMOKE_ORDERS = 2_000
SMOKE_CONSUMERS = (1, 2)
FULL_ORDERS = 200_000
FULL_CONSUMERS = (1, 2, 3)
DISTURBED_PCT = 15.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The harness's peers options (bench/harness.py calls this)."""
    g = p.add_argument_group("peers (docs/benchmarks.md, section Peers)")
    g.add_argument("--peers", action="store_true",
                   help="drain one topic with Kafka Connect + the Debezium JDBC sink, Quix Streams and this\n"
                        "pipeline (1 and N consumers) and compare; downloads the peers on first use\n"
                        f"(Maven, pip, into .local/peers). Sizes: --orders ({FULL_ORDERS}), --consumers (1,2,3)")
    g.add_argument("--peers-smoke", action="store_true",
                   help=f"--peers with tiny sizes ({SMOKE_ORDERS} orders, consumers 1,2): about a minute")
    g.add_argument("--peers-only", metavar="LIST", default=",".join(PEERS),
                   help=f"which drains to run, comma-separated ({','.join(PEERS)})")
    g.add_argument("--connect-batch", type=int, default=ConnectOptions.batch_size,
                   help=f"Debezium batch.size = worker consumer.max.poll.records ({ConnectOptions.batch_size})")
    g.add_argument("--connect-tasks", type=int, default=ConnectOptions.tasks,
                   help=f"Kafka Connect tasks.max ({ConnectOptions.tasks}, one per partition)")
    g.add_argument("--quix-commit-every", type=int, default=QuixOptions.commit_every,
                   help=f"Quix commit_every, messages per checkpoint ({QuixOptions.commit_every})")
    g.add_argument("--quix-commit-interval", type=float, default=QuixOptions.commit_interval,
                   help=f"Quix commit_interval, seconds between checkpoints ({QuixOptions.commit_interval:g})")
    g.add_argument("--quix-processes", type=int, default=QuixOptions.processes,
                   help=f"Quix applications in the consumer group ({QuixOptions.processes})")


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.peers or args.peers_smoke)


@dataclass(frozen=True)
class PeerPlan:
    """What one `--peers` run does, resolved once from the command line."""

    smoke: bool
    orders: int
    consumers: tuple[int, ...]
    only: tuple[str, ...]
    connect: ConnectOptions
    quix: QuixOptions
    timeout: float
    out: Path | None
    keep_state: bool
    consumer_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PeerPlan:
        smoke = bool(args.peers_smoke or args.smoke)
        only = tuple(name.strip() for name in args.peers_only.split(",") if name.strip())
        unknown = sorted(set(only) - set(PEERS))
        if unknown or not only:
            raise SystemExit(f"--peers-only: expected some of {','.join(PEERS)}, got {args.peers_only!r}")
        orders = args.orders or (SMOKE_ORDERS if smoke else FULL_ORDERS)
        consumers = (tuple(int(c) for c in args.consumers.split(",")) if args.consumers
                     else SMOKE_CONSUMERS if smoke else FULL_CONSUMERS)
        return cls(smoke=smoke, orders=orders, consumers=consumers, only=only,
                   connect=ConnectOptions(batch_size=args.connect_batch, tasks=args.connect_tasks),
                   quix=QuixOptions(commit_every=args.quix_commit_every, commit_interval=args.quix_commit_interval,
                                    processes=args.quix_processes),
                   timeout=max(90.0 if smoke else 300.0, orders / 500), out=args.out, keep_state=args.keep_state,
                   consumer_env=tuple(key_value(kv) for kv in args.consumer_env))


@dataclass
class ClockedInfra(BenchInfra):
    """The harness's infra, remembering when each process started and which database it was given, so
    the pipeline's drains (`bench.phases`, unchanged) are measured like the peers'."""

    spawned: list[tuple[float, float, subprocess.Popen[bytes]]] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    @classmethod
    def around(cls, infra: BenchInfra) -> ClockedInfra:
        # Same servers, same list of processes: stop_all() of either stops everything.
        return cls(infra.bootstrap_servers, infra.database_url, infra.services, infra.root, infra.procs)

    def spawn(self, module: str, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        wall, mono = time.time(), time.monotonic()
        proc = super().spawn(module, env, log_name)
        self.spawned.append((wall, mono, proc))
        return proc

    def new_database(self, prefix: str) -> str:
        url = super().new_database(prefix)
        self.databases.append(url)
        return url


# -- checking and measuring a drain ---------------------------------------------------------------------

# One md5 over every row's content, in order_id order: what the table holds, whoever wrote it (not
# consumer_client_id, which names the writer, nor processed_at, which is when).
_DIGEST_SQL = """
SELECT md5(string_agg(md5(concat_ws('|', order_id, customer_id, customer_name, customer_email, items::text,
                                    total_amount::text, status, created_at::text, kafka_partition::text,
                                    kafka_offset::text)), '' ORDER BY order_id))
FROM orders
"""


def check_rows(url: str, expected: Expected) -> dict[str, Any]:
    """Count = N, every order id of the topic present once, nothing else, and the same sum of totals;
    plus a digest of the rows' content, compared across drains afterwards."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute("SELECT count(*), count(DISTINCT order_id), coalesce(round(sum(total_amount) * 100), 0)::bigint "
                    "FROM orders")
        rows, distinct, cents = cur.fetchone() or (0, 0, 0)
        cur.execute("SELECT order_id FROM orders")
        ids = {order_id for (order_id,) in cur.fetchall()}
        cur.execute(_DIGEST_SQL)
        (digest,) = cur.fetchone() or (None,)
    conn.close()
    missing = len(expected.order_ids - ids)
    unexpected = len(ids - expected.order_ids)
    correct = (rows == expected.orders and distinct == expected.orders and missing == 0 and unexpected == 0
               and int(cents) == expected.total_cents)
    return {"rows": int(rows), "distinct_order_ids": int(distinct), "missing": missing, "unexpected": unexpected,
            "total_cents": int(cents), "expected_total_cents": expected.total_cents, "content_md5": digest,
            "correct": correct}


def _figures(url: str, expected: Expected, start: Sighting, watcher: RowWatcher, sink_cpu: float,
             pg_cpu: float | None) -> dict[str, Any]:
    first, last = watcher.first, watcher.last
    if first is None or last is None:
        raise RuntimeError(f"the rows were counted but not seen by the row watcher ({watcher.error or 'no error'})")
    n = expected.orders
    after = last.wall - first.wall
    span = row_span(url)
    return {
        "orders": n,
        "rate_start_to_last_row": rate(n, last.wall - start.wall),
        "rate_after_first_row": (rate(n - watcher.rows_at_first, after)
                                 if after > 0 and n > watcher.rows_at_first else None),
        "startup_seconds": round(first.wall - start.wall, 3),
        "seconds_start_to_last_row": round(last.wall - start.wall, 3),
        "seconds_first_to_last_row": round(after, 3),
        "rows_in_first_commit": watcher.rows_at_first,
        "sink_cpu_s": sink_cpu,
        "postgres_backends_cpu_s": pg_cpu,
        # The harness's usual figure, from the rows' processed_at (transaction starts), for reference.
        "processed_at_rate": round(span.rate, 1) if span.rate else None,
        "processed_at_seconds_first_to_last": round(span.seconds, 3),
        "check": check_rows(url, expected),
    }


def _meter(b: Bench, roots: Callable[[], list[int]]) -> SinkMeter:
    return SinkMeter(roots, b.infra.services.postgres().pid(), urlsplit(b.infra.database_url).port)


def peer_database(b: Bench, label: str) -> str:
    """A fresh database with our schema (migrations), `customer_stats` dropped: the table the peers fill
    is the one our consumer fills, and no peer maintains an aggregate."""
    url = b.infra.new_database(label.replace("-", "_"))
    OrderStore(url, "bench-peers").migrate()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE customer_stats")
    conn.close()
    return url


def drain_peer(b: Bench, label: str, expected: Expected, start: Callable[[str], list[subprocess.Popen[bytes]]],
               timeout: float) -> Result:
    """A fresh database, the peer's processes started on it, wait until every order is a row."""
    url = peer_database(b, label)
    task = b.task(f"peers: {label}", expected.orders)
    watcher = RowWatcher(lambda: url, expected.last_ids)
    watcher.start()
    cpu = CpuMeter(b.server_pids())
    cpu.start()
    started = Sighting.now()
    procs = start(url)
    for i, proc in enumerate(procs):
        cpu.add(f"sink_{i + 1}", proc.pid)
    meter = _meter(b, lambda: [p.pid for p in procs])
    meter.start()
    counter = RowCounter(url)

    def rows() -> int:
        cpu.sample()
        return counter()

    try:
        got = wait_for(rows, expected.orders, timeout, lambda v: b.progress.update(task, completed=v),
                       alive=lambda: all(p.poll() is None for p in procs) or counter() >= expected.orders)
        watcher.wait_last(5)
    finally:
        cpu_s = cpu.stop()
        meter.stop()
        watcher.stop()
        counter.close()
        codes = stop(procs)
    if got < expected.orders:
        raise RuntimeError(f"{label}: {got} of {expected.orders} rows after {timeout:.0f}s\n"
                           f"{b.infra.log_tail(label + '-1') or b.infra.log_tail(label)}")
    sink_cpu, pg_cpu = meter.totals_at(watcher.last.mono if watcher.last else time.monotonic())
    return {"processes": len(procs), **_figures(url, expected, started, watcher, sink_cpu, pg_cpu),
            "exit_codes": codes, "cpu_s": cpu_s}


def drain_pipeline(b: Bench, consumers: int, expected: Expected) -> Result:
    """`bench.phases.pipeline_consumers` as it is, measured from outside like the peers."""
    clocked = ClockedInfra.around(b.infra)
    watcher = RowWatcher(lambda: clocked.databases[-1] if clocked.databases else None, expected.last_ids)
    meter = _meter(b, lambda: [proc.pid for _, _, proc in clocked.spawned])
    watcher.start()
    meter.start()
    try:
        result = phases.pipeline_consumers(dataclasses.replace(b, infra=clocked), consumers)
        watcher.wait_last(5)
    finally:
        meter.stop()
        watcher.stop()
    started_wall, started_mono, _ = clocked.spawned[0]
    sink_cpu, pg_cpu = meter.totals_at(watcher.last.mono if watcher.last else time.monotonic())
    return {"processes": consumers,
            **_figures(clocked.databases[-1], expected, Sighting(started_wall, started_mono), watcher, sink_cpu,
                       pg_cpu),
            "exit_codes": result["exit_codes"], "cpu_s": result["cpu_s"], "phase": result}


def compare_content(runs: dict[str, Result]) -> str | None:
    """Mark each drain's rows as equal or not to the first pipeline drain's; returns that reference's name."""
    reference = next((k for k in runs if k.startswith("pipeline_")), None)
    for r in runs.values():
        check = r["check"]
        check["same_content_as"] = reference
        check["same_content"] = (None if reference is None
                                 else check["content_md5"] == runs[reference]["check"]["content_md5"])
    return reference


# -- the run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """The peers ready to start (None: not asked for)."""

    connect: ConnectInstall | None
    quix_python: Path | None

    @classmethod
    def for_plan(cls, plan: PeerPlan, console: Console) -> Installed:
        """Check, and download if missing, the peers the plan runs (PeerSetupError: one line why not)."""
        return cls(install.ensure_connect(console) if "connect" in plan.only else None,
                   install.ensure_quix(console) if "quix" in plan.only else None)


def drain_all(infra: BenchInfra, plan: PeerPlan, installed: Installed, progress: Progress) -> dict[str, Any]:
    """Fill the orders topic on `infra`, then drain it with every drain of the plan, each checked."""
    sizes = Sizes(orders=plan.orders, consumers=plan.consumers, phase_timeout=plan.timeout,
                  consumer_env=plan.consumer_env)
    b = Bench(infra, sizes, progress)
    out: dict[str, Any] = {"producer": phases.pipeline_producer(b)}
    messages = read_topic(infra.bootstrap_servers, ORDERS_TOPIC)
    expected = expected_of(messages)
    if expected.orders != plan.orders:
        raise RuntimeError(f"{ORDERS_TOPIC} holds {expected.orders} orders, expected {plan.orders}")
    if installed.connect is not None:
        out["reencode"] = reencode_for_connect(b, messages)
    del messages
    runs: dict[str, Result] = {}
    if "pipeline" in plan.only:
        for n in plan.consumers:
            runs[f"pipeline_{n}"] = drain_pipeline(b, n, expected)
    if installed.connect is not None:
        connect = installed.connect
        runs["connect"] = drain_peer(b, "peer-connect", expected,
                                     lambda url: [start_connect(infra, connect, url, plan.connect, "peer-connect")],
                                     plan.timeout)
    if installed.quix_python is not None:
        python = installed.quix_python
        runs["quix"] = drain_peer(b, "peer-quix", expected,
                                  lambda url: start_quix(infra, python, url, plan.quix, "peer-quix"), plan.timeout)
    out["content_reference"] = compare_content(runs)
    out["runs"] = runs
    out["table"] = table_rows(runs)
    return out


def run_peers(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    plan = PeerPlan.from_args(args)
    started = time.monotonic()
    mode = "peers-smoke" if plan.smoke else "peers"
    # Downloads first, before any server runs: a missing tool or registry fails in seconds.
    installed = Installed.for_plan(plan, console)
    results: dict[str, Any] = {"date": date.today().isoformat(), "mode": mode,
                               "sizes": {"orders": plan.orders, "consumers": list(plan.consumers),
                                         "consumer_env": dict(plan.consumer_env),
                                         "peers": list(plan.only)},
                               "versions": install.versions(installed.quix_python),
                               "config": {"connect": dataclasses.asdict(plan.connect),
                                          "quix": dataclasses.asdict(plan.quix)}}
    console.print(f"[bold]food-orders bench[/] ({mode}, {plan.orders:,} orders): starting private ZooKeeper, "
                  "Kafka, PostgreSQL ...")
    with private_infra(keep_state=plan.keep_state) as infra:
        results["machine"] = sysinfo.machine(infra)
        progress = progress_bars(console)
        with progress:
            results.update(drain_all(infra, plan, installed, progress))
    runs = results["runs"]
    results["disturbed_runs"] = {k: v["cpu_s"].get("foreign_pct") for k, v in runs.items()
                                 if v["cpu_s"].get("foreign_pct", 0) > DISTURBED_PCT}
    results["total_seconds"] = round(time.monotonic() - started, 1)
    path, _ = result_paths(plan.out, "peers", plan.smoke, results["date"])
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(peers_table(results))
    if results["disturbed_runs"]:
        console.print(f"[yellow]warning:[/] other processes used > {DISTURBED_PCT:g}% of the machine during "
                      f"{', '.join(results['disturbed_runs'])}: re-run on a quiet machine before comparing")
    wrong = [row["sink"] for row in results["table"] if not row["rows_correct"]]
    if wrong:
        raise RuntimeError(f"rows not correct for {', '.join(wrong)} (details in {path})")
    console.print(f"wrote {path} in {results['total_seconds']:.0f}s")
    return results
