"""The pipeline phases: the producer, the per-message baseline, N consumers, latency. Each returns a
JSON-ready dict of what it measured on this machine."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import psycopg2
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.context import (
    LATENCY_TOPIC,
    ORDERS_TOPIC,
    PARTITIONS,
    SEED,
    Bench,
    Result,
    rate,
)
from bench.infra import stop
from bench.measure import (
    CpuMeter,
    RowCounter,
    all_active_rate,
    row_span,
    wait_for,
    wait_group_stable,
    writers,
)
from pipeline.kafka_admin import ensure_topics
from pipeline.store import OrderStore

# -- the producer alone --------------------------------------------------------------------------


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe", "enable.auto.commit": False,
                      "log_level": 3})
    try:
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in range(partitions))
    finally:
        probe.close()


def _first_timestamp(bootstrap: str, topic: str, partitions: int) -> float:
    """Earliest CreateTime (set by the producer at produce()) over the topic's first messages, unix s."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe", "enable.auto.commit": False,
                      "log_level": 3})
    probe.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while len(seen) < partitions and time.monotonic() < deadline:
        msg = probe.poll(1.0)
        if msg is not None and msg.error() is None and (msg.partition() or 0) not in seen:
            seen[msg.partition() or 0] = msg.timestamp()[1]
    probe.close()
    if not seen:
        raise RuntimeError(f"no messages in {topic}")
    return min(seen.values()) / 1000


def pipeline_producer(b: Bench, processes: int = 1, topic: str = ORDERS_TOPIC) -> Result:
    """`python -m pipeline.producer` x `processes` with PRODUCER_RATE=0, sharing PRODUCER_MAX_ORDERS=N
    between them, filling `topic` (ids are disjoint across processes: UUIDv7 with 74 random bits)."""
    n = b.sizes.orders
    shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    ensure_topics(b.infra.settings(KAFKA_TOPIC=topic, KAFKA_DLQ_TOPIC=f"{topic}.dlq"))  # no creation timed
    task = b.task(f"pipeline producer x{processes} (subprocess)", n)
    cpu = CpuMeter(b.server_pids())
    cpu.start()
    wall_start = time.time()
    procs = []
    for i, share in enumerate(shares):
        env = b.infra.env(KAFKA_TOPIC=topic, KAFKA_DLQ_TOPIC=f"{topic}.dlq", PRODUCER_RATE="0",
                          PRODUCER_MAX_ORDERS=str(share), PRODUCER_SEED=str(SEED + i))
        procs.append(b.infra.spawn("pipeline.producer", env, f"producer-{processes}-{i + 1}"))
        cpu.add(f"producer_{i + 1}" if processes > 1 else "producer", procs[-1].pid)
    bootstrap = b.infra.bootstrap_servers

    def delivered() -> int:
        cpu.sample()
        return _end_offsets(bootstrap, topic, PARTITIONS)

    wait_for(delivered, n, b.sizes.phase_timeout, lambda v: b.progress.update(task, completed=v), every=0.5)
    # Each process exits after its delivery reports: keep sampling their CPU until then.
    while any(proc.poll() is None for proc in procs):
        cpu.sample()
        time.sleep(0.05)
    wall_end = time.time()
    cpu_s = cpu.stop()
    for i, proc in enumerate(procs):
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline.producer exited {proc.returncode}:\n"
                               f"{b.infra.log_tail(f'producer-{processes}-{i + 1}')}")
    first = _first_timestamp(bootstrap, topic, PARTITIONS)
    in_topic = _end_offsets(bootstrap, topic, PARTITIONS)
    producer_cpu = sum(v for k, v in cpu_s.items() if k.startswith("producer"))
    return {"processes": processes, "orders": n, "in_topic": in_topic, "wall_seconds": round(wall_end - wall_start, 3),
            "wall_rate": rate(n, wall_end - wall_start), "seconds": round(wall_end - first, 3),
            "rate": rate(n, wall_end - first), "startup_seconds": round(first - wall_start, 3), "cpu_s": cpu_s,
            "producer_cpu_us_per_order": round(1e6 * producer_cpu / n, 2),
            "kafka_cpu_us_per_order": round(1e6 * cpu_s.get("kafka", 0.0) / n, 2),
            "method": f"{processes} subprocess(es) python -m pipeline.producer (PRODUCER_RATE=0, PRODUCER_MAX_ORDERS "
                      "= their share of N); rate = N / (last process exit - CreateTime of the first message), i.e. "
                      "generation + serialization + produce + final flush, without interpreter start-up "
                      "(wall_rate includes it)"}


# -- consumers -----------------------------------------------------------------------------------


