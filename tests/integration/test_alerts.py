"""The alerts listener under a real supervisord, with the [eventlistener:alerts] section of the repo's
supervisord.conf, posting to a real HTTP receiver: what it logs, what it posts, and that a failing or
slow receiver never stops it."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from pipeline.alerts import Webhook, shown_url
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
    """An HTTP server on loopback that records POSTed JSON (`arrived` at once, `bodies` when answered) and
    answers with `status` after `delay` s, once `gate` is open."""

    def __init__(self) -> None:
        self.arrived: list[dict[str, object]] = []
        self.bodies: list[dict[str, object]] = []
        self.status, self.delay = 200, 0.0
        self.gate = threading.Event()
        self.gate.set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.arrived.append(body)
                receiver.gate.wait(30)
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
        self.gate.set()
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
        # The protocol chatter on stdout is nobody's log (bin/pipeline logs would show it as a process).
        assert not list((tmp_path / "var" / "log").glob("alerts-stdout*")), os.listdir(tmp_path / "var" / "log")
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


def not_http_server() -> tuple[socket.socket, str]:
    """A TCP server on loopback that answers anything with a line that is not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed by the test
            with conn:
                conn.recv(65536)
                conn.sendall(b"HELLO THERE\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}/hook"


def test_each_kind_of_webhook_failure_is_one_line_and_later_alerts_are_still_posted(
        log: list[str], receiver: Receiver) -> None:
    refused = Webhook(f"http://127.0.0.1:{free_port()}/hook", timeout=1, retry_wait=0.01)
    refused.send({"program": "one"})
    line = wait_for(lambda: [x for x in log if "alert for one" in x], 10, "the connection refused line")
    assert line == [f"ERROR webhook {shown_url(refused.url)}: [Errno 111] Connection refused; gave up after 3 tries "
                    "(alert for one not delivered)"], log

    server, url = not_http_server()
    with closing(server):
        garbled = Webhook(url, timeout=1, retry_wait=0.01)
        garbled.send({"program": "two"})
        line = wait_for(lambda: [x for x in log if "alert for two" in x], 10, "the bad answer line")
        assert line == [f"ERROR webhook {shown_url(url)}: bad answer (BadStatusLine: HELLO THERE); gave up after 3 "
                        "tries (alert for two not delivered)"], log
        # Whatever a post raises (here a body json cannot encode), the thread lives on: the same thread posts
        # the next alert once the receiver is an HTTP server again.
        garbled.url = receiver.url
        garbled.send({"program": "odd", "value": object()})
        garbled.send({"program": "three"})
        wait_for(lambda: receiver.bodies == [{"program": "three"}], 10, "the next alert posted")
    assert [x.split("\n")[0] for x in log if x.startswith("ERROR")][2:] == [
        f"ERROR webhook {shown_url(receiver.url)}: alert for odd not delivered"], log
    assert "/hook" not in "\n".join(log), "a webhook URL's path may be its secret: never logged"


def test_a_full_queue_drops_the_alert_with_one_line_and_sends_the_rest(log: list[str], receiver: Receiver) -> None:
    receiver.gate.clear()  # the receiver holds the first post: the queue behind it fills
    hook = Webhook(receiver.url, timeout=10, retry_wait=0.01, queue_size=1)
    hook.send({"program": "a"})
    wait_for(lambda: receiver.arrived, 10, "the first post to arrive")
    hook.send({"program": "b"})  # waits in the queue
    hook.send({"program": "c"})  # no room
    assert [x for x in log if "queue full" in x] == [
        "ERROR webhook queue full (1 alerts waiting): alert for c not posted"], log
    receiver.gate.set()
    wait_for(lambda: len(receiver.bodies) == 2, 10, "the queued alert posted")
    assert receiver.bodies == [{"program": "a"}, {"program": "b"}] and hook.delivered == 2


def test_the_listener_with_unreadable_settings_says_so_once_and_still_alerts() -> None:
    """`python -m pipeline.alerts` itself: stdout carries the protocol and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "PROMETHEUS_", "SUPERVISOR_"))}
    payload = b"processname:producer groupname:producer from_state:RUNNING expected:0 pid:99"
    header = b"ver:3.0 server:supervisor serial:1 pool:alerts poolserial:1 eventname:PROCESS_STATE_EXITED len:%d\n"
    out = subprocess.run([sys.executable, "-m", "pipeline.alerts"], input=header % len(payload) + payload,
                         capture_output=True, timeout=60, cwd=REPO,
                         env={**env, "PYTHONPATH": str(REPO), "PIPELINE_ENV_FILE": os.devnull,
                              "ALERT_WEBHOOK_URL": "ftp://example.invalid/hook"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"READY\nRESULT 2\nOKREADY\n"
    errors = [line for line in out.stderr.decode().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        "configuration error: ALERT_WEBHOOK_URL: expected an http:// or https:// URL, got "
        "'ftp://example.invalid/hook'; alerts are logged here, no webhook"), out.stderr
    assert "ALERT producer exited unexpectedly (pid 99, was RUNNING)" in out.stderr.decode()
