"""The foundation: real ZooKeeper, Kafka and PostgreSQL started by the fixtures, and our wrappers."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.services import LocalServices, ServiceError, ServicesConfig, free_port
from pipeline.settings import parse_host_settings
from tests.helpers import REPO
from tests.infra import Infra, local_infra

pytestmark = pytest.mark.integration


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def test_topic_with_three_partitions_is_described_by_admin_and_cli(infra: Infra, topic_name: str) -> None:
    create_topic(infra.bootstrap_servers, topic_name)
    md = AdminClient({"bootstrap.servers": infra.bootstrap_servers}).list_topics(topic_name, timeout=10)
    assert sorted(md.topics[topic_name].partitions) == [0, 1, 2]

    out = subprocess.run(
        [REPO / "bin" / "kafka-topics", "--bootstrap-server", infra.bootstrap_servers,
         "--describe", "--topic", topic_name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "PartitionCount: 3" in out
    assert sum(1 for line in out.splitlines() if "Partition: " in line and "Leader: " in line) == 3


def test_produce_and_consume_round_trip(infra: Infra, topic_name: str) -> None:
    create_topic(infra.bootstrap_servers, topic_name)
    producer = Producer({"bootstrap.servers": infra.bootstrap_servers, "enable.idempotence": True})
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(50)}
    for key, value in sent.items():
        producer.produce(topic_name, value, key)
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": infra.bootstrap_servers, "group.id": f"g-{topic_name}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic_name])
    received: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            received[msg.key()] = msg.value()
    consumer.close()
    assert received == sent

    groups = subprocess.run(
        [REPO / "bin" / "kafka-consumer-groups", "--bootstrap-server", infra.bootstrap_servers, "--list"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()
    assert f"g-{topic_name}" in groups


def test_row_round_trips_through_postgres(database_url: str) -> None:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id text PRIMARY KEY, amount numeric(10,2), at timestamptz)")
        cur.execute("INSERT INTO t VALUES (%s, %s, now())", ("ORD-1", "12.34"))
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, amount::text FROM t")
        assert cur.fetchall() == [("ORD-1", "12.34")]


def test_client_recovers_after_broker_restart(infra: Infra, topic_name: str) -> None:
    create_topic(infra.bootstrap_servers, topic_name, partitions=1)
    producer = Producer({"bootstrap.servers": infra.bootstrap_servers, "enable.idempotence": True,
                         "message.timeout.ms": 120000})
    producer.produce(topic_name, b"before")
    assert producer.flush(30) == 0

    with infra.server("kafka") as kafka:
        old_pid = kafka.pid()
        assert kafka.stop(timeout=60)
        producer.produce(topic_name, b"during")  # queued while the broker is down
        producer.poll(1)
        new_pid = kafka.start(timeout=120)
    assert new_pid != old_pid
    assert producer.flush(120) == 0

    consumer = Consumer({"bootstrap.servers": infra.bootstrap_servers, "group.id": f"g-{topic_name}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic_name])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(values) < 2 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value())
        elif msg is not None:
            assert msg.error().code() != KafkaError._FATAL
    consumer.close()
    assert values == [b"before", b"during"]


def test_port_in_use_is_reported_with_its_owner(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        config = ServicesConfig.from_host(parse_host_settings({
            "PIPELINE_STATE_DIR": str(tmp_path), "PIPELINE_ZOOKEEPER_PORT": str(port),
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "PIPELINE_PREFIX": os.environ.get("PIPELINE_PREFIX", ""),
        }))
        with pytest.raises(ServiceError) as err:
            LocalServices(config).start(timeout=30, say=lambda line: None)
    assert f"port {port} is already in use by pid {os.getpid()}" in str(err.value)


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = ServicesConfig.from_host(parse_host_settings({"PIPELINE_STATE_DIR": str(blocker / "state")}))
    with pytest.raises(ServiceError, match="is not writable"):
        LocalServices(config).start(timeout=5, say=lambda line: None)


@pytest.mark.slow
def test_kraft_mode_broker_serves_topics() -> None:
    with local_infra(kafka_mode="kraft") as kraft:
        assert kraft.services is not None
        assert [name for name, _, _ in kraft.services.status()] == ["kafka", "postgres"]
        name = f"kraft-{uuid.uuid4().hex[:8]}"
        create_topic(kraft.bootstrap_servers, name)
        md = AdminClient({"bootstrap.servers": kraft.bootstrap_servers}).list_topics(name, timeout=10)
        assert len(md.topics[name].partitions) == 3
