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

Malformed input, an event it was not meant to get and a failure while handling one are each one
log line and an OK answer: FAIL would make supervisord send the same event again, forever. stdout is
the protocol channel: logs go to stderr only.
"""

from __future__ import annotations

import http.client
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
from urllib.parse import urlsplit

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
    """Input that does not follow the eventlistener protocol, or an event this listener does not handle."""


def parse_tokens(text: str) -> dict[str, str]:
    """`key:value key:value ...` (supervisord's header and payload format)."""
    out = {}
    for token in text.split():
        key, sep, value = token.partition(":")
        if not sep or not key:
            raise Malformed(f"not key:value: {token[:80]!r}")
        out[key] = value
    return out


def parse_header(line: bytes) -> tuple[str | None, int]:
    """(event name, payload length) from a header line; the name is None when missing, so that the
    caller can still read (and skip) the payload instead of taking it for the next header."""
    try:
        headers = parse_tokens(line.decode("utf-8", "replace"))
        length = int(headers["len"])
    except (KeyError, ValueError) as e:
        raise Malformed(f"bad header {line[:200]!r}: {e}") from None
    if length < 0:
        raise Malformed(f"bad header {line[:200]!r}: negative len")
    return headers.get("eventname"), length


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
        """The alert an event calls for, or None; raises Malformed for input it cannot read."""
        if event not in EVENTS:
            raise Malformed(f"unexpected event {event} (this listener handles {', '.join(EVENTS)}: "
                            f"check events= of [eventlistener:alerts])")
        try:
            fields = parse_tokens(payload.split("\n", 1)[0])  # PROCESS_LOG events would carry data after a newline
        except Malformed as e:
            raise Malformed(f"{event} payload {payload[:200]!r}: {e}") from None
        try:
            process, group, from_state = fields["processname"], fields["groupname"], fields["from_state"]
        except KeyError as e:
            raise Malformed(f"{event} payload without {e.args[0]}: {payload[:200]!r}") from None
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
        text = (f"{program} is FATAL: it kept exiting while starting and supervisord gave up; "
                f"see its log, then supervisorctl start {program}")
        return self._alert("ERROR", event, program, fields, text)

    def _alert(self, level: str, event: str, program: str, fields: dict[str, str], text: str) -> Alert:
        body = {"event": event, "program": program, "process": fields["processname"], "group": fields["groupname"],
                "from_state": fields["from_state"], "pid": int(fields["pid"]) if fields.get("pid", "").isdigit()
                else None, "expected": fields.get("expected") == "1" if "expected" in fields else None,
                "host": self.host, "time": self.clock().isoformat(), "text": text}
        return Alert(level, text, body)


def shown_url(url: str) -> str:
    """The receiver as logs may show it: webhook URLs often carry their secret in the path or query
    (Slack's do), so only scheme, host and port."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


class Webhook:
    """POSTs alerts as JSON from a background thread; never blocks `send`."""

    def __init__(self, url: str, timeout: float, retry_wait: float = RETRY_WAIT, queue_size: int = QUEUE_SIZE) -> None:
        self.url, self.timeout, self.retry_wait = url, timeout, retry_wait
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(queue_size)
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def send(self, body: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            logger.error("webhook queue full ({} alerts waiting): alert for {} not posted", self.queue.maxsize,
                         body.get("program"))

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            try:
                self._post(body)
            except Exception:  # noqa: BLE001 - the thread must outlive any one post, or every later alert is lost
                logger.exception("webhook {}: alert for {} not delivered", shown_url(self.url), body.get("program"))

    def _post(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        wait = self.retry_wait
        for attempt in range(1, RETRIES + 1):
            problem = self._try(data)
            if problem is None:
                self.delivered += 1
                return
            if attempt == RETRIES:
                logger.error("webhook {}: {}; gave up after {} tries (alert for {} not delivered)", shown_url(self.url),
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
        except http.client.HTTPException as e:  # not an OSError: e.g. an answer that is not HTTP
            return f"bad answer ({type(e).__name__}: {' '.join(str(e).split())[:200]})"  # one line
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
        """One event; whatever it holds, the caller answers OK (FAIL would make supervisord resend it forever)."""
        try:
            event, length = parse_header(line)
            payload = self.stdin.read(length).decode("utf-8", "replace")
            if event is None:
                raise Malformed(f"bad header {line[:200]!r}: no eventname")
            alert = self.rules.handle(event, payload)
            if alert is not None:
                logger.log(alert.level, "ALERT {}", alert.text)
                if self.webhook is not None:
                    self.webhook.send(alert.body)
        except Malformed as e:
            logger.warning("ignored event: {}", e)
        except Exception:  # noqa: BLE001 - e.g. a failing on_restart hook: one event lost, never the listener
            logger.exception("could not handle the event {!r}", line[:200])


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
    off = "off (ALERT_WEBHOOK_URL unset)" if settings is not None else "off (configuration error)"
    logger.info("listening for {}; webhook {}", ", ".join(EVENTS), shown_url(webhook.url) if webhook else off)
    Listener(Rules(on_restart=restart_counter(settings)), webhook, sys.stdin.buffer, sys.stdout.buffer).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
