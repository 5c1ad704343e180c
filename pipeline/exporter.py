"""The host's Prometheus endpoint: `python -m pipeline.exporter` (supervisord's `[program:metrics]`).

One HTTP listener (METRICS_ADDRESS:METRICS_PORT, loopback by default) serves, at every scrape:
- what the producer, the consumers and the alerts listener wrote to PROMETHEUS_MULTIPROC_DIR
  (pipeline.metrics), merged; the live gauges of processes that died are removed first, so a
  dead consumer's series do not linger as live;
- what no single process knows, asked then (each with a deadline): per-partition committed offset,
  end offset and lag in messages and in seconds (the age of the oldest unconsumed message), letters
  in the DLQ (high - low watermark), whether Kafka, PostgreSQL and supervisord answer, and each
  program's state.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from loguru import logger

from pipeline import runtime
from pipeline.metrics import MULTIPROC_ENV, PREFIX, merged, metrics_dir
from pipeline.observe import KafkaProbe, KafkaView, concurrently, database_up
from pipeline.ops import SupervisordPaths, processes
from pipeline.settings import Settings, environment, parse_host_settings

SCRAPE_BUDGET = 4.0  # seconds for the live probes of one scrape (Prometheus' default scrape timeout is 10 s)


class LiveFiles:
    """Every process's metrics files merged, without the live gauges of processes that are gone."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Any:
        return merged(self.directory)


class HostCollector:
    """Kafka offsets and lag, the DLQ, and which servers and programs answer, asked at scrape time."""

    def __init__(self, settings: Settings, supervisord: SupervisordPaths | None) -> None:
        self.settings = settings
        self.supervisord = supervisord
        self.kafka = KafkaProbe(settings)
        self._lock = threading.Lock()  # one scrape at a time uses the Kafka client

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        s = self.settings
        with self._lock:
            answers = concurrently({
                "kafka": lambda: self.kafka.read(SCRAPE_BUDGET - 0.5),
                "postgresql": lambda: database_up(s.database_url, 2.0),
                "programs": lambda: processes(self.supervisord) if self.supervisord else None,
            }, SCRAPE_BUDGET)
        view: KafkaView | None = answers["kafka"]
        programs: list[dict[str, Any]] | None = answers["programs"]
        up = GaugeMetricFamily(f"{PREFIX}_server_up", "1 if the server answered this scrape", labels=["server"])
        up.add_metric(["kafka"], view is not None)
        up.add_metric(["postgresql"], bool(answers["postgresql"]))
        up.add_metric(["supervisord"], programs is not None)
        yield up
        state = GaugeMetricFamily(f"{PREFIX}_program_up", "1 if supervisord reports the program RUNNING",
                                  labels=["program"])
        for program in programs or []:
            state.add_metric([program["name"]], program["state"] == "RUNNING")
        yield state
        if view is None:
            return
        group_topic = [s.consumer_group_id, s.kafka_topic]
        end = GaugeMetricFamily(f"{PREFIX}_partition_end_offset", "Log end offset of the orders topic",
                                labels=["topic", "partition"])
        committed = GaugeMetricFamily(f"{PREFIX}_group_committed_offset", "The consumer group's committed offset",
                                      labels=["group", "topic", "partition"])
        lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag_messages", "Messages not yet committed by the group",
                                labels=["group", "topic", "partition"])
        age = GaugeMetricFamily(f"{PREFIX}_consumer_lag_seconds",
                                "Age of the oldest message the group has not committed (0 without lag)",
                                labels=["group", "topic", "partition"])
        for p in view.partitions or []:
            end.add_metric([s.kafka_topic, str(p.partition)], p.end)
            if p.committed is not None:
                committed.add_metric([*group_topic, str(p.partition)], p.committed)
            lag.add_metric([*group_topic, str(p.partition)], p.lag)
            if p.lag_seconds is not None:
                age.add_metric([*group_topic, str(p.partition)], p.lag_seconds)
        yield from (end, committed, lag, age)
        if view.dlq_letters is not None:
            dlq = GaugeMetricFamily(f"{PREFIX}_dead_letter_queue_messages",
                                    "Letters present in the dead-letter topic (high - low watermark)", labels=["topic"])
            dlq.add_metric([s.kafka_dlq_topic], view.dlq_letters)
            yield dlq


def build_registry(settings: Settings, directory: Path | None, supervisord: SupervisordPaths | None) -> Any:
    """Everything the endpoint serves, as one registry (also what `bin/pipeline top` reads in-process)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    if directory is not None and directory.is_dir():
        registry.register(LiveFiles(directory))
    registry.register(HostCollector(settings, supervisord))
    return registry


def supervisord_paths() -> SupervisordPaths | None:
    try:
        return SupervisordPaths.read(parse_host_settings(environment()).supervisord_conf)
    except Exception as e:  # noqa: BLE001 - programs' states are then unknown, the rest is served
        logger.warning("program states unknown: {}", e)
        return None


def main() -> int:
    settings = runtime.settings_and_logging("metrics")
    if settings is None:
        return 2
    directory = metrics_dir()
    if directory is None:
        logger.error("{} is not set: nothing to serve (supervisord sets it for its programs)", MULTIPROC_ENV)
        return 2
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.listdir(directory)
    except OSError as e:
        logger.error("cannot read the metrics directory {}: {}", directory, e.strerror or e)
        return 2
    from prometheus_client import start_http_server

    registry = build_registry(settings, directory, supervisord_paths())
    try:
        server, _thread = start_http_server(settings.metrics_port, settings.metrics_address, registry)
    except OSError as e:
        logger.error("cannot listen on {}:{} ({}); set METRICS_PORT / METRICS_ADDRESS", settings.metrics_address,
                     settings.metrics_port, e.strerror or e)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("{} received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("serving http://{}:{}/metrics from {}", settings.metrics_address, settings.metrics_port, directory)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
