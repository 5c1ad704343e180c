"""bin/pipeline dlq show|replay against real Kafka and PostgreSQL: letters refused for a reason that is
then fixed are replayed and land exactly once; a letter is not replayed past its limit; a replay resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg2
import pytest
from confluent_kafka import Producer

from pipeline.kafka_admin import ensure_topics
from pipeline.settings import parse_settings
from tests.helpers import REPO, PipelineEnv, running, stop, wait_for

pytestmark = pytest.mark.integration


def cli(pipe: PipelineEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "dlq", *args], env=pipe.env(COLUMNS="160"), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def execute(pipe: PipelineEnv, sql: str) -> None:
    with psycopg2.connect(pipe.database_url) as conn, conn.cursor() as cur:
        cur.execute(sql)


def letters(pipe: PipelineEnv) -> list[dict[str, object]]:
    out = cli(pipe, "show", "--json", "--limit", "10000")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_refused_orders_are_replayed_once_the_cause_is_fixed_and_land_exactly_once(pipe: PipelineEnv) -> None:
    consumer = pipe.start("consumer", "consumer")
    with running(consumer):
        wait_for(lambda: pipe.db("SELECT to_regclass('orders') IS NOT NULL")[0][0], 60, "the schema migrated")
        execute(pipe, "ALTER TABLE orders ADD CONSTRAINT small_orders_only CHECK (total_amount < 40)")
        pipe.produce(200, PRODUCER_SEED="7")
        wait_for(lambda: pipe.row_count() + len(letters(pipe)) == 200 and pipe.lag() == 0, 60,
                 "every order stored or dead-lettered")
        refused = letters(pipe)
        assert refused and {x["error"] for x in refused} == {"db_rejected"}
        assert all(json.loads(str(x["value"]))["total_amount"] >= 40 for x in refused)
        assert all("23514" in str(x["detail"]) and x["replay_count"] == 0 for x in refused)

        dry = cli(pipe, "replay", "--dry-run")
        assert dry.returncode == 0 and f"would replay {len(refused)} letter(s) (db_rejected {len(refused)})" in \
            dry.stdout, dry.stdout + dry.stderr
        # Replayed before the fix: they fail again and come back, counted.
        first = cli(pipe, "replay", "--execute", "--max-replays", "1")
        assert f"replayed {len(refused)} letter(s)" in first.stdout, first.stdout + first.stderr
        wait_for(lambda: len(letters(pipe)) == 2 * len(refused) and pipe.lag() == 0, 60, "the replays refused again")
        again = letters(pipe)[len(refused):]
        assert {x["replay_count"] for x in again} == {1}
        limited = cli(pipe, "replay", "--dry-run", "--max-replays", "1")
        assert f"not replayed: {len(refused)} letter(s): replayed 1 time(s) already (--max-replays 1)" in \
            limited.stdout, limited.stdout

        execute(pipe, "ALTER TABLE orders DROP CONSTRAINT small_orders_only")  # the cause, fixed
        fixed = cli(pipe, "replay", "--execute")  # resumes after the letters replayed before
        assert fixed.returncode == 0 and f"replayed {len(refused)} letter(s)" in fixed.stdout, fixed.stdout
        wait_for(lambda: pipe.row_count() == 200 and pipe.lag() == 0, 60, "the replayed orders stored")
        resumed = cli(pipe, "replay", "--execute")
        assert "replayed 0 letter(s)" in resumed.stdout, resumed.stdout
        # Another filter has a position of its own: it replays letters again, which changes nothing.
        other = cli(pipe, "replay", "--execute", "--error", "db_rejected")
        assert f"replayed {2 * len(refused)} letter(s)" in other.stdout, other.stdout
        wait_for(lambda: pipe.lag() == 0, 60, "the repeated replays consumed")
        assert stop(consumer) == 0
    assert pipe.db("SELECT count(*), count(DISTINCT order_id) FROM orders")[0] == (200, 200)
    assert pipe.stats_consistent()
    refused_ids = {json.loads(str(x["value"]))["order_id"] for x in refused}
    stored = {row[0] for row in pipe.db("SELECT order_id FROM orders WHERE total_amount >= 40")}
    assert stored == refused_ids


def test_a_letter_whose_source_topic_is_gone_stops_the_replay_with_one_line(pipe: PipelineEnv) -> None:
    ensure_topics(parse_settings(pipe.env()))
    producer = Producer({"bootstrap.servers": pipe.bootstrap})
    producer.produce(pipe.dlq, b"{}", b"CUST-1", headers=[("error", b"schema"), ("source_topic", b"gone-topic"),
                                                          ("source_partition", b"0"), ("source_offset", b"5")])
    assert producer.flush(10) == 0
    out = cli(pipe, "replay", "--execute")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: letter 0@0: its source topic gone-topic does not exist; replay stopped before this batch (the "
        "position is kept: create the topic and replay again)")
    shown = cli(pipe, "show")
    assert shown.returncode == 0 and "gone-topic[0]@5" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "pipeline.cli", "dlq", "show"], cwd=REPO, capture_output=True,
                             text=True, env=pipe.env(KAFKA_DLQ_TOPIC="no-such-dlq"), timeout=60)
    assert missing.returncode == 1
    assert "dead-letter topic no-such-dlq does not exist" in missing.stderr
