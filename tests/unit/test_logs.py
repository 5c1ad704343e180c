"""Logging: one JSON object per line with pid and process name; text lines carry them too."""

from __future__ import annotations

import json
import os

import pytest
from confluent_kafka import KafkaError
from loguru import logger

from pipeline.logs import KafkaErrorLog, setup_logging


def test_json_lines_carry_pid_process_and_order_id(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "consumer_07")
    setup_logging("consumer", "INFO", "json")
    logger.bind(order_id="ORD-1").warning("row refused by PostgreSQL: {}", "22021")
    logger.debug("not shown at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["msg"] == "row refused by PostgreSQL: 22021"
    assert (entry["level"], entry["pid"], entry["process"], entry["order_id"]) == (
        "WARNING", os.getpid(), "consumer_07", "ORD-1")


def test_text_lines_name_the_process_and_pid(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_PROCESS_NAME", raising=False)
    setup_logging("producer", "INFO", "text")
    logger.info("produced 10")
    assert f"[producer:{os.getpid()}] produced 10" in capsys.readouterr().err


def test_json_exceptions_carry_the_whole_traceback_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("consumer", "INFO", "json")

    def inner() -> None:
        raise ValueError("bad\nvalue")

    try:
        inner()
    except ValueError:
        logger.exception("batch failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    exc = json.loads(lines[0])["exception"]
    assert exc["type"] == "ValueError" and exc["message"] == "bad\nvalue"
    assert [f["function"] for f in exc["frames"]][-1] == "inner"
    assert exc["frames"][-1]["file"].endswith("test_logs.py") and exc["frames"][-1]["line"] > 0
    assert exc["text"].startswith("Traceback (most recent call last):")
    assert exc["text"].endswith("ValueError: bad\nvalue")


def test_text_exceptions_keep_loguru_multi_line_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("producer", "INFO", "text")
    try:
        raise KeyError("gone")
    except KeyError as e:
        logger.opt(exception=e).error("lookup failed")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("lookup failed") and lines[1] == "Traceback (most recent call last):", lines
    assert lines[-1] == "KeyError: 'gone'" and any("test_text_exceptions_keep" in line for line in lines), lines


REFUSED = "SASL authentication error: Authentication failed during authentication due to invalid credentials"


@pytest.mark.parametrize("code, said, fatal_start", [
    (KafkaError._AUTHENTICATION, REFUSED,
     "Kafka refused this client's credentials (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD"),
    (KafkaError.SASL_AUTHENTICATION_FAILED, REFUSED, "Kafka refused this client's credentials"),
    # A SASL exchange cut by a broker restart: not a verdict on the credentials, so retried.
    (KafkaError._AUTHENTICATION, "SASL handshake failed: Local: Broker transport failure", None),
    (KafkaError.GROUP_AUTHORIZATION_FAILED, "denied",
     "Kafka denies this user GROUP_AUTHORIZATION_FAILED: the broker's ACLs"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied", "Kafka denies this user TOPIC_AUTHORIZATION_FAILED"),
    (KafkaError._SSL, "certificate verify failed", None),  # the broker's certificate may be renewed: keep trying
    (KafkaError._TRANSPORT, "connection refused", None),
])
def test_kafka_errors_that_retrying_cannot_cure_are_fatal_and_said_once(
        code: int, said: str, fatal_start: str | None, log: list[str]) -> None:
    errors = KafkaErrorLog()
    for _ in range(3):
        errors(KafkaError(code, said))
    if fatal_start is None:
        assert errors.fatal is None
        assert len(log) == 1 and "keeps retrying" in log[0], log  # rate-limited: one line for three errors
        assert log[0].startswith("ERROR TLS with the broker failed") == (code == KafkaError._SSL), log
    else:
        assert errors.fatal is not None and errors.fatal.startswith(fatal_start), errors.fatal
        assert log == [f"ERROR {errors.fatal}"], log
