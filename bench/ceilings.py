"""The machine's ceilings: raw produce, raw consume, PostgreSQL COPY + INSERT without Kafka."""

from __future__ import annotations

import io
import statistics
import threading
import time
import uuid

import psycopg2
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from bench.context import (
    ORDERS_TOPIC,
    PARTITIONS,
    RAW_PRODUCE_RUNS,
    RAW_TOPIC,
    Bench,
    Result,
    generate,
    rate,
)
from bench.measure import (
    CpuMeter,
)
from pipeline.batch import OrderRow
from pipeline.consumer import consumer_config
from pipeline.orders import Order, decode_order
from pipeline.producer import producer_config
from pipeline.store import COLUMNS, COPY_CHUNK, INSERT_SQL, STAGING_TABLE_SQL, OrderStore

# -- ceilings ------------------------------------------------------------------------------------


def ceiling_produce(b: Bench) -> Result:
    """(c) Producing pre-serialized order bytes with pipeline.producer.producer_config, in-process."""
    n = b.sizes.orders
    b.infra.create_topic(RAW_TOPIC, PARTITIONS)
    payloads = generate(n)
    settings = b.infra.settings(KAFKA_TOPIC=RAW_TOPIC)
    failed = 0

    def on_delivery(err: KafkaError | None, _msg: Message[bytes, bytes]) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    producer = Producer(producer_config(settings, f"bench-raw-{uuid.uuid4().hex[:6]}"))
    # Warm-up outside the clock: metadata, connection and the idempotent producer id.
    producer.produce(RAW_TOPIC, payloads[0][1], payloads[0][0])
    producer.flush(30)
    # A run takes about a second, so it is repeated and the median kept (all runs are reported).
    runs: list[float] = []
    cpu = CpuMeter(b.server_pids())
    cpu.start()
    for attempt in range(RAW_PRODUCE_RUNS):
        task = b.task(f"ceiling: produce pre-serialized ({attempt + 1}/{RAW_PRODUCE_RUNS})", n)
        started = time.perf_counter()
        for i, (key, value) in enumerate(payloads):
            while True:
                try:
                    producer.produce(RAW_TOPIC, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.005)
            if i % 5_000 == 0:
                producer.poll(0)
                b.progress.update(task, completed=i)
        remaining = producer.flush(120)
        runs.append(time.perf_counter() - started)
        b.progress.update(task, completed=n)
        if remaining or failed:
            raise RuntimeError(f"raw produce: {remaining} undelivered, {failed} failed")
    seconds = statistics.median(runs)
    return {"messages": n, "seconds": round(seconds, 3), "rate": rate(n, seconds),
            "runs_rate": [rate(n, r) for r in runs],
            "avg_bytes": round(sum(len(v) for _, v in payloads) / n, 1), "cpu_s": cpu.stop(),
            "method": f"in-process confluent_kafka.Producer, producer_config() of pipeline.producer, first produce() "
                      f"to flush() returning; median of {RAW_PRODUCE_RUNS} runs of N messages (cpu_s: all runs)"}


