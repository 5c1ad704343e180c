"""`bin/pipeline logs` on the real log sinks: two processes writing lines in turn come out in the order
they were written, whatever file each went to, whatever format and UTC offset each wrote them in."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.logtail import merged_tail
from tests.helpers import REPO

pytestmark = pytest.mark.integration

WRITER = """
import sys, time
from pathlib import Path
from loguru import logger
from pipeline.logs import setup_logging
setup_logging(sys.argv[1], "INFO", sys.argv[2])
turn, mine, go = Path(sys.argv[3]), sys.argv[1], sys.argv[4:]
for n in range(5):
    while turn.read_text() != mine:   # the two writers take turns, so the true order is known
        time.sleep(0.005)
    logger.info("line {}", f"{mine}-{n}")
    # Text lines carry milliseconds: the other writer's line must fall in a later millisecond to be
    # ordered by its time at all (two lines of one millisecond are a tie, whatever their true order).
    written_ms = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == written_ms:
        pass
    turn.write_text(go[0])
"""


# POSIX TZ strings (no tzdata needed): the reader's local time is UTC-5; JSON writers are at +05:30 and +13.
READER_TZ = "RDR+05"
WRITER_TZ = {"json": ("JSA-05:30", "JSB-13"), "text": (READER_TZ, READER_TZ)}


@pytest.fixture
def reader_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process in READER_TZ: a text line's local time means what it meant to its writer."""
    monkeypatch.setenv("TZ", READER_TZ)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("formats", [("json", "json"), ("json", "text")])
@pytest.mark.usefixtures("reader_tz")
def test_lines_of_two_processes_merge_in_the_order_they_were_written(tmp_path: Path,
                                                                     formats: tuple[str, str]) -> None:
    turn = tmp_path / "turn"
    turn.write_text("producer")
    procs = []
    writers = (("producer", "consumer_01", formats[0], WRITER_TZ[formats[0]][0]),
               ("consumer_01", "producer", formats[1], WRITER_TZ[formats[1]][1]))
    for name, other, fmt, tz in writers:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - owned by the child
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, name, fmt, str(turn), other], cwd=REPO,
                                      stderr=log, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TZ": tz}))
    for proc in procs:
        assert proc.wait(60) == 0
    lines = merged_tail([tmp_path / "consumer_01.log", tmp_path / "producer.log"], 20)
    if formats == ("json", "json"):
        assert all(any(offset in line for line in lines) for offset in ('+05:30"', '+13:00"')), lines
    order = [line.split("line ", 1)[1].split('"')[0] for line in lines]
    assert order == [f"{name}-{n}" for n in range(5) for name in ("producer", "consumer_01")]
