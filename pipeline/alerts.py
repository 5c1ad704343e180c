"""Alerts from supervisord: `python -m pipeline.alerts`, supervisord's `[eventlistener:alerts]`.

supervisord tells an event listener what happens to its programs over a pipe: the listener writes
READY on stdout, reads one header line (`ver:3.0 ... eventname:PROCESS_STATE_EXITED len:84`) and `len`
bytes of payload (`processname:consumer_02 groupname:consumer from_state:RUNNING expected:0 pid:123`)
from stdin, and answers `RESULT 2\\nOK`. This listener:

- on PROCESS_STATE_EXITED with expected:0 (an exit nobody asked for) and on PROCESS_STATE_FATAL
  (supervisord gave up restarting) logs one clear `ALERT` line and, with ALERT_WEBHOOK_URL set, POSTs
  one JSON object per event there, from a background thread: a slow, failing or unreachable receiver
  never delays the answer to supervisord (a bounded queue; when it is full, alerts are dropped with a
  log line);
- on PROCESS_STATE_STARTING after EXITED or BACKOFF counts a restart of that program
  (`food_orders_process_restarts_total`).

Malformed input is one log line and an OK answer: FAIL would make supervisord send the same event
again, forever. stdout is the protocol channel: logs go to stderr only.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from loguru import logger

from pipeline.errors import SettingsError
from pipeline.logs import setup_logging
from pipeline.settings import Settings, load_settings

EVENTS = ("PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL", "PROCESS_STATE_STARTING")
RESTARTED_FROM = ("EXITED", "BACKOFF")
QUEUE_SIZE = 1000
RETRIES = 3  # tries per webhook post
RETRY_WAIT = 1.0  # seconds before the second try, doubling


class Malformed(ValueError):
    """Input that does not follow the eventlistener protocol."""


def parse_tokens(text: str) -> dict[str, str]:
    """`key:value key:value ...` (supervisord's header and payload format)."""
    out = {}
    for token in text.split():
        key, sep, value = token.partition(":")
        if not sep or not key:
            raise Malformed(f"not key:value: {token[:80]!r}")
        out[key] = value
    return out


def parse_header(line: bytes) -> tuple[str, int]:
    """(event name, payload length) from a header line."""
    try:
        headers = parse_tokens(line.decode("utf-8", "replace"))
        return headers["eventname"], int(headers["len"])
    except (KeyError, ValueError) as e:
        raise Malformed(f"bad header {line[:200]!r}: {e}") from None


@dataclass(frozen=True)
class Alert:
    level: str  # loguru level of the log line
    text: str
    body: dict[str, Any]


@dataclass
class Rules:
    """What an event means: an alert, a restart counted, or nothing. Pure apart from `on_restart`."""

    host: str = field(default_factory=socket.gethostname)
    on_restart: Callable[[str], None] = lambda _program: None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def handle(self, event: str, payload: str) -> Alert | None:
        fields = parse_tokens(payload.split("\n", 1)[0])  # PROCESS_LOG events would carry data after a newline
        try:
            process, group, from_state = fields["processname"], fields["groupname"], fields["from_state"]
        except KeyError as e:
            raise Malformed(f"{event} without {e.args[0]}: {payload[:200]!r}") from None
        program = process if process == group else f"{group}:{process}"
        if event == "PROCESS_STATE_STARTING":
            if from_state in RESTARTED_FROM:
                self.on_restart(program)
            return None
        if event == "PROCESS_STATE_EXITED":
            if fields.get("expected") != "0":
                return None
            pid = fields.get("pid", "?")
            text = f"{program} exited unexpectedly (pid {pid}, was {from_state}); supervisord restarts it"
            return self._alert("WARNING", event, program, fields, text)
        if event == "PROCESS_STATE_FATAL":
            text = (f"{program} is FATAL: it kept exiting while starting and supervisord gave up; "
                    f"see its log, then supervisorctl start {program}")
            return self._alert("ERROR", event, program, fields, text)
        return None

    def _alert(self, level: str, event: str, program: str, fields: dict[str, str], text: str) -> Alert:
        body = {"event": event, "program": program, "process": fields["processname"], "group": fields["groupname"],
                "from_state": fields["from_state"], "pid": int(fields["pid"]) if fields.get("pid", "").isdigit()
                else None, "expected": fields.get("expected") == "1" if "expected" in fields else None,
                "host": self.host, "time": self.clock().isoformat(), "text": text}
        return Alert(level, text, body)


class Webhook:
    """POSTs alerts as JSON from a background thread; never blocks `send`."""

    def __init__(self, url: str, timeout: float, retry_wait: float = RETRY_WAIT) -> None:
        self.url, self.timeout, self.retry_wait = url, timeout, retry_wait
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def send(self, body: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            logger.error("webhook queue full ({} alerts waiting): alert for {} not posted", QUEUE_SIZE,
                         body.get("program"))

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            self._post(body)

    def _post(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        wait = self.retry_wait
        for attempt in range(1, RETRIES + 1):
            problem = self._try(data)
            if problem is None:
                self.delivered += 1
                return
            if attempt == RETRIES:
                logger.error("webhook {}: {}; gave up after {} tries (alert for {} not delivered)", self.url,
                             problem, RETRIES, body.get("program"))
                return
            time.sleep(wait)
            wait *= 2

    def _try(self, data: bytes) -> str | None:
        request = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read()
        except urllib.error.HTTPError as e:
            return f"answered HTTP {e.code}"
        except TimeoutError:
            return f"no answer within {self.timeout:g}s"
        except urllib.error.URLError as e:
            reason = e.reason
            return f"no answer within {self.timeout:g}s" if isinstance(reason, TimeoutError) else f"{reason}"
        except OSError as e:
            return str(e)
        return None


class Listener:
    """The protocol loop: READY, header, payload, RESULT; one event at a time."""

    def __init__(self, rules: Rules, webhook: Webhook | None, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.rules, self.webhook, self.stdin, self.stdout = rules, webhook, stdin, stdout

    def run(self) -> None:
        while True:
            self.stdout.write(b"READY\n")
            self.stdout.flush()
            line = self.stdin.readline()
            if not line:
                return  # supervisord closed the pipe: it is stopping us
            self.one(line)
            self.stdout.write(b"RESULT 2\nOK")
            self.stdout.flush()

    def one(self, line: bytes) -> None:
        try:
            event, length = parse_header(line)
            payload = self.stdin.read(length).decode("utf-8", "replace")
            alert = self.rules.handle(event, payload)
        except Malformed as e:
            logger.warning("ignored malformed event: {}", e)
            return
        if alert is not None:
            logger.log(alert.level, "ALERT {}", alert.text)
            if self.webhook is not None:
                self.webhook.send(alert.body)


def restart_counter(settings: Settings | None) -> Callable[[str], None]:
    from pipeline.metrics import RestartCounter, usable_dir

    if settings is None or not usable_dir(settings, "alerts"):
        return lambda _program: None
    return RestartCounter()


def main() -> int:
    settings: Settings | None = None
    try:
        settings = load_settings()
        setup_logging("alerts", settings.log_level, settings.log_format)
    except SettingsError as e:
        setup_logging("alerts")
        logger.error("configuration error: {}; alerts are logged here, no webhook", e)
    webhook = None
    if settings is not None and settings.alert_webhook_url:
        webhook = Webhook(settings.alert_webhook_url, settings.alert_webhook_timeout_s)
    logger.info("listening for {}; webhook {}", ", ".join(EVENTS),
                webhook.url if webhook else "off (ALERT_WEBHOOK_URL unset)")
    Listener(Rules(on_restart=restart_counter(settings)), webhook, sys.stdin.buffer, sys.stdout.buffer).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
