"""Fault injection for crash tests: `PIPELINE_FAULT=<point>` kills the process at that point.

Points: `after_db_commit` (rows committed, DLQ and offsets not), `after_dlq` (offsets not committed).
The process dies with os._exit, like a kill -9: no cleanup, no commit, no flush.
"""

from __future__ import annotations

import os

EXIT_CODE = 86


def point(name: str) -> None:
    if os.environ.get("PIPELINE_FAULT") == name:
        os.write(2, f"PIPELINE_FAULT {name}: exiting without cleanup\n".encode())
        os._exit(EXIT_CODE)
