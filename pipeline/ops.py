"""What `bin/pipeline` does to a running host: supervisord control and the status snapshot.

Each gatherer returns plain data (dicts/lists) so `status --json` and the tables show the same facts,
and a part that cannot be reached (supervisord down, Kafka down) is reported, not fatal.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import socket
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from pipeline.errors import FatalError
from pipeline.kafka_admin import admin_client
from pipeline.metrics import merged
from pipeline.observe import DatabaseView, KafkaProbe, KafkaView, concurrently, database_view, kafka_reachable
from pipeline.services.process import poll_until
from pipeline.settings import Settings


@dataclass(frozen=True)
class SupervisordPaths:
    """Where one supervisord keeps its socket, pid file and logs, read from its config file, so a
    checkout (`var/` next to supervisord.conf) and an installed host (/run, /var/log) look the same."""

    conf: Path
    socket: Path
    pidfile: Path
    logfile: Path
    childlogdir: Path
    metrics_dir: Path | None = None  # PROMETHEUS_MULTIPROC_DIR in [supervisord] environment

    @staticmethod
    def read(conf: Path) -> SupervisordPaths:
        parser = configparser.RawConfigParser()
        if not parser.read(conf):
            raise FatalError(f"supervisord config {conf} not found (PIPELINE_SUPERVISORD_CONF)")

        def path(section: str, key: str, default: str) -> Path:
            raw = parser.get(section, key, fallback=default).split(";")[0].strip()
            return Path(raw.replace("%(here)s", str(conf.parent))).resolve()

        var = str(conf.parent / "var")
        return SupervisordPaths(
            conf=conf,
            socket=path("unix_http_server", "file", f"{var}/run/supervisor.sock"),
            pidfile=path("supervisord", "pidfile", f"{var}/run/supervisord.pid"),
            logfile=path("supervisord", "logfile", f"{var}/log/supervisord.log"),
            childlogdir=path("supervisord", "childlogdir", f"{var}/log"),
            metrics_dir=_environment_path(parser.get("supervisord", "environment", fallback=""),
                                          "PROMETHEUS_MULTIPROC_DIR", conf.parent),
        )


def _environment_path(environment: str, name: str, here: Path) -> Path | None:
    """One variable of supervisord's `environment = A="x",B="y"` line, as a path."""
    for item in environment.split(";")[0].split(","):
        key, _, value = item.strip().partition("=")
        if key.strip() == name:
            return Path(value.strip().strip('"').replace("%(here)s", str(here))).resolve()
    return None


