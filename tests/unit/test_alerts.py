"""The alerts listener's protocol loop and rules, fed bytes as supervisord writes them."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from pipeline.alerts import Listener, Malformed, Rules, parse_header, shown_url


def event(name: str, payload: str) -> bytes:
    body = payload.encode()
    return f"ver:3.0 server:supervisor serial:7 pool:alerts poolserial:7 eventname:{name} len:{len(body)}\n".encode() \
        + body


class Posted:
    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []

    def send(self, body: dict[str, object]) -> None:
        self.bodies.append(body)


def rules(restarts: list[str]) -> Rules:
    return Rules(host="h1", on_restart=restarts.append, clock=lambda: datetime(2026, 11, 26, tzinfo=UTC))


def test_exits_nobody_asked_for_and_fatal_programs_alert_and_restarts_are_counted(log: list[str]) -> None:
    restarts: list[str] = []
    stdin = io.BytesIO(
        event("PROCESS_STATE_EXITED", "processname:consumer_02 groupname:consumer from_state:RUNNING expected:0 "
                                      "pid:4242")
        + event("PROCESS_STATE_STARTING", "processname:consumer_02 groupname:consumer from_state:BACKOFF tries:1")
        + event("PROCESS_STATE_EXITED", "processname:producer groupname:producer from_state:RUNNING expected:1 pid:7")
        + event("PROCESS_STATE_STARTING", "processname:producer groupname:producer from_state:STOPPED tries:0")
        + event("PROCESS_STATE_FATAL", "processname:producer groupname:producer from_state:BACKOFF"))
    stdout = io.BytesIO()
    posted = Posted()
    Listener(rules(restarts), posted, stdin, stdout).run()  # type: ignore[arg-type]
    assert stdout.getvalue() == b"READY\nRESULT 2\nOK" * 5 + b"READY\n"
    assert restarts == ["consumer:consumer_02"]
    alerts = [line for line in log if "ALERT" in line]
    assert alerts == [
        "WARNING ALERT consumer:consumer_02 exited unexpectedly (pid 4242, was RUNNING); supervisord restarts it",
        "ERROR ALERT producer is FATAL: it kept exiting while starting and supervisord gave up; see its log, then "
        "supervisorctl start producer"]
    assert posted.bodies[0] == {
        "event": "PROCESS_STATE_EXITED", "program": "consumer:consumer_02", "process": "consumer_02",
        "group": "consumer", "from_state": "RUNNING", "pid": 4242, "expected": False, "host": "h1",
        "time": "2026-11-26T00:00:00+00:00", "text": alerts[0].removeprefix("WARNING ALERT ")}
    assert posted.bodies[1]["event"] == "PROCESS_STATE_FATAL" and posted.bodies[1]["pid"] is None


def test_malformed_or_unexpected_input_is_one_line_and_an_ok_answer(log: list[str]) -> None:
    stdin = io.BytesIO(b"garbage without colons\n"
                       + event("PROCESS_STATE_EXITED", "processname:x groupname:x")  # no from_state
                       + b"ver:3.0 eventname:PROCESS_STATE_FATAL len:nope\n"
                       + b"ver:3.0 len:10\nprocessnam"  # no event name: its payload is skipped all the same
                       + event("PROCESS_STATE_FATAL", "processname:x from_state BACKOFF")
                       + event("TICK_5", "when:1764000000")  # not subscribed to
                       + event("PROCESS_STATE_FATAL", "processname:x groupname:x from_state:BACKOFF"))
    stdout = io.BytesIO()
    Listener(rules([]), None, stdin, stdout).run()  # type: ignore[arg-type]
    assert stdout.getvalue() == b"READY\nRESULT 2\nOK" * 7 + b"READY\n"
    ignored = [line for line in log if "ignored event" in line]
    assert [line.split(": ", 1)[1].split(" ", 2)[:2] for line in ignored] == [
        ["bad", "header"], ["PROCESS_STATE_EXITED", "payload"], ["bad", "header"], ["bad", "header"],
        ["PROCESS_STATE_FATAL", "payload"], ["unexpected", "event"]]
    assert "TICK_5 (this listener handles PROCESS_STATE_EXITED" in ignored[-1]
    assert [line for line in log if "ALERT" in line] == [
        "ERROR ALERT x is FATAL: it kept exiting while starting and supervisord gave up; see its log, then "
        "supervisorctl start x"], "the listener goes on after bad input"


def test_a_failing_restart_hook_costs_one_event_not_the_listener(log: list[str]) -> None:
    def broken(_program: str) -> None:
        raise RuntimeError("registry gone")

    stdin = io.BytesIO(event("PROCESS_STATE_STARTING", "processname:p groupname:p from_state:BACKOFF tries:1")
                       + event("PROCESS_STATE_FATAL", "processname:p groupname:p from_state:BACKOFF"))
    stdout = io.BytesIO()
    Listener(Rules(on_restart=broken), None, stdin, stdout).run()  # type: ignore[arg-type]
    assert stdout.getvalue() == b"READY\nRESULT 2\nOK" * 2 + b"READY\n"
    assert any(line.startswith("ERROR could not handle the event") for line in log), log
    assert any(line.startswith("ERROR ALERT p is FATAL") for line in log), log


def test_header_parsing() -> None:
    assert parse_header(b"ver:3.0 eventname:PROCESS_STATE_FATAL len:12\n") == ("PROCESS_STATE_FATAL", 12)
    assert parse_header(b"ver:3.0 len:12\n") == (None, 12)
    for bad in (b"ver:3.0 eventname:PROCESS_STATE_FATAL\n", b"eventname:X len:-1\n", b"\n"):
        with pytest.raises(Malformed):
            parse_header(bad)


def test_logs_name_the_receiver_but_not_the_secret_in_its_url() -> None:
    assert shown_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET") == "https://hooks.slack.com/…"
    assert shown_url("http://user:pw@10.0.0.5:8080/alert?token=abc") == "http://10.0.0.5:8080/…"
    assert shown_url("http://[::1]:9000") == "http://[::1]:9000"
