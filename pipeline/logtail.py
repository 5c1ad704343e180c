"""`bin/pipeline logs`: the last lines of every process log merged by the time each line was written
(text or JSON lines alike), each line prefixed with the process name; `-f` keeps following
(rotation-safe: a file that shrinks or is replaced is reopened)."""

from __future__ import annotations

import heapq
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from pipeline.services.process import tail


def timestamp(line: str) -> float | None:
    """When a log line was written (unix seconds), in either format: text lines start with local
    `YYYY-MM-DD HH:mm:ss.SSS`, JSON lines carry an ISO-8601 `ts` with its offset. None for a line
    that has no time of its own (a traceback's continuation, a foreign line)."""
    if line.startswith("{"):
        try:
            ts = json.loads(line).get("ts")
            return datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else None
        except (ValueError, AttributeError):
            return None
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def merged_tail(files: Iterable[Path], lines: int) -> list[str]:
    """The last `lines` lines of each file merged by the time each line was written, each prefixed
    with the process name; a line without a time stays right after the line it follows. At most
    4 × `lines` in all (`lines` 0: none). Text lines carry milliseconds, so lines of two files written
    within one millisecond may come out in either order."""
    if lines <= 0:
        return []
    per_file = []
    for path in files:
        name = path.stem
        entries: list[tuple[float, list[str]]] = []
        for line in tail(path, lines).splitlines():
            at = timestamp(line)
            if at is None and entries:
                entries[-1][1].append(f"{name:<12} | {line}")
            else:
                entries.append((at if at is not None else float("-inf"), [f"{name:<12} | {line}"]))
        per_file.append(entries)
    merged = heapq.merge(*per_file, key=lambda entry: entry[0])
    return [text for _, group in merged for text in group][-lines * 4:]


def follow(files_of: Callable[[], list[Path]], out: TextIO = sys.stdout, interval: float = 0.25,
           until: Callable[[], bool] = lambda: False) -> None:
    """Print lines appended to any of the files from now on; new files (scaled-up processes) join in."""
    positions: dict[Path, tuple[int, int]] = {}  # path -> (inode, offset)
    for path in files_of():
        st = path.stat()
        positions[path] = (st.st_ino, st.st_size)
    while not until():
        for path in files_of():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            inode, offset = positions.get(path, (st.st_ino, 0))
            if inode != st.st_ino or st.st_size < offset:  # rotated or truncated
                inode, offset = st.st_ino, 0
            if st.st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
                complete = data.rfind(b"\n") + 1
                for line in data[:complete].decode("utf-8", "replace").splitlines():
                    out.write(f"{path.stem:<12} | {line}\n")
                offset += complete
                out.flush()
            positions[path] = (inode, offset)
        time.sleep(interval)
