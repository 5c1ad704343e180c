"""python -m tests.containers ping [--quiet] | prepare | sweep   (used by bin/test and deploy/containers/engine)."""

from __future__ import annotations

import sys
import time

from tests.containers.engine import EngineError, connect


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    try:
        if command == "ping":
            connect(timeout=5)
            return 0
        if command == "prepare":
            from tests.containers.images import ensure_images, image_set
            started = time.monotonic()
            client = connect()
            tags = ensure_images(client, image_set(), say=lambda line: print(f"    {line}", flush=True))
            print(f"    images ready in {time.monotonic() - started:.1f}s: {', '.join(tags.values())}")
            return 0
        if command == "sweep":
            from tests.containers.images import sweep_temp_tags
            from tests.containers.runs import sweep
            client = connect()
            removed = sweep(client)
            if removed:
                print(f"    removed {len(removed)} container(s) of finished test runs: {', '.join(removed)}")
            interrupted = sweep_temp_tags(client)
            if interrupted:
                print(f"    removed the temporary tags of interrupted builds: {', '.join(interrupted)}")
            return 0
    except EngineError as e:
        if not (command == "ping" and "--quiet" in argv):
            print(e, file=sys.stderr)
        return e.exit_code
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
