"""Seeing the pipeline work: the metrics endpoint, `status --check` and `top`, against a real supervisord
host, with every figure checked against the topic and the database."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline.top import Samples, parse, pick, total
from tests.helpers import REPO, PipelineEnv, wait_for
from tests.infra import Infra
from tests.supervised import Supervised

pytestmark = pytest.mark.integration


def scrape(host: Supervised) -> Samples:
    url = f"http://127.0.0.1:{host.env['METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return parse(answer.read().decode())


def check(host: Supervised, state: Path, **env: str) -> tuple[int, str, float]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--check", "--state-file", str(state)],
                         env={**host.env, **env}, cwd=REPO, capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout.strip(), time.monotonic() - started


def by_partition(samples: Samples, name: str) -> dict[int, float]:
    return {int(dict(lbl)["partition"]): v for lbl, v in pick(samples, name).items()}


def test_metrics_match_the_topic_and_the_database(tmp_path: Path, pipe: PipelineEnv, infra: Infra) -> None:
    host = Supervised(tmp_path / "host", pipe, consumers=2)
    state = tmp_path / "check.json"
    host.start()
    try:
        wait_for(lambda: pipe.row_count() > 300, 60, "orders flowing")
        wait_for(lambda: {"metrics", "consumer_01", "consumer_02"} <= set(host.pids()), 30, "programs RUNNING")
        # Three invalid messages: counted by error code, and present in the DLQ.
        bad = Producer({"bootstrap.servers": pipe.bootstrap})
        for _ in range(3):
            bad.produce(pipe.topic, b"{not json", b"CUST-00001")
        bad.flush(10)
        host.ctl("stop", "producer", check=True)
        wait_for(lambda: pipe.lag() == 0, 60, "the group caught up")

        s = wait_for(lambda: (m := scrape(host)) and total(m, "food_orders_dead_letters_total") == 3
                     and total(m, "food_orders_assigned_partitions") == 3 and m, 30,
                     "the dead letters counted, every partition assigned")
        rows, end = pipe.row_count(), pipe.end_offsets()
        assert total(s, "food_orders_orders_inserted_total") == rows
        assert pick(s, "food_orders_dead_letters_total", error="invalid_json")
        assert total(s, "food_orders_dead_letter_queue_messages") == 3
        assert by_partition(s, "food_orders_partition_end_offset") == end
        assert by_partition(s, "food_orders_group_committed_offset") == pipe.committed()
        assert set(by_partition(s, "food_orders_consumer_lag_messages").values()) == {0}
        assert set(by_partition(s, "food_orders_consumer_lag_seconds").values()) == {0}
        generated = total(s, "food_orders_producer_orders_generated_total")
        assert generated == total(s, "food_orders_producer_orders_delivered_total") == sum(end.values()) - 3
        assert total(s, "food_orders_consumer_messages_total") >= sum(end.values())  # redeliveries count again
        assert total(s, "food_orders_end_to_end_latency_seconds_count") >= rows
        assert total(s, "food_orders_assigned_partitions") == 3
        assert {dict(lbl)["program"]: v for lbl, v in pick(s, "food_orders_program_up").items()} == {
            "consumer:consumer_01": 1, "consumer:consumer_02": 1, "producer": 0, "metrics": 1,
            **({"alerts": 1} if "alerts" in host.info() else {})}
        code, line, seconds = check(host, state)
        assert code == 1 and "not running: producer STOPPED" in line, line  # stopped by hand: a warning
        assert "lag=0;" in line and "dlq=3;" in line

        # Lag in seconds: the age of the oldest message nobody has committed.
        host.ctl("stop", "consumer:*", check=True)
        pipe.produce(50)
        time.sleep(2)  # the age to measure
        s = scrape(host)
        ages = by_partition(s, "food_orders_consumer_lag_seconds")
        assert sum(by_partition(s, "food_orders_consumer_lag_messages").values()) == 50
        assert max(ages.values()) >= 2.0, ages
        # The stopped consumers' live gauges are gone; their counters stay in the sums.
        assert not pick(s, "food_orders_assigned_partitions")
        assert not pick(s, "food_orders_consumer_degraded")
        assert total(s, "food_orders_orders_inserted_total") == rows
        code, line, _ = check(host, state)
        assert code == 2 and "no consumer running" in line, line

        # A dead letter since the previous check is a warning; PostgreSQL down: consumers degraded.
        host.ctl("start", "consumer:*", check=True)
        wait_for(lambda: pipe.lag() == 0, 60, "the group caught up again")
        bad.produce(pipe.topic, b"{not json either", b"CUST-00002")
        bad.flush(10)
        wait_for(lambda: total(scrape(host), "food_orders_dead_letter_queue_messages") == 4, 30, "the 4th letter")
        code, line, _ = check(host, state)
        assert code == 1 and "1 new dead letter(s) since the last check" in line, line
        with infra.server("postgres") as pg:
            assert pg.stop(timeout=30)
            pipe.produce(20)
            s = wait_for(lambda: (m := scrape(host)) and sum(
                v for lbl, v in pick(m, "food_orders_consumer_degraded", dependency="postgresql").items()) >= 1
                and m, 60, "a consumer degraded for PostgreSQL")
            assert pick(s, "food_orders_server_up", server="postgresql") == {(("server", "postgresql"),): 0.0}
            assert total(s, "food_orders_dependency_retries_total", dependency="postgresql") >= 1
            code, line, seconds = check(host, state)
            assert code == 2 and "postgresql not answering" in line and "degraded: consumer_0" in line, line
            assert seconds < 5
        wait_for(lambda: pipe.lag() == 0, 90, "recovery after PostgreSQL is back")
        s = wait_for(lambda: (m := scrape(host)) and not any(pick(m, "food_orders_consumer_degraded").values()) and m,
                     30, "degraded cleared")
        assert total(s, "food_orders_orders_inserted_total") == pipe.row_count() == rows + 70
        code, line, _ = check(host, state)
        assert code == 1 and line.startswith("FOOD-ORDERS WARNING - not running: producer STOPPED"), line

        # A consumer killed: supervisord restarts it, the alerts listener counts the restart.
        killed = host.pids()["consumer_01"]
        os.kill(killed, 9)
        host.ctl("start", "producer", check=True)
        s = wait_for(lambda: (m := scrape(host)) and pick(m, "food_orders_process_restarts_total")
                     and pick(m, "food_orders_producer_in_flight_orders") and m, 30, "the restart counted")
        assert pick(s, "food_orders_process_restarts_total") == {(("program", "consumer:consumer_01"),): 1.0}
        # By now every metric has a series: the dashboard uses only metrics the endpoint exports.
        missing = dashboard_metrics() - {name for name, _ in s}
        assert not missing, f"deploy/grafana/food-orders.json names metrics the endpoint does not export: {missing}"
    finally:
        host.stop()


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "food-orders.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 20
    return {name for expr in exprs for name in re.findall(r"\bfood_orders_[a-z0-9_]+", expr)}


def test_check_with_everything_down_answers_within_5_seconds(tmp_path: Path, pipe: PipelineEnv) -> None:
    """Nothing listens: supervisord never started, Kafka and PostgreSQL on ports nobody has."""
    from pipeline.services.process import free_port

    host = Supervised(tmp_path / "host", pipe)
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "DATABASE_URL": f"postgresql://orders:x@127.0.0.1:{free_port()}/orders"}
    code, line, seconds = check(host, tmp_path / "state.json", **env)
    assert code == 2, line
    assert line.startswith("FOOD-ORDERS CRITICAL - supervisord not answering; kafka not answering; "
                           "postgresql not answering |"), line
    assert "lag=U;" in line
    assert seconds < 5
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--json"], env={**host.env, **env},
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    snap = json.loads(out.stdout)
    assert snap["servers"] == {"supervisord": False, "kafka": False, "postgresql": False}
    assert snap["dlq"]["messages"] is None and snap["lag"] is None and snap["database"] is None
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--check"],
                         env={**host.env, **env, "METRICS_PORT": "http"}, cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 3 and out.stdout.startswith("FOOD-ORDERS UNKNOWN - METRICS_PORT"), out.stdout


def test_top_shows_the_host_and_quits_on_q(tmp_path: Path, pipe: PipelineEnv) -> None:
    host = Supervised(tmp_path / "host", pipe)
    host.start()
    try:
        wait_for(lambda: pipe.row_count() > 50, 60, "orders flowing")
        main, child = pty.openpty()
        os.set_blocking(main, False)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "top"], env={**host.env, "COLUMNS": "80",
                                "LINES": "30", "TERM": "xterm"}, cwd=REPO, stdin=child, stdout=child, stderr=child)
        screen = b""

        def shows(text: bytes) -> bool:
            nonlocal screen
            if select.select([main], [], [], 0.2)[0]:
                screen += os.read(main, 65536)
            return text in screen

        try:
            wait_for(lambda: shows(b"consumer_01") and shows(b"RUNNING") and shows(b"p99"), 30, "top's first frames")
            os.write(main, b"q")
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(main)
            os.close(child)
        # Cursor movements and carriage returns start a new line on the screen.
        text = re.sub(r"\x1b\[[0-9;]*m", "", screen.decode(errors="replace"))
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "\n", text)
        assert "end-to-end latency p50" in text
        assert max(len(line) for line in text.splitlines()) <= 80, max(text.splitlines(), key=len)
    finally:
        host.stop()


def test_bad_metrics_setup_is_one_line_and_never_stops_the_pipeline(tmp_path: Path, pipe: PipelineEnv) -> None:
    import socket

    from tests.helpers import running, stop

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    consumer = pipe.start("consumer", "consumer", PROMETHEUS_MULTIPROC_DIR=str(blocker / "metrics"))
    with running(consumer):
        pipe.produce(20)
        wait_for(lambda: pipe.row_count() == 20, 60, "orders stored with metrics off")
        assert stop(consumer) == 0
    assert f"metrics off for consumer: cannot write to {blocker / 'metrics'}" in pipe.log("consumer")

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "pipeline.exporter"], cwd=REPO, capture_output=True, text=True,
                         env=pipe.env(METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m")),
                         timeout=60)
    taken.close()
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); set METRICS_PORT" in out.stderr, out.stderr
