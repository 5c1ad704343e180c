"""The pipeline end to end: real producer and consumer processes, real Kafka and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.partitioning import partition_for
from tests.helpers import REPO, PipelineEnv, running, stop, wait_for

pytestmark = pytest.mark.integration


def test_ten_thousand_orders_stored_exactly_once_and_replay_changes_nothing(pipe: PipelineEnv) -> None:
    pipe.produce(10_000)
    consumer = pipe.start("consumer", "consumer-1")
    with running(consumer):
        wait_for(lambda: pipe.row_count() == 10_000, 120, "10,000 rows")
        wait_for(lambda: pipe.lag() == 0, 60, "lag 0")
        assert stop(consumer) == 0
    assert pipe.db("SELECT count(DISTINCT customer_id) FROM orders") == [(100,)]
    assert pipe.db("SELECT count(*) FROM customer_stats") == [(100,)]
    assert pipe.stats_consistent()
    # Every row sits on the partition the Java client's murmur2 gives its key.
    rows = pipe.db("SELECT customer_id, kafka_partition FROM orders")
    assert all(partition_for(c.encode(), 3) == p for c, p in rows)  # type: ignore[union-attr]
    stats_before = pipe.db("SELECT * FROM customer_stats ORDER BY customer_id")

    # Reset the group to the earliest offsets with Kafka's own tool, and consume everything again.
    subprocess.run([REPO / "bin" / "kafka-consumer-groups", "--bootstrap-server", pipe.bootstrap,
                    "--group", pipe.group, "--topic", pipe.topic, "--reset-offsets", "--to-earliest", "--execute"],
                   check=True, capture_output=True, timeout=60)
    assert pipe.lag() == 10_000
    replay = pipe.start("consumer", "consumer-2")
    with running(replay):
        wait_for(lambda: pipe.lag() == 0, 120, "lag 0 after the replay")
        assert stop(replay) == 0
    assert pipe.row_count() == 10_000
    assert pipe.db("SELECT * FROM customer_stats ORDER BY customer_id") == stats_before
    assert "redelivered 10000" in pipe.log("consumer-2")


def test_crash_between_db_commit_and_offset_commit_duplicates_nothing(pipe: PipelineEnv) -> None:
    pipe.produce(3_000)
    crashing = pipe.start("consumer", "crashing", PIPELINE_FAULT="after_db_commit", CONSUMER_BATCH_SIZE="1000")
    with running(crashing):
        assert crashing.wait(60) == 86
    written = pipe.row_count()
    assert 0 < written <= 1_000
    assert pipe.lag() == 3_000  # the offsets were never committed
    assert pipe.stats_consistent()

    restarted = pipe.start("consumer", "restarted")
    with running(restarted):
        wait_for(lambda: pipe.lag() == 0, 60, "lag 0 after restart")
        assert stop(restarted) == 0
    assert pipe.row_count() == 3_000
    assert pipe.db("SELECT count(*) - count(DISTINCT order_id) FROM orders") == [(0,)]
    assert pipe.stats_consistent()
    assert f"redelivered {written}" in pipe.log("restarted")


def test_producer_restarted_mid_run_loses_no_order_to_id_collisions(pipe: PipelineEnv) -> None:
    # Same seed both times: identical content, so only the order ids keep the orders apart.
    first = pipe.start("producer", "producer-1", PRODUCER_RATE="2000", PRODUCER_MAX_ORDERS="0", PRODUCER_SEED="7")
    with running(first):
        wait_for(lambda: sum(pipe.end_offsets().values()) >= 1_500, 60, "first producer to publish")
        assert stop(first) == 0
    pipe.produce(1_000, PRODUCER_SEED="7")
    produced = sum(pipe.end_offsets().values())

    consumer = pipe.start("consumer", "consumer")
    with running(consumer):
        wait_for(lambda: pipe.lag() == 0, 90, "lag 0")
        assert stop(consumer) == 0
    assert pipe.row_count() == produced
    assert "undelivered 0" in pipe.log("producer-1")


def test_sigterm_under_load_exits_zero_quickly_with_offsets_committed(pipe: PipelineEnv) -> None:
    pipe.produce(30_000)
    consumer = pipe.start("consumer", "consumer", CONSUMER_BATCH_SIZE="200")
    with running(consumer):
        wait_for(lambda: pipe.row_count() > 2_000, 60, "consumer under load")
        consumer.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert consumer.wait(10) == 0
        assert time.monotonic() - t0 < 10
    committed = pipe.committed()
    written = dict(pipe.db("SELECT kafka_partition, max(kafka_offset) + 1 FROM orders GROUP BY 1"))  # type: ignore[arg-type]
    assert written, "nothing was written"
    assert committed == {p: written.get(p, -1001) for p in committed}
    assert pipe.row_count() < 30_000  # it really stopped mid-stream


def test_added_partitions_are_used_within_seconds_without_restarts(pipe: PipelineEnv) -> None:
    producer = pipe.start("producer", "producer", PRODUCER_RATE="300", PRODUCER_MAX_ORDERS="0")
    consumer = pipe.start("consumer", "consumer")
    with running(producer, consumer):
        wait_for(lambda: pipe.row_count() > 100, 60, "orders flowing")
        cli = [sys.executable, "-m", "pipeline.cli", "topic", "partitions"]
        env = pipe.env(PIPELINE_ENV_FILE=os.devnull)
        shrink = subprocess.run([*cli, "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert shrink.returncode != 0 and "cannot remove partitions" in shrink.stderr
        grow = subprocess.run([*cli, "6"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert grow.returncode == 0, grow.stderr
        grown_at = time.monotonic()
        wait_for(lambda: all(pipe.end_offsets().get(p, 0) > 0 for p in (3, 4, 5)), 20,
                 "the running producer to write to partitions 3-5")
        assert time.monotonic() - grown_at < 15
        wait_for(lambda: pipe.db("SELECT count(DISTINCT kafka_partition) FROM orders")[0][0] == 6, 60,
                 "the running consumer to store orders from all six partitions")
        assert stop(producer) == 0
        produced = sum(pipe.end_offsets().values())
        wait_for(lambda: pipe.row_count() == produced, 60, "every order stored")
        assert stop(consumer) == 0
    assert "undelivered 0" in pipe.log("producer")
