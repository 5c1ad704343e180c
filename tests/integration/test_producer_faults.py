"""The producer through a broker crash: kill -9 the broker under load, start it again, and every order
the producer generated is in the topic exactly once, in generation order per key (ground truth read
raw from Kafka)."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pipeline.services import ManagedProcess
from pipeline.services.process import ServiceError
from tests.helpers import PipelineEnv, running, wait_for
from tests.infra import Infra

pytestmark = pytest.mark.integration

def create_topic(pipe: PipelineEnv, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": pipe.bootstrap})
    admin.create_topics([NewTopic(pipe.topic, partitions, 1)])[pipe.topic].result(30)


def start_after_sigkill(kafka: ManagedProcess) -> None:
    """Start a SIGKILLed broker again. In ZooKeeper mode its node /brokers/ids/0 stays until the
    ZooKeeper session expires, and a broker started before that exits with NodeExistsException:
    retry until one stays up. (Workaround: remove once pipeline.services waits for the node itself.)"""
    def started() -> bool:
        try:
            kafka.start(timeout=120)
        except ServiceError:
            return False
        return True
    wait_for(started, 120, "the killed broker to start again", interval=1.0)


@pytest.mark.parametrize(("rate", "orders"), [(2_000, 40_000), (0, 250_000)], ids=["2000-per-s", "flat-out"])
def test_broker_killed_under_load_loses_duplicates_and_reorders_no_order(infra: Infra, pipe: PipelineEnv,
                                                                         rate: int, orders: int) -> None:
    # At 2,000/s the client queues what is generated during the outage; flat out it fills the queue
    # (MAX_PENDING) within a second and generation must pause until the broker is back.
    create_topic(pipe)
    producer = pipe.start("producer", "producer", PRODUCER_RATE=str(rate), PRODUCER_MAX_ORDERS=str(orders))
    with infra.server("kafka") as kafka, running(producer):
        wait_for(lambda: sum(pipe.end_offsets().values()) >= 4_000, 60, "orders flowing")
        pid = kafka.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: kafka.pid() is None, 30, "the broker to die")
        wait_for(lambda: "Kafka broker unavailable" in pipe.log("producer"), 30, "the outage in the producer's log")
        if rate == 0:
            wait_for(lambda: "order generation paused" in pipe.log("producer"), 30, "generation to pause")
        assert producer.poll() is None, "the producer must keep running while the broker is down"
        start_after_sigkill(kafka)
        assert producer.wait(120) == 0, pipe.log("producer")[-3000:]

    log = pipe.log("producer")
    assert f"produced {orders}, delivered {orders}" in log and "undelivered 0" in log
    assert "Traceback" not in log
    # The outage is told once, not flooded: each kind of warning at most once per 30 s.
    assert log.count("Kafka broker unavailable") <= 2
    assert log.count("orders wait for Kafka") <= 1
    assert sum(pipe.end_offsets().values()) == orders  # nothing more: no duplicate from a re-send

    messages: list[Any] = pipe.read_topic(pipe.topic, orders, timeout=120)
    records = [(m.key(), m.partition(), m.offset(), json.loads(m.value())) for m in messages]
    ids = [o["order_id"] for _, _, _, o in records]
    assert len(ids) == orders
    assert len(set(ids)) == orders, "an order is in the topic twice"
    by_key: dict[bytes, list[tuple[int, int, dict[str, Any]]]] = {}
    for key, partition, offset, order in records:
        assert key == order["customer_id"].encode()
        by_key.setdefault(key, []).append((partition, offset, order))
    for key, rows in by_key.items():
        assert len({p for p, _, _ in rows}) == 1, f"{key!r} spread over partitions"
        in_log_order = [o for _, _, o in sorted(rows, key=lambda r: r[1])]
        # Order ids are UUIDv7, strictly increasing in generation order within the producer process.
        assert [o["order_id"] for o in in_log_order] == sorted(o["order_id"] for o in in_log_order), \
            f"orders of {key!r} out of generation order"
        created = [datetime.fromisoformat(o["created_at"]) for o in in_log_order]
        assert created == sorted(created), f"created_at of {key!r} goes back in offset order"
