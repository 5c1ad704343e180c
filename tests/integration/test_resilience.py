"""Group behaviour and outages: partitions spread over members, a killed member's work moves, and a
PostgreSQL outage pauses consumers without losing their membership or committing anything."""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.helpers import PipelineEnv, running, stop, wait_for
from tests.infra import Infra

pytestmark = pytest.mark.integration


def create_topic(pipe: PipelineEnv, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": pipe.bootstrap})
    admin.create_topics([NewTopic(pipe.topic, partitions, 1)])[pipe.topic].result(30)


def owners(pipe: PipelineEnv, expected_members: int) -> list[tuple[str, list[int]]]:
    """Members and partitions once the group is stable with every partition owned."""
    def stable() -> list[tuple[str, list[int]]] | None:
        members = pipe.members()
        owned = sorted(p for _, parts in members for p in parts)
        return members if len(members) == expected_members and owned == [0, 1, 2] else None
    return wait_for(stable, 60, f"{expected_members} members owning partitions 0-2")


def test_three_consumers_own_one_partition_each_and_a_killed_ones_partition_moves(pipe: PipelineEnv) -> None:
    create_topic(pipe)
    procs = [pipe.start("consumer", f"c{i}") for i in range(3)]
    with running(*procs):
        members = owners(pipe, 3)
        assert [len(parts) for _, parts in members] == [1, 1, 1]
        # client.id = {prefix}-{hostname}-{pid}, so the group description names the owning process.
        assert sorted(cid.rsplit("-", 1)[1] for cid, _ in members) == sorted(str(p.pid) for p in procs)

        victim = procs[0]
        victim_partitions = next(parts for cid, parts in members if cid.endswith(f"-{victim.pid}"))
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        survivors = owners(pipe, 2)  # after the session timeout the coordinator moves its partition
        assert all(cid.rsplit("-", 1)[1] != str(victim.pid) for cid, _ in survivors)
        assert any(victim_partitions[0] in parts for _, parts in survivors)

        pipe.produce(2_000)
        wait_for(lambda: pipe.row_count() == 2_000, 60, "processing goes on with two consumers")
        wait_for(lambda: pipe.lag() == 0, 60, "lag 0")
        assert all(stop(p) == 0 for p in procs[1:])


def test_five_consumers_on_three_partitions_leave_two_idle(pipe: PipelineEnv) -> None:
    create_topic(pipe)
    procs = [pipe.start("consumer", f"c{i}") for i in range(5)]
    with running(*procs):
        members = owners(pipe, 5)
        assert sorted(len(parts) for _, parts in members) == [0, 0, 1, 1, 1]
        assert all(stop(p) == 0 for p in procs)


def test_postgres_outage_pauses_without_commits_and_recovers_alone(infra: Infra, pipe: PipelineEnv) -> None:
    create_topic(pipe)
    consumer = pipe.start("consumer", "consumer")
    producer = pipe.start("producer", "producer", PRODUCER_RATE="300", PRODUCER_MAX_ORDERS="0")
    with infra.server("postgres") as postgres, running(consumer, producer):
        wait_for(lambda: pipe.row_count() > 500, 60, "orders flowing")
        assert postgres.stop(timeout=30)
        wait_for(lambda: "pausing" in pipe.log("consumer"), 30, "the consumer to pause")
        committed_at_outage = pipe.committed()
        client_ids = [cid for cid, _ in pipe.members()]
        outage_end = time.monotonic() + 30
        while time.monotonic() < outage_end:
            assert consumer.poll() is None, "the consumer must not exit while PostgreSQL is down"
            members = pipe.members()
            assert [cid for cid, _ in members] == client_ids, "membership must hold"
            assert sorted(p for _, parts in members for p in parts) == [0, 1, 2]
            assert pipe.committed() == committed_at_outage, "nothing may be committed"
            time.sleep(2)
        postgres.start(timeout=60)
        assert stop(producer) == 0
        produced = sum(pipe.end_offsets().values())
        wait_for(lambda: pipe.row_count() == produced, 90, "catching up after the outage")
        wait_for(lambda: pipe.lag() == 0, 60, "lag 0")
        assert stop(consumer) == 0
    assert pipe.stats_consistent()
    log = pipe.log("consumer")
    assert "dependency back; resumed 3 partition(s)" in log
    assert "Traceback" not in log


def test_broker_outage_is_logged_and_the_consumer_carries_on(infra: Infra, pipe: PipelineEnv) -> None:
    create_topic(pipe)
    consumer = pipe.start("consumer", "consumer")
    with infra.server("kafka") as kafka, running(consumer):
        pipe.produce(1_000)
        wait_for(lambda: pipe.row_count() == 1_000, 60, "first orders stored")
        assert kafka.stop(timeout=60)
        wait_for(lambda: "Kafka broker unavailable" in pipe.log("consumer"), 60, "the outage in the log")
        assert consumer.poll() is None, "the consumer must keep running while the broker is down"
        kafka.start(timeout=120)
        pipe.produce(1_000)
        wait_for(lambda: pipe.row_count() == 2_000, 120, "orders stored after the broker came back")
        wait_for(lambda: pipe.lag() == 0, 60, "lag 0")
        assert stop(consumer) == 0
    assert pipe.stats_consistent()