def ceiling_consume(b: Bench) -> Result:
    """(a) Consuming the pre-filled orders topic with no processing (pipeline consumer_config, assign())."""
    n = b.sizes.orders
    settings = b.infra.settings(KAFKA_TOPIC=ORDERS_TOPIC, CONSUMER_GROUP_ID=f"bench-raw-{uuid.uuid4().hex[:6]}")
    consumer = Consumer(consumer_config(settings, settings.client_id()))
    consumer.list_topics(ORDERS_TOPIC, timeout=10)  # connection + metadata outside the clock
    task = b.task("ceiling: consume, no processing", n)
    messages: list[tuple[int, int, bytes, bytes]] = []
    deadline = time.monotonic() + b.sizes.phase_timeout
    cpu = CpuMeter(b.server_pids())
    cpu.start()
    # assign(), not subscribe(): the clock starts before the first fetch, and no group join is timed.
    started = time.perf_counter()
    consumer.assign([TopicPartition(ORDERS_TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    while len(messages) < n and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 1.0):
            key, value = msg.key(), msg.value()
            if msg.error() is None and isinstance(key, bytes) and isinstance(value, bytes):
                messages.append((msg.partition() or 0, msg.offset() or 0, key, value))
        b.progress.update(task, completed=len(messages))
    seconds = time.perf_counter() - started
    cpu_s = cpu.stop()
    consumer.close()
    if len(messages) < n:
        raise RuntimeError(f"raw consume: only {len(messages)} of {n} messages")
    b.messages = messages
    return {"messages": n, "seconds": round(seconds, 3), "rate": rate(n, seconds), "cpu_s": cpu_s,
            "method": "in-process confluent_kafka.Consumer.consume(1000) with consumer_config() of pipeline.consumer, "
                      "assign() at offset 0 to last message (no group join in the clock); message bytes kept in "
                      "memory, not decoded"}


PG_CONNECTIONS = (1, 2, 3)  # the PostgreSQL ceiling is the best of these (it is not always 1)


def _copy_insert(b: Bench, chunks: list[bytes], n: int, connections: int) -> tuple[float, float, dict[str, float]]:
    """COPY + INSERT of every chunk on `connections` connections at once: (rate, seconds, cpu_s)."""
    url = b.infra.new_database(f"ceiling{connections}")
    OrderStore(url, "bench").migrate()
    conns = [psycopg2.connect(url) for _ in range(connections)]
    for conn in conns:
        with conn.cursor() as cur:
            cur.execute(STAGING_TABLE_SQL)
        conn.commit()
    task = b.task(f"ceiling: PostgreSQL COPY + INSERT x{connections}", n)
    inserted = [0] * connections
    per_chunk = chunks[0].count(b"\n")

    def load(k: int) -> None:  # psycopg2 releases the GIL while the server works
        conn = conns[k]
        with conn.cursor() as cur:
            for i in range(k, len(chunks), connections):
                cur.copy_expert(f"COPY orders_staging ({COLUMNS}) FROM STDIN", io.BytesIO(chunks[i]), COPY_CHUNK)
                cur.execute(INSERT_SQL)
                inserted[k] += (cur.fetchone() or (0,))[0]
                conn.commit()
                if k == 0 and i % 20 == 0:
                    b.progress.update(task, completed=min(n, (i + 1) * per_chunk))

    cpu = CpuMeter(b.server_pids())
    cpu.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=load, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    cpu_s = cpu.stop()
    for conn in conns:
        conn.close()
    b.progress.update(task, completed=n)
    if sum(inserted) != n:
        raise RuntimeError(f"PostgreSQL ceiling x{connections}: inserted {sum(inserted)} of {n}")
    return rate(n, seconds), seconds, cpu_s


def ceiling_postgres(b: Bench) -> Result:
    """(b) PostgreSQL ingesting pre-formatted rows: COPY into staging + the store's INSERT ... ON CONFLICT."""
    batch = b.sizes.pg_batch
    rows = []
    for partition, offset, key, value in b.messages:
        order = decode_order(key, value)
        assert isinstance(order, Order)
        rows.append(OrderRow(order, partition, offset))
    formatter = OrderStore("postgresql://unused@localhost/unused", "bench-pg-ceiling")
    chunks = [formatter.encode(rows[i:i + batch]) for i in range(0, len(rows), batch)]
    n = len(rows)
    runs = {k: _copy_insert(b, chunks, n, k) for k in PG_CONNECTIONS}
    best = max(runs, key=lambda k: runs[k][0])
    seconds, cpu_s = runs[best][1], runs[best][2]

    # For comparison (not a ceiling): OrderStore.write on pre-built OrderRows, i.e. with the Python
    # formatting of COPY lines that the pipeline does per batch.
    url2 = b.infra.new_database("storewrite")
    store = OrderStore(url2, "bench-store-write")
    store.migrate()
    store.connect()
    task2 = b.task("reference: OrderStore.write", n)
    started2 = time.perf_counter()
    for i in range(0, n, batch):
        store.write(rows[i:i + batch])
        if (i // batch) % 20 == 0:
            b.progress.update(task2, completed=i)
    seconds2 = time.perf_counter() - started2
    store.close()
    b.progress.update(task2, completed=n)
    return {"rows": n, "batch": batch, "seconds": round(seconds, 3), "rate": rate(n, seconds), "cpu_s": cpu_s,
            "connections": best, "rate_by_connections": {str(k): v[0] for k, v in runs.items()},
            "method": "raw COPY of pre-formatted text (OrderStore.encode, built before the clock) into "
                      "orders_staging + pipeline.store.INSERT_SQL (ON CONFLICT DO NOTHING + customer_stats), "
                      f"one transaction per batch, on {', '.join(map(str, PG_CONNECTIONS))} connections (each "
                      "a thread taking every k-th batch, into a fresh database); the best is the ceiling",
            "store_write": {"seconds": round(seconds2, 3), "rate": rate(n, seconds2),
                            "method": "OrderStore.write(batch) on pre-built OrderRows (formats COPY lines in "
                                      "Python), same batch size"}}
