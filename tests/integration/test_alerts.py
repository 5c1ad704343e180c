"""The alerts listener under a real supervisord, with the [eventlistener:alerts] section of the repo's
supervisord.conf, posting to a real HTTP receiver: what it logs, what it posts, and that a failing or
slow receiver never stops it."""

from __future__ import annotations

import http.server
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.services.process import free_port
from tests.helpers import REPO, wait_for
from tests.supervised import Supervisord

pytestmark = pytest.mark.integration

PROGRAMS = f"""
[program:crasher]
command = {sys.executable} -c "import time; time.sleep(1.2); raise SystemExit(3)"
startsecs = 1
autorestart = true
startretries = 100

[program:doomed]
command = {sys.executable} -c "raise SystemExit(1)"
startsecs = 5
startretries = 0
autorestart = true
"""


class Receiver:
    """An HTTP server on loopback that records POSTed JSON and answers with `status` after `delay` s."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.status, self.delay = 200, 0.0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(receiver.delay)
                receiver.bodies.append(body)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def host_with_alerts(root: Path, **env: str) -> Supervisord:
    """A supervisord with the repo's own [eventlistener:alerts] section and two misbehaving programs."""
    (root / "var" / "log").mkdir(parents=True)
    (root / "var" / "run").mkdir(parents=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    repo_conf = (REPO / "supervisord.conf").read_text()
    keep = [s for s in re.split(r"\n(?=\[)", repo_conf) if not s.startswith(("[program:", "[include]"))]
    conf = root / "supervisord.conf"
    conf.write_text("\n".join(keep) + "\n" + PROGRAMS)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "METRICS_", "PIPELINE_"))}
    return Supervisord(conf, {**base, "PIPELINE_ENV_FILE": os.devnull, "PYTHONPATH": str(REPO),
                              "PIPELINE_SUPERVISORD_CONF": str(conf), "METRICS_PORT": str(free_port()), **env})


def alerts_log(sup: Supervisord) -> str:
    path = sup.root / "var" / "log" / "alerts.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_unexpected_exits_and_fatal_programs_are_logged_and_posted(tmp_path: Path, receiver: Receiver) -> None:
    sup = host_with_alerts(tmp_path, ALERT_WEBHOOK_URL=receiver.url)
    sup.start()
    try:
        wait_for(lambda: "ALERT doomed is FATAL" in alerts_log(sup), 30, "the FATAL alert")
        wait_for(lambda: alerts_log(sup).count("ALERT crasher exited unexpectedly") >= 2, 30, "two crash alerts")
        wait_for(lambda: len(receiver.bodies) >= 3, 30, "the webhook posts")
        assert sup.info()["doomed"]["statename"] == "FATAL"
        line = next(x for x in alerts_log(sup).splitlines() if "ALERT crasher" in x)
        assert re.search(r"WARNING +\[alerts:\d+\] ALERT crasher exited unexpectedly \(pid \d+, was RUNNING\); "
                         r"supervisord restarts it$", line), line
        fatal = next(b for b in receiver.bodies if b["event"] == "PROCESS_STATE_FATAL")
        assert fatal["program"] == "doomed" and fatal["from_state"] == "BACKOFF"
        crash = next(b for b in receiver.bodies if b["event"] == "PROCESS_STATE_EXITED")
        assert crash["program"] == "crasher" and crash["expected"] is False and isinstance(crash["pid"], int)
        assert crash["host"] == os.uname().nodename
        # Restarts are counted for the metrics endpoint (crasher: STARTING again after each EXITED).
        from prometheus_client.multiprocess import MultiProcessCollector

        restarts = {s.labels["program"]: s.value for m in MultiProcessCollector(None, str(tmp_path / "var/run/metrics"))
                    .collect() for s in m.samples if s.name == "food_orders_process_restarts_total"}
        assert restarts.get("crasher", 0) >= 2 and "doomed" not in restarts, restarts
    finally:
        sup.stop()


def test_a_failing_or_slow_receiver_never_stops_the_alerts(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status, receiver.delay = 500, 0.0
    sup = host_with_alerts(tmp_path, ALERT_WEBHOOK_URL=receiver.url, ALERT_WEBHOOK_TIMEOUT_S="0.5")
    sup.start()
    try:
        wait_for(lambda: "answered HTTP 500; gave up after 3 tries" in alerts_log(sup), 30, "the HTTP 500 line")
        receiver.status, receiver.delay = 200, 2.0
        wait_for(lambda: "no answer within 0.5s; gave up after 3 tries" in alerts_log(sup), 60, "the timeout line")
        crashes = alerts_log(sup).count("ALERT crasher exited unexpectedly")
        wait_for(lambda: alerts_log(sup).count("ALERT crasher exited unexpectedly") > crashes + 1, 30,
                 "alerts logged while the receiver is slow")
        assert sup.info()["alerts"]["statename"] == "RUNNING"
    finally:
        sup.stop()