def _drain(b: Bench, label: str, module: str, processes: int, target: int, extra_env: dict[str, str],
           timeout: float, topic: str = ORDERS_TOPIC) -> Result:
    """Start `processes` copies of a consumer module on a fresh database and group; wait for `target` rows
    from `topic`."""
    url = b.infra.new_database(label.replace("-", "_"))
    group = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    env = b.infra.env(KAFKA_TOPIC=topic, KAFKA_DLQ_TOPIC=f"{topic}.dlq", DATABASE_URL=url,
                      CONSUMER_GROUP_ID=group, **extra_env)
    task = b.task(f"{label}: {processes} process(es)", target)
    cpu = CpuMeter(b.server_pids())
    cpu.start()
    spawned = time.monotonic()
    procs = []
    for i in range(processes):
        proc = b.infra.spawn(module, env, f"{label}-{i + 1}")
        cpu.add(f"consumer_{i + 1}", proc.pid)
        procs.append(proc)
    counter = RowCounter(url)

    def rows() -> int:
        cpu.sample()
        return counter()

    got = wait_for(rows, target, timeout, lambda v: b.progress.update(task, completed=v),
                   alive=lambda: all(p.poll() is None for p in procs) or counter() >= target)
    drained = time.monotonic() - spawned
    counter.close()
    cpu_s = cpu.stop()
    if module != "bench.baseline":
        # A process told to stop while still importing dies of the signal (exit -15): let every one
        # reach its loop first (its "starting:" line; signal handlers are in place by then).
        for i, proc in enumerate(procs):
            log = b.infra.log_dir / f"{label}-{i + 1}.log"
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline and "starting:" not in log.read_text(
                    errors="replace"):
                time.sleep(0.05)
    codes = stop(procs)
    span = row_span(url)
    n_writers, all_active = all_active_rate(url)
    per_writer = writers(url)
    if got < target:
        raise RuntimeError(f"{label}: {got} of {target} rows after {timeout:.0f}s\n{b.infra.log_tail(label + '-1')}")
    consumer_cpu = sum(v for k, v in cpu_s.items() if k.startswith("consumer_"))
    rss = [v for k, v in cpu.rss_max_mb.items() if k.startswith("consumer_")]
    return {"consumer_rss_max_mb": round(max(rss), 1) if rss else None,
            "processes": processes, "orders": span.rows, "rate": round(span.rate or rate(span.rows, drained), 1),
            "seconds_first_to_last_row": round(span.seconds, 3), "wall_seconds_from_spawn": round(drained, 2),
            "wall_rate_from_spawn": rate(span.rows, drained), "exit_codes": codes, "cpu_s": cpu_s,
            "processes_that_wrote": n_writers, "per_process": per_writer,
            "rate_all_active": round(all_active, 1) if all_active is not None else None,
            "consumer_cpu_ms_per_order": round(1000 * consumer_cpu / max(1, span.rows), 4)}


def baseline(b: Bench) -> Result:
    n = min(b.sizes.baseline, b.sizes.orders)
    result = _drain(b, "baseline", "bench.baseline", 1, n, {"BENCH_BASELINE_MAX": str(n)},
                    b.sizes.baseline_timeout)
    result["method"] = ("bench/baseline.py: poll 1 message, decode, INSERT 1 row + customer_stats upsert, COMMIT, "
                        "synchronous offset commit; rate from first to last row (processed_at)")
    return result


def pipeline_consumers(b: Bench, processes: int) -> Result:
    result = _drain(b, f"pipeline-{processes}", b.sizes.consumer_module, processes, b.sizes.orders,
                    dict(b.sizes.consumer_env), b.sizes.phase_timeout)
    result["method"] = ("python -m pipeline.consumer x N (default batch settings), fresh group + database, "
                        "draining the pre-filled 3-partition topic; rate = rows / (last - first processed_at)")
    return result


