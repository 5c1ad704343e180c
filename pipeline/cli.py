"""`bin/pipeline`: one command for operators (services, the pipeline, status, scaling)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dotenv import load_dotenv

from pipeline.services import LocalServices, ServiceError, ServicesConfig

REPO = Path(__file__).resolve().parents[1]


def services_command(args: argparse.Namespace) -> int:
    services = LocalServices(ServicesConfig.from_env())
    if args.action == "start":
        services.start(timeout=args.timeout)
    elif args.action == "stop":
        services.stop()
    else:
        for name, pid, where in services.status():
            state = f"running  pid {pid:<7}" if pid else "stopped           "
            print(f"{name:<10} {state} {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    svc = sub.add_parser("services", help="local ZooKeeper, Kafka and PostgreSQL")
    svc.add_argument("action", choices=["start", "stop", "status"])
    svc.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each server")
    svc.set_defaults(func=services_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    load_dotenv(REPO / ".env")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.log_tail:
            print(e.log_tail, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