def supervisor_rpc(paths: SupervisordPaths) -> Any:
    """An XML-RPC proxy to supervisord over its unix socket."""
    from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped,unused-ignore]

    transport = SupervisorTransport(None, None, f"unix://{paths.socket}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisord_running(paths: SupervisordPaths) -> bool:
    try:
        return bool(supervisor_rpc(paths).supervisor.getState()["statecode"] == 1)
    except (OSError, xmlrpc.client.Error):
        return False


def await_supervisord(paths: SupervisordPaths, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Wait until supervisord answers on its socket (or `alive()` turns false)."""
    if not poll_until(lambda: supervisord_running(paths), timeout, give_up=lambda: not alive()):
        raise FatalError(f"supervisord did not answer on {paths.socket} within {timeout:.0f}s; see {paths.logfile}")


def stop_supervisord(paths: SupervisordPaths, timeout: float = 120.0) -> bool:
    """Stop every program gracefully (their stopsignal, stopwaitsecs), then supervisord itself."""
    if not supervisord_running(paths):
        return False
    rpc = supervisor_rpc(paths)
    rpc.supervisor.stopAllProcesses(True)
    rpc.supervisor.shutdown()
    deadline = time.monotonic() + timeout
    while paths.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return True


# -- status ----------------------------------------------------------------------------------------


def processes(paths: SupervisordPaths) -> list[dict[str, Any]] | None:
    """supervisord's view: name, state, pid, uptime; None when supervisord is not running."""
    if not supervisord_running(paths):
        return None
    now = time.time()
    return [
        {"name": f"{p['group']}:{p['name']}" if p["group"] != p["name"] else p["name"], "state": p["statename"],
         "pid": p["pid"] or None, "uptime_s": int(now - p["start"]) if p["statename"] == "RUNNING" else None}
        for p in supervisor_rpc(paths).supervisor.getAllProcessInfo()
    ]


def group_members(settings: Settings, timeout: float = 3.0) -> list[dict[str, Any]] | None:
    """Members of the consumer group as the group coordinator sees them; None when Kafka does not answer."""
    if not kafka_reachable(settings.kafka_bootstrap_servers, min(1.0, timeout)):
        return None
    admin = admin_client(settings)
    try:
        future = admin.describe_consumer_groups([settings.consumer_group_id], request_timeout=timeout)
        desc = future[settings.consumer_group_id].result(timeout + 0.5)
    except (KafkaException, TimeoutError):
        return None
    return sorted(
        ({"client_id": m.client_id, "host": m.host.lstrip("/"), "instance_id": m.group_instance_id,
          "partitions": sorted(tp.partition for tp in m.assignment.topic_partitions
                               if tp.topic == settings.kafka_topic)}
         for m in desc.members),
        key=lambda m: (m["partitions"][:1] or [1 << 30], m["client_id"]),
    )


def degraded_processes(directory: Path | None) -> list[str] | None:
    """Consumers that report a dependency down (their `food_orders_consumer_degraded` gauge), from the
    metrics directory; None when there is none to read."""
    if directory is None or not directory.is_dir():
        return None
    found: set[str] = set()
    for family in merged(directory):
        if family.name == "food_orders_consumer_degraded":
            found.update(f"{s.labels['process']} ({s.labels['dependency']})" for s in family.samples if s.value)
    return sorted(found)


def with_local_processes(members: list[dict[str, Any]] | None,
                         procs: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Name the local supervisord process behind each static member (instance `{hostname}-consumer_NN`).

    The coordinator keeps a static member's client.id from before a restart until the next rebalance,
    so its pid can be stale; the process's pid now comes from supervisord."""
    if members is None:
        return None
    host = socket.gethostname()
    pids = {p["name"].split(":")[-1]: p["pid"] for p in procs or []}
    for m in members:
        slot = (m["instance_id"] or "").removeprefix(f"{host}-") if m["instance_id"] else None
        m["process"] = slot if slot in pids else None
        m["pid"] = pids.get(slot) if slot else None
    return members


PROBE_TIMEOUT = 4.0  # every part of a snapshot answers within this, or is "unknown"


def snapshot(settings: Settings, paths: SupervisordPaths, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Everything `bin/pipeline status` shows, each part asked at once, with a deadline: a part that
    does not answer is None ("unknown"), and the whole takes at most about `timeout` seconds."""
    probe = KafkaProbe(settings)
    answers = concurrently({
        "processes": lambda: processes(paths),
        "kafka": lambda: probe.read_once(timeout - 0.5),
        "members": lambda: group_members(settings, timeout - 1.0),
        "database": lambda: database_view(settings.database_url, timeout - 1.0),
        "degraded": lambda: degraded_processes(paths.metrics_dir),
    }, timeout)
    procs: list[dict[str, Any]] | None = answers["processes"]
    view: KafkaView | None = answers["kafka"]
    db: DatabaseView | None = answers["database"]
    partitions = view.partitions if view is not None else None
    return {
        "servers": {"supervisord": procs is not None, "kafka": view is not None, "postgresql": db is not None},
        "processes": procs,
        "topic": {"name": settings.kafka_topic, "partitions": len(partitions) if partitions is not None else None},
        "group": {"id": settings.consumer_group_id,
                  "members": with_local_processes(answers["members"], procs)},
        "lag": None if partitions is None else [
            {"partition": p.partition, "committed": p.committed, "end": p.end, "lag": p.lag,
             "lag_seconds": p.lag_seconds} for p in partitions],
        "total_lag": view.total_lag if view is not None else None,
        "max_lag_seconds": view.max_lag_seconds if view is not None else None,
        "database": None if db is None else {
            "orders": db.orders, "unique_customers": db.unique_customers, "avg_order_value": db.avg_order_value,
            "duplicate_order_ids": db.duplicate_order_ids, "stats_mismatches": db.stats_mismatches,
            "stats_match_rows": db.stats_mismatches == 0},
        "dlq": {"topic": settings.kafka_dlq_topic, "messages": view.dlq_letters if view is not None else None},
        "degraded": answers["degraded"],
    }


def check_state_file(settings: Settings) -> Path:
    """Where `--check` keeps the DLQ count of its previous run: per user (the monitoring system's),
    per cluster and DLQ topic."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "food-orders"
    key = hashlib.sha256(f"{settings.kafka_bootstrap_servers}/{settings.kafka_dlq_topic}".encode()).hexdigest()[:12]
    return cache / f"check-{key}.json"


def read_letters(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["dlq_letters"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_letters(path: Path, letters: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"dlq_letters": letters}))
        tmp.replace(path)
    except OSError:
        pass  # growth stays unknown next time; the check itself is still right


def log_files(paths: SupervisordPaths, name: str | None = None) -> list[Path]:
    """Program logs in supervisord's childlogdir (one per process)."""
    logs = sorted(p for p in paths.childlogdir.glob("*.log")
                  if p.name != "supervisord.log" and not p.name.startswith(("kafka", "zookeeper", "postgres")))
    if name:
        logs = [p for p in logs if p.stem == name or p.stem.startswith(f"{name}_")]
    return logs
