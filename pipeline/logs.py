"""Logging, configured once per process: loguru to stderr (supervisord captures it).

Every line carries the pid and the process name (supervisord's `consumer_03`, or the program name).
`LOG_FORMAT=json` writes one JSON object per line; fields bound with `logger.bind(...)` or passed as
keyword arguments (e.g. `order_id`) become keys of that object, and an exception becomes an
`exception` object (type, message, frames, the formatted traceback as text), still on one line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from types import TracebackType
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError
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
        entry["exception"] = exception_fields(record["exception"].type, record["exception"].value,
                                              record["exception"].traceback)
    sys.stderr.write(json.dumps(entry, default=str) + "\n")  # one line: json.dumps escapes the newlines
    sys.stderr.flush()


def exception_fields(kind: type[BaseException] | None, value: BaseException | None,
                     tb: TracebackType | None) -> dict[str, Any]:
    """An exception as JSON: its type, message, frames (innermost last) and the formatted traceback."""
    return {
        "type": kind.__name__ if kind is not None else None,
        "message": str(value),
        "frames": [{"file": f.filename, "line": f.lineno, "function": f.name} for f in traceback.extract_tb(tb)],
        "text": "".join(traceback.format_exception(kind, value, tb)).rstrip("\n"),
    }


class _ToLoguru(logging.Handler):
    """Forwards stdlib logging records (librdkafka's, via confluent-kafka) to loguru.

    librdkafka logs every reconnect attempt while a broker is down (several per second); the same
    kind of line (its facility, e.g. FAIL) is passed on at most once per QUIET_S, with a count."""

    QUIET_S = 30.0

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, tuple[float, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        facility = text.split(" ", 1)[0]
        now = time.monotonic()
        last, suppressed = self._last.get(facility, (0.0, 0))
        if now - last < self.QUIET_S:
            self._last[facility] = (last, suppressed + 1)
            return
        self._last[facility] = (now, 0)
        level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"
        more = f" (+{suppressed} similar in the last {self.QUIET_S:.0f}s)" if suppressed else ""
        logger.log(level, "librdkafka: {}{}", text, more)


def kafka_logger() -> logging.Logger:
    """A stdlib logger for confluent-kafka clients (`logger=` config), so librdkafka lines share our format."""
    log = logging.getLogger("pipeline.librdkafka")
    if not log.handlers:
        log.addHandler(_ToLoguru())
        log.propagate = False
        log.setLevel(logging.INFO)
    return log


# Kafka error codes (confluent_kafka.KafkaError) that retrying cannot cure, and the TLS one that may.
_KAFKA_REFUSED = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_KAFKA_DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                 KafkaError.CLUSTER_AUTHORIZATION_FAILED}
_KAFKA_TLS = KafkaError._SSL


class KafkaErrorLog:
    """`error_cb` for confluent-kafka clients: a broker outage is one warning every 30 s, not a flood;
    a fatal client error, refused credentials or a denial by the broker's ACLs is logged once and
    remembered for the owner's loop to act on (exit: retrying the same credentials cannot help)."""

    def __init__(self) -> None:
        self.fatal: str | None = None
        self._said: str | None = None
        self._last_warning = 0.0

    def __call__(self, err: Any) -> None:  # confluent_kafka.KafkaError
        code = err.code()
        if err.fatal():
            self.fatal = f"Kafka client fatal error: {err.str()}"
        elif code in _KAFKA_REFUSED and "Authentication failed" in err.str():
            # Only the broker's verdict: a SASL exchange cut by a broker restart is _AUTHENTICATION too.
            # Retrying with the same credentials cannot help: exit, and let the operator fix the env file.
            self.fatal = (f"Kafka refused this client's credentials (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD "
                          f"in the env file): {err.str()}")
        elif code in _KAFKA_DENIED:
            self.fatal = (f"Kafka denies this user {err.name()}: the broker's ACLs must allow its topics and "
                          f"group (deploy/install.sh --listen grants them on the Kafka host): {err.str()}")
        elif time.monotonic() - self._last_warning >= 30.0:
            self._last_warning = time.monotonic()
            if code == _KAFKA_TLS:  # the broker's certificate may be renewed on its host: keep trying
                logger.error("TLS with the broker failed ({}): check KAFKA_SSL_CA_LOCATION and the broker's "
                             "certificate (deploy/install.sh on its host renews one that expires within 30 "
                             "days); the client keeps retrying", err.str())
            else:
                logger.warning("Kafka broker unavailable or erroring ({}); the client keeps retrying", err.str())
        if self.fatal and self.fatal != self._said:
            self._said = self.fatal
            logger.error(self.fatal)
