"""Peer (a): Kafka Connect 3.9.2 standalone with the Debezium JDBC sink connector.

One JVM (`ConnectStandalone`), started as Kafka's `connect-standalone.sh` starts it (its heap and GC
defaults), reading `CONNECT_TOPIC` (the orders re-encoded with their schema, see `topics`) and upserting
into the pre-created `orders` table. Every setting is written out here; the docs quote them.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bench.infra import BenchInfra
from bench.peers.install import ConnectInstall
from bench.peers.topics import CONNECT_TOPIC

# As Kafka's bin/connect-standalone.sh and kafka-run-class.sh run a worker.
JVM_OPTIONS = ("-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
               "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true")


@dataclass(frozen=True)
class ConnectOptions:
    """What the harness lets one tune: rows per batch (and per poll), and tasks (one per partition)."""

    batch_size: int = 5_000
    tasks: int = 3


def jdbc_url(database_url: str) -> tuple[str, str, str]:
    """(JDBC URL, user, password) of a libpq URL."""
    parts = urlsplit(database_url)
    url = f"jdbc:postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"
    return url, unquote(parts.username or ""), unquote(parts.password or "")


def worker_properties(bootstrap: str, install: ConnectInstall, run_dir: Path, options: ConnectOptions) -> str:
    return "\n".join([
        f"bootstrap.servers={bootstrap}",
        # Keys stay the producer's bytes (customer_id); values are JSON with their schema.
        "key.converter=org.apache.kafka.connect.storage.StringConverter",
        "value.converter=org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable=true",
        f"offset.storage.file.filename={run_dir / 'connect.offsets'}",
        "offset.flush.interval.ms=10000",
        f"plugin.path={install.plugins}",
        # Plugins found through their ServiceLoader manifests (KIP-898): no class path scan at start-up.
        "plugin.discovery=service_load",
        f"listeners=http://127.0.0.1:{_free_port()}",
        # One poll hands the task a whole batch: the sink flushes at batch.size or at the end of a poll.
        f"consumer.max.poll.records={options.batch_size}",
        "consumer.auto.offset.reset=earliest",
        "",
    ])


def connector_properties(name: str, database_url: str, options: ConnectOptions) -> str:
    url, user, password = jdbc_url(database_url)
    return "\n".join([
        f"name={name}",
        "connector.class=io.debezium.connector.jdbc.JdbcSinkConnector",
        f"tasks.max={options.tasks}",
        f"topics={CONNECT_TOPIC}",
        f"connection.url={url}",
        f"connection.username={user}",
        f"connection.password={password}",
        # One connection per task is all a task uses.
        "connection.pool.min_size=1",
        "connection.pool.max_size=2",
        "insert.mode=upsert",
        "primary.key.mode=record_value",
        "primary.key.fields=order_id",
        "schema.evolution=none",
        "collection.name.format=orders",
        "delete.enabled=false",
        f"batch.size={options.batch_size}",
        # One INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT per batch instead of a JDBC batch of
        # one statement per row: Debezium's own advice for throughput on PostgreSQL.
        "dialect.postgres.unnest.insert.enabled=true",
        "use.time.zone=UTC",
        # The columns our consumer fills from the record's coordinates, filled by Connect's own transform.
        "transforms=source",
        "transforms.source.type=org.apache.kafka.connect.transforms.InsertField$Value",
        "transforms.source.partition.field=kafka_partition",
        "transforms.source.offset.field=kafka_offset",
        "transforms.source.static.field=consumer_client_id",
        "transforms.source.static.value=kafka-connect",
        "",
    ])


_LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.reflections=ERROR
"""


def start_connect(infra: BenchInfra, install: ConnectInstall, database_url: str, options: ConnectOptions,
                  name: str) -> subprocess.Popen[bytes]:
    """Write the worker's and the connector's properties, start the worker; it is stopped with the infra."""
    run_dir = infra.root / "peers" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    worker = run_dir / "worker.properties"
    connector = run_dir / "connector.properties"
    log4j = run_dir / "log4j.properties"
    worker.write_text(worker_properties(infra.bootstrap_servers, install, run_dir, options))
    connector.write_text(connector_properties(name, database_url, options))
    connector.chmod(0o600)  # it holds the database password
    log4j.write_text(_LOG4J.format(log=infra.log_dir / f"{name}.log"))
    cmd = [install.java, *JVM_OPTIONS, f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{install.lib}/*",
           "org.apache.kafka.connect.cli.ConnectStandalone", str(worker), str(connector)]
    out = open(infra.log_dir / f"{name}.out", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(cmd, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    infra.procs.append(proc)
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
