"""The benchmark's own private ZooKeeper + Kafka + PostgreSQL (free loopback ports, temp state dir).

Never touches a local pipeline's servers (`var/`, ports 2181/9092/5433): everything here is fresh and is
stopped when the `private_infra` context exits, pass or fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pipeline.services import LocalServices
from pipeline.services.ephemeral import ephemeral_services
from pipeline.settings import Settings, parse_settings
from pipeline.store import create_database

REPO = Path(__file__).resolve().parents[1]
# Environment prefixes a pipeline process reads; dropped from our environment so `.env` and the
# operator's shell cannot leak a local pipeline's settings into a benchmark process.
_PIPELINE_PREFIXES = ("KAFKA_", "DATABASE_", "PRODUCER_", "CONSUMER_", "CLIENT_ID_", "LOG_", "SUPERVISOR_",
                      "PIPELINE_")


@dataclass
class BenchInfra:
    """Where the private servers listen, plus the subprocesses started against them."""

    bootstrap_servers: str
    database_url: str
    services: LocalServices
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        path = self.root / "bench-logs"
        path.mkdir(exist_ok=True)
        return path

    def new_database(self, prefix: str) -> str:
        """A fresh, empty database owned by the pipeline role; returns its URL."""
        return create_database(self.database_url, f"{prefix}_{uuid.uuid4().hex[:8]}")

    def env(self, **values: str) -> dict[str, str]:
        """Environment for a pipeline process: every pipeline variable set explicitly (an empty value
        means "the default"), so the repository's `.env` cannot override any of them."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PIPELINE_PREFIXES)}
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "DATABASE_URL": self.database_url,
            "KAFKA_TOPIC": "bench-orders", "KAFKA_DLQ_TOPIC": "bench-orders.dlq", "KAFKA_PARTITIONS": "3",
            "KAFKA_REPLICATION_FACTOR": "1", "CONSUMER_GROUP_ID": "bench", "CLIENT_ID_PREFIX": "bench",
            "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "KAFKA_SASL_MECHANISM": "", "KAFKA_SASL_USERNAME": "",
            "KAFKA_SASL_PASSWORD": "", "KAFKA_SSL_CA_LOCATION": "", "PRODUCER_RATE": "0",
            "PRODUCER_MAX_ORDERS": "0", "PRODUCER_SEED": "", "CONSUMER_BATCH_SIZE": "",
            "CONSUMER_BATCH_TIMEOUT_MS": "", "CONSUMER_COMMIT_INTERVAL_MS": "", "CONSUMER_SESSION_TIMEOUT_MS": "",
            "CONSUMER_INSTANCE_ID": "",
            "LOG_LEVEL": "INFO", "LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1",
            # Metrics on, as supervisord runs the programs (one directory for the whole run).
            "METRICS_ENABLED": "true", "PROMETHEUS_MULTIPROC_DIR": str(self.root / "metrics"),
        })
        env.update(values)
        return env

    def settings(self, **values: str) -> Settings:
        """The same settings a pipeline process started with `env(**values)` would parse."""
        return parse_settings(self.env(**values))

    def spawn(self, module: str, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        """`python -m module` from the repository root, its output in a log file; stopped at exit."""
        log = open(self.log_dir / f"{log_name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every benchmark subprocess still running, SIGKILL what does not exit in time."""
        stop(self.procs, timeout)
        self.procs.clear()

    def create_topic(self, name: str, partitions: int = 3) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 3})
        for future in admin.create_topics([NewTopic(name, partitions, 1)], request_timeout=30).values():
            future.result(30)

    def log_tail(self, log_name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{log_name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def private_infra(keep_state: bool = False) -> Iterator[BenchInfra]:
    """Start ZooKeeper, Kafka and PostgreSQL on free ports under a temp dir; stop them at the end."""
    with ephemeral_services("bench", keep_state=keep_state) as services:
        c = services.config
        infra = BenchInfra(c.bootstrap_servers, c.database_url, services, c.state_dir)
        try:
            yield infra
        finally:
            infra.stop_all()


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> list[int]:
    """SIGTERM every process still running, SIGKILL what does not exit within `timeout`; the exit codes."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait(10))
    return codes
