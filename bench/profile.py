"""Profile one pipeline process with py-spy while it works: `python -m bench.profile [consumer|producer]`.

Starts private servers (like the harness), fills a 3-partition topic with `pipeline.producer`, then
samples either one `pipeline.consumer` draining it or the producer filling it (`py-spy record --pid`,
raw collapsed stacks, native frames off), and prints the hottest functions: self time (the leaf frame)
and inclusive time (anywhere on the stack). The raw stacks are kept next to the summary (--out).
Needs py-spy (pip) and ptrace rights on the process (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from bench.context import ORDERS_TOPIC, SEED
from bench.infra import BenchInfra, private_infra
from bench.measure import RowCounter, wait_for
from pipeline.kafka_admin import ensure_topics


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def record(pid: int, out: Path, rate: int, idle: bool = False) -> subprocess.Popen[bytes]:
    cmd = [py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out),
           "--nonblocking", *(["--idle"] if idle else [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_recording(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()


def summarize(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if frames:
            self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"{total} samples"]
    lines.append("\nself time (leaf frame):")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_t.most_common(top)]
    lines.append("\ninclusive time (on the stack):")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"; the process/thread frames are dropped.
    if frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"


def fill(infra: BenchInfra, orders: int, spy_rate: int | None, out: Path, idle: bool = False) -> None:
    env = infra.env(KAFKA_TOPIC=ORDERS_TOPIC, PRODUCER_RATE="0", PRODUCER_MAX_ORDERS=str(orders),
                    PRODUCER_SEED=str(SEED))
    ensure_topics(infra.settings(KAFKA_TOPIC=ORDERS_TOPIC))
    proc = infra.spawn("pipeline.producer", env, "profile-producer")
    spy = record(proc.pid, out, spy_rate, idle) if spy_rate else None
    proc.wait(600)
    if spy is not None:
        stop_recording(spy)
    if proc.returncode != 0:
        raise SystemExit(f"producer failed:\n{infra.log_tail('profile-producer')}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.profile", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("target", nargs="?", choices=["consumer", "producer"], default="consumer")
    p.add_argument("--orders", type=int, default=200_000)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path("/tmp"), help="where the raw stacks and summary go")
    p.add_argument("--idle", action="store_true",
                   help="include samples of threads waiting (wall-clock view: where the time goes, not the CPU)")
    p.add_argument("--consumer-env", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logger.disable("pipeline")
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"profile-{args.target}{'-idle' if args.idle else ''}.txt"
    with private_infra() as infra:
        if args.target == "producer":
            fill(infra, args.orders, args.rate, raw, args.idle)
        else:
            fill(infra, args.orders, None, raw)
            url = infra.new_database("profile")
            extra = dict(kv.split("=", 1) for kv in args.consumer_env)
            env = infra.env(KAFKA_TOPIC=ORDERS_TOPIC, DATABASE_URL=url,
                            CONSUMER_GROUP_ID=f"bench-profile-{uuid.uuid4().hex[:6]}", **extra)
            proc = infra.spawn("pipeline.consumer", env, "profile-consumer")
            counter = RowCounter(url)
            wait_for(counter, 1, 60, lambda v: None)  # start sampling at the first row, not at start-up
            spy = record(proc.pid, raw, args.rate, args.idle)
            started = time.monotonic()
            got = wait_for(counter, args.orders, 600, lambda v: None, every=0.5)
            seconds = time.monotonic() - started
            stop_recording(spy)
            counter.close()
            print(f"consumer wrote {got} rows; sampled for {seconds:.1f}s")
    summary = summarize(raw)
    raw.with_name(raw.stem + "-summary.txt").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
