"""Metrics without a process around them: the batch histogram shortcut, what the consumer loop reports,
the producer's deltas, and pruning the live gauges of dead processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram

from pipeline.metrics import ConsumerMetrics, ProducerMetrics, live_files, observe_many
from pipeline.orders import DB_REJECTED
from tests.unit.consumer_world import P0, P1, P2, World


def test_observe_many_equals_observing_one_value_at_a_time() -> None:
    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 1.0, 7.5, 42.0, 5000.0, 0.25]
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("h", "h", buckets=(0.005, 0.25, 1.0, 60.0), registry=one)
    for v in values:
        single.observe(v)
    observe_many(Histogram("h", "h", buckets=(0.005, 0.25, 1.0, 60.0), registry=many), values)
    samples = {(s.name, tuple(s.labels.items())): s.value for m in one.collect() for s in m.samples
               if not s.name.endswith("_created")}
    assert samples == {(s.name, tuple(s.labels.items())): s.value for m in many.collect() for s in m.samples
                       if not s.name.endswith("_created")}


@pytest.fixture
def metered() -> tuple[World, CollectorRegistry]:
    registry = CollectorRegistry()
    world = World()
    world.loop.metrics = ConsumerMetrics("consumer_07", registry=registry)
    world.kafka.assign(P0, P1, P2)
    return world, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_the_loop_reports_batches_dead_letters_and_partitions(metered: tuple[World, CollectorRegistry]) -> None:
    world, registry = metered
    world.produce(P0, 5)
    world.broker.append(P1, b"CUST-1", b"{nope")
    world.drain()
    p = {"process": "consumer_07"}
    assert value(registry, "food_orders_orders_inserted_total", **p) == 5
    assert value(registry, "food_orders_consumer_messages_total", **p) == 6
    assert value(registry, "food_orders_dead_letters_total", error="invalid_json", **p) == 1
    assert value(registry, "food_orders_assigned_partitions", **p) == 3
    assert value(registry, "food_orders_rebalance_events_total", kind="assigned", **p) == 1
    assert value(registry, "food_orders_end_to_end_latency_seconds_count") == 5
    assert value(registry, "food_orders_batch_messages_sum") == 6
    assert value(registry, "food_orders_write_duration_seconds_count") == value(
        registry, "food_orders_batch_messages_count")

    world.store.refuse = {world.produce(P2, 1)[0].order_id}
    world.drain()
    assert value(registry, "food_orders_dead_letters_total", error=DB_REJECTED, **p) == 1
    world.kafka.revoke(P2)
    world.steps(1)
    assert value(registry, "food_orders_assigned_partitions", **p) == 2


def test_degraded_is_set_per_dependency_and_cleared_on_recovery(metered: tuple[World, CollectorRegistry]) -> None:
    world, registry = metered
    p = {"process": "consumer_07"}
    world.store.down = True
    world.produce(P0, 2)
    world.steps(3)
    assert value(registry, "food_orders_consumer_degraded", dependency="postgresql", **p) == 1
    assert value(registry, "food_orders_consumer_degraded", dependency="kafka", **p) == 0
    assert value(registry, "food_orders_dependency_retries_total", dependency="postgresql", **p) == 3
    world.store.down = False
    world.drain()
    assert value(registry, "food_orders_consumer_degraded", dependency="postgresql", **p) == 0
    world.dlq.down = True
    world.broker.append(P0, b"CUST-1", b"{nope")
    world.steps(1)
    assert value(registry, "food_orders_consumer_degraded", dependency="kafka", **p) == 1


def test_producer_counters_follow_its_totals_and_never_go_down() -> None:
    registry = CollectorRegistry()
    m = ProducerMetrics("producer", registry=registry)
    m.update(100, 90, 1, 10, 0, force=True)
    m.update(150, 80, 1, 3, 2, force=True)  # delivered can dip (a failure counted late): the counter holds
    m.update(160, 155, 2, 5, 0)  # within a second of the last update: skipped
    assert value(registry, "food_orders_producer_orders_generated_total", process="producer") == 150
    assert value(registry, "food_orders_producer_orders_delivered_total", process="producer") == 90
    assert value(registry, "food_orders_producer_waiting_orders", process="producer") == 2


def test_live_gauges_of_processes_that_are_gone_are_left_out_and_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    me = str(os.getpid())
    for name in (f"gauge_livemax_{gone}.db", f"gauge_livemax_{me}.db", f"counter_{gone}.db", f"gauge_max_{gone}.db"):
        (tmp_path / name).write_bytes(b"")
    kept = sorted([f"gauge_livemax_{me}.db", f"counter_{gone}.db", f"gauge_max_{gone}.db"])
    assert sorted(Path(p).name for p in live_files(tmp_path)) == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == kept

