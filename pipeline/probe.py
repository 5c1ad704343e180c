"""`food-orders-server`: the waits systemd units need around a server's start (ExecStartPre/Post).

  await-ready zookeeper --port P       until ZooKeeper serves (`srvr` names its mode)
  await-ready kafka --port P           until the broker answers metadata with a controller
  await-ready supervisord --conf FILE  until supervisord answers on its socket
  await-zookeeper-release --port P     until no ZooKeeper session holds /brokers/ids/<id>
  grant-worker --user NAME             the worker user's SCRAM credential (password from the
                                       environment variable WORKER_KAFKA_PASSWORD) and its ACLs

Each exits 0 when the condition holds, 1 with one line on stderr when the timeout passes first.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.services.process import ServiceError, poll_until
from pipeline.services.servers import broker_answers
from pipeline.services.zookeeper import await_broker_released, zookeeper_serving


def _probe(args: argparse.Namespace) -> Callable[[], bool]:
    if args.server == "zookeeper":
        return lambda: zookeeper_serving(args.port)
    if args.server == "kafka":
        return lambda: broker_answers(f"127.0.0.1:{args.port}")
    from pipeline.ops import SupervisordPaths, supervisord_running

    conf = Path(args.conf).resolve()
    return lambda: supervisord_running(SupervisordPaths.read(conf))  # a conf not there yet: "not yet"


def await_ready(args: argparse.Namespace) -> int:
    if poll_until(_probe(args), args.timeout):
        return 0
    print(f"{args.server}: not ready after {args.timeout:.0f}s", file=sys.stderr)
    return 1


def await_release(args: argparse.Namespace) -> int:
    try:
        waited = await_broker_released(args.port, args.broker_id, args.timeout, say=print)
    except ServiceError as e:
        print(e, file=sys.stderr)
        return 1
    if waited > 1:
        print(f"kafka: previous registration gone after {waited:.1f}s")
    return 0


def grant_worker(args: argparse.Namespace) -> int:
    """deploy/install.sh --listen: the password comes through the environment, never the command line."""
    from confluent_kafka import KafkaException

    from pipeline.access import grant_worker as grant
    from pipeline.errors import SettingsError
    from pipeline.settings import load_settings

    password = os.environ.get("WORKER_KAFKA_PASSWORD", "")
    if not password:
        print("grant-worker: WORKER_KAFKA_PASSWORD is not set", file=sys.stderr)
        return 2
    try:
        for line in grant(load_settings(), args.user, password):
            print(line)
    except (KafkaException, SettingsError) as e:
        print(f"grant-worker: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="food-orders-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ready = sub.add_parser("await-ready", help="wait until a server answers")
    ready.add_argument("server", choices=["zookeeper", "kafka", "supervisord"])
    ready.add_argument("--port", type=int, help="zookeeper / kafka port on 127.0.0.1")
    ready.add_argument("--conf", help="supervisord.conf (supervisord)")
    ready.add_argument("--timeout", type=float, default=120.0)
    ready.set_defaults(func=await_ready)
    release = sub.add_parser("await-zookeeper-release", help="wait until the broker's old registration expired")
    release.add_argument("--port", type=int, required=True, help="ZooKeeper port on 127.0.0.1")
    release.add_argument("--broker-id", type=int, default=0)
    release.add_argument("--timeout", type=float, default=30.0)
    release.set_defaults(func=await_release)
    worker = sub.add_parser("grant-worker", help="the worker user's Kafka credential and ACLs")
    worker.add_argument("--user", required=True, help="the Kafka user of the worker hosts")
    worker.set_defaults(func=grant_worker)
    args = parser.parse_args(argv)
    if args.command == "await-ready" and (args.conf if args.server == "supervisord" else args.port) is None:
        parser.error(f"await-ready {args.server} needs {'--conf' if args.server == 'supervisord' else '--port'}")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
