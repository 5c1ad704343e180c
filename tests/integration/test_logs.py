"""`bin/pipeline logs` on the real log sinks: two processes writing JSON lines in turn come out in the
order they were written, whatever file each went to."""

from __future__ import annotations

import subprocess
import sys
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
    turn.write_text(go[0])
"""


@pytest.mark.parametrize("formats", [("json", "json"), ("json", "text")])
def test_lines_of_two_processes_merge_in_the_order_they_were_written(tmp_path: Path,
                                                                     formats: tuple[str, str]) -> None:
    turn = tmp_path / "turn"
    turn.write_text("producer")
    procs = []
    for name, other, fmt in (("producer", "consumer_01", formats[0]), ("consumer_01", "producer", formats[1])):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - owned by the child
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, name, fmt, str(turn), other], cwd=REPO,
                                      stderr=log, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}))
    for proc in procs:
        assert proc.wait(60) == 0
    lines = merged_tail([tmp_path / "consumer_01.log", tmp_path / "producer.log"], 20)
    order = [line.split("line ", 1)[1].split('"')[0] for line in lines]
    assert order == [f"{name}-{n}" for n in range(5) for name in ("producer", "consumer_01")]
