"""Logging, configured once per process: loguru to stderr (supervisord captures it).

Every line carries the pid and the process name (supervisord's `consumer_03`, or the program name).
`LOG_FORMAT=json` writes one JSON object per line; fields bound with `logger.bind(...)` or passed as
keyword arguments (e.g. `order_id`) become keys of that object.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

TEXT_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} [{extra[process_name]}:{process.id}] {message}"
)


def process_name(default: str) -> str:
    return os.environ.get("SUPERVISOR_PROCESS_NAME") or default


def setup_logging(name: str, level: str = "INFO", fmt: str = "text") -> None:
    """Route all logging of this process through one stderr sink in the chosen format."""
    logger.remove()
    logger.configure(extra={"process_name": process_name(name)})
    if fmt == "json":
        logger.add(_json_sink, level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=TEXT_FORMAT, backtrace=False, diagnose=False)


def _json_sink(message: Message) -> None:
    record = message.record
    entry: dict[str, Any] = {
        "ts": record["time"].isoformat(),
        "level": record["level"].name,
        "msg": record["message"],
        "pid": record["process"].id,
        "process": record["extra"].get("process_name", record["process"].name),
    }
    entry.update((k, v) for k, v in record["extra"].items() if k != "process_name")
    if record["exception"] is not None:
        entry["exception"] = repr(record["exception"].value)
    sys.stderr.write(json.dumps(entry, default=str) + "\n")
    sys.stderr.flush()


class _ToLoguru(logging.Handler):
    """Forwards stdlib logging records (librdkafka's, via confluent-kafka) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"
        logger.log(level, "librdkafka: {}", record.getMessage())


def kafka_logger() -> logging.Logger:
    """A stdlib logger for confluent-kafka clients (`logger=` config), so librdkafka lines share our format."""
    log = logging.getLogger("pipeline.librdkafka")
    if not log.handlers:
        log.addHandler(_ToLoguru())
        log.propagate = False
        log.setLevel(logging.INFO)
    return log