def metrics_cost(b: Bench, pairs: int = 3) -> Result:
    """1 consumer with metrics on, then off, `pairs` times in turn (alternating spreads the machine's
    drift over both), each draining the whole topic into a fresh database."""
    on: list[Result] = []
    off: list[Result] = []
    for i in range(pairs):
        for enabled, runs in (("true", on), ("false", off)):
            label = f"metrics-{'on' if enabled == 'true' else 'off'}-{i + 1}"
            env = {**dict(b.sizes.consumer_env), "METRICS_ENABLED": enabled,
                   "PROMETHEUS_MULTIPROC_DIR": str(b.infra.root / label)}
            runs.append(_drain(b, label, b.sizes.consumer_module, 1, b.sizes.orders, env, b.sizes.phase_timeout))
    ratios = sorted(a["rate"] / o["rate"] for a, o in zip(on, off, strict=True))
    consumer_cpu = [sum(v for k, v in r["cpu_s"].items() if k.startswith("consumer_")) for r in (*on, *off)]
    return {"pairs": pairs, "rate_on": [r["rate"] for r in on], "rate_off": [r["rate"] for r in off],
            "ratio_median": round(ratios[len(ratios) // 2], 3), "ratio_min": round(ratios[0], 3),
            "ratio_max": round(ratios[-1], 3),
            "consumer_cpu_s_on": [round(c, 2) for c in consumer_cpu[:pairs]],
            "consumer_cpu_s_off": [round(c, 2) for c in consumer_cpu[pairs:]],
            "cpu_s": on[-1]["cpu_s"],
            "method": "1 consumer, metrics on (PROMETHEUS_MULTIPROC_DIR) then off (METRICS_ENABLED=false), "
                      "alternating; ratio = rate on / rate off of each pair"}


# -- latency -------------------------------------------------------------------------------------

_LATENCY_SQL = """
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)),
       max(extract(epoch FROM processed_at - created_at)), avg(extract(epoch FROM processed_at - created_at)),
       extract(epoch FROM max(created_at) - min(created_at))
FROM orders
"""


def latency(b: Bench, orders_per_second: float) -> Result:
    """Produce at a steady rate into a fresh topic already consumed by the pipeline; produce-to-row latency."""
    s = b.sizes
    total = int(orders_per_second * s.latency_seconds)
    url = b.infra.new_database("latency")
    group = f"bench-latency-{uuid.uuid4().hex[:6]}"
    topic = f"{LATENCY_TOPIC}-{orders_per_second:g}"
    env = b.infra.env(KAFKA_TOPIC=topic, KAFKA_DLQ_TOPIC=f"{topic}.dlq", DATABASE_URL=url,
                      CONSUMER_GROUP_ID=group, **dict(s.consumer_env))
    ensure_topics(b.infra.settings(KAFKA_TOPIC=topic, KAFKA_DLQ_TOPIC=f"{topic}.dlq"))
    OrderStore(url, "bench").migrate()
    consumers = [b.infra.spawn(s.consumer_module, env, f"latency-consumer-{i + 1}")
                 for i in range(s.latency_consumers)]
    settle = wait_group_stable(b.infra.bootstrap_servers, group, PARTITIONS)
    cpu = CpuMeter(b.server_pids())
    for i, proc in enumerate(consumers):
        cpu.add(f"consumer_{i + 1}", proc.pid)
    cpu.start()
    producer = b.infra.spawn("pipeline.producer", {**env, "PRODUCER_RATE": f"{orders_per_second:g}",
                                                   "PRODUCER_MAX_ORDERS": str(total)}, "latency-producer")
    cpu.add("producer", producer.pid)
    task = b.task(f"latency: {orders_per_second:g} orders/s for {s.latency_seconds:g}s", total)
    counter = RowCounter(url)

    def rows() -> int:
        cpu.sample()
        return counter()

    got = wait_for(rows, total, s.latency_seconds + 60, lambda v: b.progress.update(task, completed=v))
    counter.close()
    cpu_s = cpu.stop()
    for proc in consumers:
        proc.send_signal(signal.SIGTERM)
    for proc in [producer, *consumers]:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if got < total:
        raise RuntimeError(f"latency: {got} of {total} rows\n{b.infra.log_tail('latency-consumer-1')}")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(_LATENCY_SQL)
        count, (p50, p95, p99), worst, mean, produce_span = cur.fetchone()  # type: ignore[misc]
        cur.execute("SELECT extract(epoch FROM processed_at - created_at)::float8 FROM orders "
                    "ORDER BY created_at")
        if not b.latencies_ms:  # the chart shows the first rate's distribution
            b.latencies_ms = [1000 * v for (v,) in cur.fetchall()]
    conn.close()
    return {"orders": int(count), "target_rate": orders_per_second, "seconds": s.latency_seconds,
            "achieved_rate": rate(int(count), float(produce_span)), "consumers": s.latency_consumers,
            "group_settle_seconds": round(settle, 2),
            "p50_ms": round(1000 * p50, 2), "p95_ms": round(1000 * p95, 2), "p99_ms": round(1000 * p99, 2),
            "max_ms": round(1000 * float(worst), 2), "mean_ms": round(1000 * float(mean), 2), "cpu_s": cpu_s,
            "method": "orders.processed_at - orders.created_at per row: created_at is stamped by the producer "
                      "when it generates the order, processed_at is now() of the consumer's write transaction "
                      "(its start, so the INSERT + COMMIT time of the batch is not included); same host clock. "
                      "Consumers were Stable with all partitions before the producer started."}
