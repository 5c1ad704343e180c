"""Peer (b): how the harness starts Quix Streams (`quix_sink.py`, in the peers' own virtualenv)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bench.context import ORDERS_TOPIC
from bench.infra import BenchInfra

SCRIPT = Path(__file__).with_name("quix_sink.py")


@dataclass(frozen=True)
class QuixOptions:
    """Checkpoint settings: a checkpoint every `commit_every` messages or `commit_interval` seconds,
    whichever comes first; each one writes what was consumed since the last (one transaction per
    partition) and then commits the offsets."""

    commit_every: int = 10_000
    commit_interval: float = 1.0
    processes: int = 1


def start_quix(infra: BenchInfra, python: Path, database_url: str, options: QuixOptions,
               name: str) -> list[subprocess.Popen[bytes]]:
    """Start `options.processes` Quix applications in one consumer group; stopped with the infra."""
    parts = urlsplit(database_url)
    state = infra.root / "peers" / name
    state.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEER_", "Quix__", "QUIX_"))}
    env.update({
        "PEER_BOOTSTRAP": infra.bootstrap_servers, "PEER_GROUP": f"bench-{name}", "PEER_TOPIC": ORDERS_TOPIC,
        "PEER_COMMIT_EVERY": str(options.commit_every), "PEER_COMMIT_INTERVAL": f"{options.commit_interval:g}",
        "PEER_STATE_DIR": str(state), "PEER_PG_HOST": parts.hostname or "127.0.0.1",
        "PEER_PG_PORT": str(parts.port or 5432), "PEER_PG_DBNAME": parts.path.lstrip("/"),
        "PEER_PG_USER": unquote(parts.username or ""), "PEER_PG_PASSWORD": unquote(parts.password or ""),
        "PYTHONUNBUFFERED": "1",
    })
    procs = []
    for i in range(options.processes):
        log = open(infra.log_dir / f"{name}-{i + 1}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([str(python), str(SCRIPT)], cwd=state, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        infra.procs.append(proc)
        procs.append(proc)
    return procs
