"""`bin/pipeline logs`: the tails merged by time with the process name, and `-f` following every file."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from pipeline.logtail import follow, merged_tail


def write(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.writelines(f"{line}\n" for line in lines)


def test_tails_are_merged_by_timestamp_with_the_process_name(tmp_path: Path) -> None:
    write(tmp_path / "producer.log", "2026-11-26 10:00:00.100 a", "2026-11-26 10:00:00.300 c")
    write(tmp_path / "consumer_01.log", "2026-11-26 10:00:00.000 old", "2026-11-26 10:00:00.200 b")
    lines = merged_tail([tmp_path / "producer.log", tmp_path / "consumer_01.log"], 2)
    assert lines == [
        "consumer_01  | 2026-11-26 10:00:00.000 old",
        "producer     | 2026-11-26 10:00:00.100 a",
        "consumer_01  | 2026-11-26 10:00:00.200 b",
        "producer     | 2026-11-26 10:00:00.300 c",
    ]
    assert merged_tail([tmp_path / "producer.log"], 1) == ["producer     | 2026-11-26 10:00:00.300 c"]


def test_no_lines_asked_none_shown(tmp_path: Path) -> None:
    write(tmp_path / "producer.log", "2026-11-26 10:00:00.100 a")
    assert merged_tail([tmp_path / "producer.log"], 0) == []
    assert merged_tail([tmp_path / "missing.log"], 5) == []


def test_follow_prints_new_complete_lines_of_old_new_and_rotated_files(tmp_path: Path) -> None:
    producer, consumer = tmp_path / "producer.log", tmp_path / "consumer_02.log"
    write(producer, "before")  # already there: not repeated
    files = [producer]
    out = io.StringIO()
    steps = iter([
        lambda: write(producer, "one", "half"),
        lambda: (files.append(consumer), write(consumer, "new file")),  # a scaled-up process
        lambda: (os.replace(producer, tmp_path / "producer.log.1"), write(producer, "rotated")),
        lambda: consumer.write_text("cut\n"),  # truncated in place (copytruncate)
        lambda: None,
    ])

    def until() -> bool:
        step = next(steps, None)
        if step is None:
            return True
        step()
        return False

    follow(lambda: list(files), out, interval=0, until=until)
    assert out.getvalue().splitlines() == [
        "producer     | one",
        "producer     | half",
        "consumer_02  | new file",
        "producer     | rotated",
        "consumer_02  | cut",
    ]


def test_json_and_text_lines_merge_by_the_parsed_time_and_continuations_stay_put(tmp_path: Path) -> None:
    local = datetime(2026, 11, 26, 10, 0, 0, 200_000).astimezone()  # what a text line's local time means
    utc = local.astimezone(UTC)
    write(tmp_path / "consumer_01.log",
          json.dumps({"ts": (utc + timedelta(milliseconds=-150)).isoformat(), "msg": "j1"}),
          json.dumps({"ts": (utc + timedelta(milliseconds=100)).astimezone(timezone(timedelta(hours=5))).isoformat(),
                      "msg": "j3"}))
    write(tmp_path / "producer.log",
          local.strftime("%Y-%m-%d %H:%M:%S.%f")[:23] + " t2 failed",
          "Traceback (most recent call last):",
          "ValueError: x",
          (local + timedelta(milliseconds=300)).strftime("%Y-%m-%d %H:%M:%S.%f")[:23] + " t4")
    lines = merged_tail([tmp_path / "producer.log", tmp_path / "consumer_01.log"], 10)

    def what(line: str) -> str:
        text = line.split(" | ", 1)[1]
        return str(json.loads(text)["msg"]) if text.startswith("{") else text.split()[-1]

    assert [what(line) for line in lines] == ["j1", "failed", "last):", "x", "j3", "t4"]
    assert lines[2] == "producer     | Traceback (most recent call last):"


def test_json_files_at_different_utc_offsets_merge_by_the_instant(tmp_path: Path) -> None:
    start = datetime(2026, 11, 26, 23, 59, 59, 900_000, tzinfo=UTC)

    def line(ms: int, offset_h: float, msg: str) -> str:
        at = (start + timedelta(milliseconds=ms)).astimezone(timezone(timedelta(hours=offset_h)))
        return json.dumps({"ts": at.isoformat(), "msg": msg})

    # Written at +13:00 (already the 27th) and at -05:00 (still the 26th): the text of ts sorts wrongly.
    noise = "%3|1764201600.123|FAIL|rdkafka#producer-1|"  # librdkafka's own line: no ts, stays with p3
    write(tmp_path / "producer.log", line(0, 13, "p1"), line(150, 13, "p3"), noise)
    write(tmp_path / "consumer_02.log", line(100, -5, "c2"), line(200, -5, "c4"))
    lines = merged_tail([tmp_path / "producer.log", tmp_path / "consumer_02.log"], 10)
    shown = [text.split(" | ", 1) for text in lines]
    assert [(name.strip(), json.loads(text)["msg"] if text.startswith("{") else text) for name, text in shown] == [
        ("producer", "p1"), ("consumer_02", "c2"), ("producer", "p3"),
        ("producer", noise), ("consumer_02", "c4")]
