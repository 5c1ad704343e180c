"""The DLQ tools' pure parts: a letter's headers parsed, the headers a replay sends, when not to replay."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.dlq_tools import parse_letter, parse_since, replay_headers, why_not
from pipeline.errors import FatalError

OURS = [("error", b"db_rejected"), ("error_detail", b"23514: check"), ("source_topic", b"food-orders"),
        ("source_partition", b"2"), ("source_offset", b"41"), ("consumer_client_id", b"food-orders-h-1")]


def test_a_letter_separates_the_original_headers_from_ours() -> None:
    letter = parse_letter(0, 7, 1_764_000_000_000, b"CUST-1", b"{}", [("trace", b"abc"), *OURS])
    assert (letter.error, letter.detail, letter.source_topic, letter.source_partition, letter.source_offset) == (
        "db_rejected", "23514: check", "food-orders", 2, 41)
    assert letter.original_headers == [("trace", b"abc")] and letter.replay_count == 0
    assert letter.as_json()["source"] == "food-orders[2]@41"
    assert letter.as_json()["time"] == "2025-11-24T16:00:00+00:00"


def test_a_replay_keeps_the_original_headers_and_counts_itself() -> None:
    letter = parse_letter(0, 7, 0, b"k", b"v", [("trace", b"abc"), ("replay_count", b"1"), *OURS])
    assert letter.replay_count == 1
    assert replay_headers(letter) == [("trace", b"abc"), ("replay_count", b"2")]
    assert why_not(letter, max_replays=3) is None
    assert why_not(letter, max_replays=1) == "replayed 1 time(s) already (--max-replays 1)"


def test_letters_that_cannot_be_replayed_say_why() -> None:
    truncated = parse_letter(0, 1, 0, b"k", None, [*OURS, ("value_truncated", b"1")])
    assert why_not(truncated, 3) == "its value was dropped (too big for the broker)"
    nowhere = parse_letter(0, 2, 0, b"k", b"v", [("error", b"schema")])
    assert why_not(nowhere, 3) == "it names no source topic"


def test_since_takes_iso_times_and_relative_ones() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    assert parse_since("2d", now) == datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("2026-11-26T08:00:00+00:00", now) == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    with pytest.raises(FatalError, match="--since: expected"):
        parse_since("yesterday", now)
