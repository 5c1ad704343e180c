"""Throwaway servers for tests and benchmarks: free loopback ports, a temp state dir, removed after."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from pipeline.services.process import free_port
from pipeline.services.servers import LocalServices, ServicesConfig
from pipeline.settings import parse_host_settings


@contextmanager
def ephemeral_services(name: str, kafka_mode: str = "zookeeper", kafka_heap: str = "1g",
                       keep_state: bool = False, brokers: int = 1) -> Iterator[LocalServices]:
    """ZooKeeper (unless KRaft), Kafka and PostgreSQL of their own, started and ready; the database
    role may create databases (one per test or benchmark phase). Stopped and removed at the end,
    pass or fail; `keep_state` keeps the temp dir (its logs) and says where; `brokers` > 1 makes a
    Kafka cluster (ZooKeeper mode)."""
    root = Path(tempfile.mkdtemp(prefix=f"food-orders-{name}-"))
    os.chmod(root, 0o755)  # the postgres account must reach its data dir inside
    host = parse_host_settings({
        "PIPELINE_STATE_DIR": str(root),
        "PIPELINE_PREFIX": os.environ.get("PIPELINE_PREFIX", ""),  # the jars: as installed, else the checkout's
        "PIPELINE_KAFKA_MODE": kafka_mode,
        "PIPELINE_ZOOKEEPER_PORT": str(free_port()),
        "PIPELINE_KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_BOOTSTRAP_SERVERS": ",".join(f"127.0.0.1:{free_port()}" for _ in range(brokers)),
        "DATABASE_URL": f"postgresql://pipeline:{uuid.uuid4().hex}@127.0.0.1:{free_port()}/pipeline",
    })
    config = replace(ServicesConfig.from_host(host), kafka_heap=kafka_heap)
    services = LocalServices(config)
    try:
        services.start(timeout=120, say=lambda line: None)
        services.psql(f'ALTER ROLE "{config.db_user}" CREATEDB')
        yield services
    finally:
        services.stop(timeout=60, say=lambda line: None)
        if keep_state:
            print(f"state of the {name} servers kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
