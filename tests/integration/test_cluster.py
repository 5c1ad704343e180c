"""A local 3-broker cluster (ZooKeeper mode, KAFKA_BOOTSTRAP_SERVERS listing three ports): the topics get
3 replicas and min.insync.replicas=2; the leader of a partition SIGKILLed under load loses and doubles
nothing, producer and consumer carry on, and the broker rejoins the in-sync replicas when it is back."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from pipeline.audit import audit
from pipeline.services.ephemeral import ephemeral_services
from pipeline.settings import parse_settings
from pipeline.store import create_database
from tests.helpers import PipelineEnv, running, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

ORDERS = 30_000


def test_the_leader_killed_under_load_loses_nothing_and_rejoins_the_isr(tmp_path: Path) -> None:
    with ephemeral_services("cluster", kafka_heap="384m", brokers=3) as services:
        c = services.config
        assert len(c.bootstrap_servers.split(",")) == 3
        pipe = PipelineEnv(c.bootstrap_servers, create_database(c.database_url, "cluster"), "food-orders",
                           "order-processors", tmp_path)
        rf = {"KAFKA_REPLICATION_FACTOR": "3"}
        consumer = pipe.start("consumer", "consumer", **rf)
        producer = pipe.start("producer", "producer", PRODUCER_RATE="1000", PRODUCER_MAX_ORDERS=str(ORDERS), **rf)
        admin = AdminClient({"bootstrap.servers": c.bootstrap_servers})

        def partition(p: int) -> Any:
            try:
                return admin.list_topics(pipe.topic, timeout=5).topics[pipe.topic].partitions[p]
            except KafkaException:
                return None  # the request went to the broker that is down: ask again

        with running(consumer, producer):
            wait_for(lambda: pipe.row_count() > 3_000, 90, "orders flowing through the cluster")
            first = wait_for(lambda: partition(0), 30, "the topic's metadata")
            assert len(first.replicas) == 3 and sorted(first.isrs) == [0, 1, 2]
            topic_config = admin.describe_configs([ConfigResource("topic", pipe.topic)])
            config = next(iter(topic_config.values())).result(10)
            assert config["min.insync.replicas"].value == "2"
            assert config["unclean.leader.election.enable"].value == "false"

            leader: int = first.leader
            victim = services.kafka(leader)
            killed = victim.pid()
            assert killed
            os.kill(killed, signal.SIGKILL)
            wait_for(lambda: (m := partition(0)) is not None and m.leader not in (leader, -1), 60,
                     "a new leader for partition 0")
            before = pipe.row_count()
            wait_for(lambda: pipe.row_count() > before + 2_000, 90, "orders flowing with a broker down")
            victim.start(timeout=120)
            wait_for(lambda: all((m := partition(p)) is not None and leader in m.isrs for p in range(3)), 120,
                     f"broker {leader} back in the in-sync replicas")
            assert producer.wait(180) == 0, pipe.log("producer")[-3000:]
            wait_for(lambda: pipe.lag() == 0, 120, "the consumer to catch up")
        report = audit(parse_settings(pipe.env(**rf)))
        assert report.ok, report.lines()
        assert report.rows == ORDERS and report.valid_ids == ORDERS and report.repeated_ids == 0, report.lines()
