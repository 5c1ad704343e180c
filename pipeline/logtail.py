"""`bin/pipeline logs`: the last lines of every process log merged by time, each line prefixed with
the process name; `-f` keeps following (rotation-safe: a file that shrinks or is replaced is reopened)."""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from pipeline.services.process import tail


def merged_tail(files: Iterable[Path], lines: int) -> list[str]:
    """The last `lines` lines of each file merged by their leading timestamp, each prefixed with the
    process name; at most 4 × `lines` in all (`lines` 0: none)."""
    if lines <= 0:
        return []
    per_file = []
    for path in files:
        name = path.stem
        per_file.append([(line[:23], f"{name:<12} | {line}") for line in tail(path, lines).splitlines()])
    return [text for _, text in heapq.merge(*per_file, key=lambda item: item[0])][-lines * 4:]


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
