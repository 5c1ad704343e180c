"""What `bin/pipeline` does to a running host: supervisord control and the status snapshot.

Each gatherer returns plain data (dicts/lists) so `status --json` and the tables show the same facts,
and a part that cannot be reached (supervisord down, Kafka down) is reported, not fatal.
"""

from __future__ import annotations

import configparser
import socket
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from confluent_kafka import KafkaException

from pipeline.errors import FatalError
from pipeline.kafka_admin import admin_client, group_lag, topic_partition_count
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
        )


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


def group_members(settings: Settings) -> list[dict[str, Any]] | None:
    """Members of the consumer group as the group coordinator sees them."""
    admin = admin_client(settings)
    try:
        future = admin.describe_consumer_groups([settings.consumer_group_id], request_timeout=10)
        desc = future[settings.consumer_group_id].result(15)
    except (KafkaException, TimeoutError):
        return None
    return sorted(
        ({"client_id": m.client_id, "host": m.host.lstrip("/"), "instance_id": m.group_instance_id,
          "partitions": sorted(tp.partition for tp in m.assignment.topic_partitions
                               if tp.topic == settings.kafka_topic)}
         for m in desc.members),
        key=lambda m: (m["partitions"][:1] or [1 << 30], m["client_id"]),
    )


def lag(settings: Settings) -> list[dict[str, Any]] | None:
    rows = group_lag(settings)
    if not rows:
        return None
    return [{"partition": r.partition, "committed": r.committed, "end": r.end, "lag": r.lag} for r in rows]


def dlq_messages(settings: Settings) -> int | None:
    count = topic_partition_count(settings, settings.kafka_dlq_topic)
    if count is None:
        return None
    return sum(r.end for r in group_lag(settings, settings.kafka_dlq_topic, f"{settings.consumer_group_id}-dlq-probe"))


def db_totals(settings: Settings) -> dict[str, Any] | None:
    try:
        with psycopg2.connect(settings.database_url, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("""
                SELECT count(*), count(DISTINCT customer_id), round(avg(total_amount), 2),
                       count(*) - count(DISTINCT order_id),
                       (SELECT coalesce(sum(total_spent), 0) FROM customer_stats) = coalesce(sum(total_amount), 0)
                FROM orders""")
            orders, customers, avg, dupes, consistent = cur.fetchone()  # type: ignore[misc]
    except psycopg2.Error:
        return None
    return {"orders": orders, "unique_customers": customers, "avg_order_value": float(avg or 0),
            "duplicate_order_ids": dupes, "stats_match_rows": consistent}


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


def snapshot(settings: Settings, paths: SupervisordPaths) -> dict[str, Any]:
    """Everything `bin/pipeline status` shows."""
    lags = lag(settings)
    procs = processes(paths)
    return {
        "processes": procs,
        "topic": {"name": settings.kafka_topic, "partitions": topic_partition_count(settings)},
        "group": {"id": settings.consumer_group_id,
                  "members": with_local_processes(group_members(settings), procs)},
        "lag": lags,
        "total_lag": sum(r["lag"] for r in lags) if lags else None,
        "database": db_totals(settings),
        "dlq": {"topic": settings.kafka_dlq_topic, "messages": dlq_messages(settings)},
    }


def log_files(paths: SupervisordPaths, name: str | None = None) -> list[Path]:
    """Program logs in supervisord's childlogdir (one per process)."""
    logs = sorted(p for p in paths.childlogdir.glob("*.log")
                  if p.name != "supervisord.log" and not p.name.startswith(("kafka", "zookeeper", "postgres")))
    if name:
        logs = [p for p in logs if p.stem == name or p.stem.startswith(f"{name}_")]
    return logs
