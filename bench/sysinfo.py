"""Machine and software details recorded with every result."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import confluent_kafka
import psutil
import psycopg2

from bench.infra import REPO, BenchInfra


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


def _first(version: object) -> str:
    return str(version[0] if isinstance(version, tuple) else version)


def machine(infra: BenchInfra) -> dict[str, Any]:
    with psycopg2.connect(infra.database_url) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        (pg_version,) = cur.fetchone() or ("unknown",)
    conn.close()
    jars = sorted(infra.services.config.kafka_lib.glob("kafka_2.13-*.jar"))
    kafka_version = jars[0].stem.split("-", 1)[1] if jars else "unknown"
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cpus": psutil.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "kafka": f"{kafka_version} (zookeeper mode, 1 broker, heap {infra.services.config.kafka_heap})",
        "postgresql": str(pg_version),
        "confluent_kafka": f"{_first(confluent_kafka.version())} (librdkafka {_first(confluent_kafka.libversion())})",
        "psycopg2": str(getattr(psycopg2, "__version__", "?")).split()[0],
        "git_commit": git_commit(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
