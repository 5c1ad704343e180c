"""`bin/pipeline`: one command for operators.

  up | down                    everything on this host, in order (services, then supervisord + programs)
  status [--json] [--check]    processes, group members, lag, database totals, DLQ; --check for monitoring
  chaos [--minutes M]          faults for M minutes, then proof that nothing was lost (exit 1 if not)
  dlq show|replay              dead letters: list them; replay them once their cause is fixed
  top                          a live view (rates, lag, latency, DLQ), refreshed every second
  scale N                      consumer processes (only the difference is started or stopped)
  logs [-f] [NAME]             process logs merged with a name prefix, or one process
  topic partitions N           grow the orders topic (Kafka cannot shrink one)
  produce --count N            one-shot load from this shell
  services start|stop|status   ZooKeeper, Kafka and PostgreSQL alone
  migrate                      apply database migrations
  audit [--wait S]             every order id in the topic in PostgreSQL exactly once? (exit 1 if not)
  bench [--smoke]              benchmark harness (docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import xmlrpc.client
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline import health, ops, views
from pipeline.errors import PipelineError, SettingsError
from pipeline.kafka_admin import after_scale, ensure_topics, grow_partitions
from pipeline.keeper import keeper_process
from pipeline.logs import setup_logging
from pipeline.logtail import follow, merged_tail
from pipeline.ops import SupervisordPaths
from pipeline.services import LocalServices, ServiceError, ServicesConfig
from pipeline.settings import HostSettings, Settings, environment, parse_host_settings, parse_settings

console = Console()


class Config:
    """The environment (variables over the env file), parsed on first use, once: a command parses only
    what it needs, so one bad value stops only the commands that read it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    @cached_property
    def settings(self) -> Settings:
        return parse_settings(self.env)

    @cached_property
    def host(self) -> HostSettings:
        return parse_host_settings(self.env)

    @cached_property
    def services(self) -> ServicesConfig:
        return ServicesConfig.from_host(self.host)

    @cached_property
    def supervisord(self) -> SupervisordPaths:
        return SupervisordPaths.read(self.host.supervisord_conf)

    def settings_problem(self) -> str | None:
        """What is wrong with the settings, for a command that does not need them to say so."""
        try:
            self.settings  # noqa: B018 - parsing is the check
        except SettingsError as e:
            return str(e)
        return None


def cmd_services(args: argparse.Namespace, config: Config) -> int:
    services = LocalServices(config.services)
    keeper = keeper_process(config.services, config.supervisord)
    if args.action == "start":
        services.start(timeout=args.timeout)
    elif args.action == "stop":
        if keeper.pid() is not None:
            raise PipelineError("the keeper runs and would start them again: bin/pipeline down")
        services.stop()
    else:
        for name, pid, where in [("keeper", keeper.pid(), "restarts what dies (bin/pipeline up)"),
                                 *services.status()]:
            state = f"running  pid {pid:<7}" if pid else "stopped           "
            print(f"{name:<10} {state} {where}")
    return 0


def cmd_up(args: argparse.Namespace, config: Config) -> int:
    """Start the keeper, which starts the servers and supervisord and restarts whatever dies."""
    settings, paths = config.settings, config.supervisord  # a bad value stops `up` before anything starts
    keeper = keeper_process(config.services, paths)
    running = keeper.pid()
    if running is None and ops.supervisord_running(paths):
        raise PipelineError("supervisord runs without the keeper (started by hand?): bin/pipeline down first")
    print(f"keeper {'already running' if running else 'starting'}: servers, then supervisord "
          f"(log {keeper.log_file})")
    keeper.start(timeout=args.timeout)
    ensure_topics(settings)
    for name, pid, where in LocalServices(config.services).status():
        print(f"  {name:<22} {'running' if pid else 'STOPPED':<9} pid {pid or '-':<7} {where}")
    print(f"supervisord ({paths.conf}, socket {paths.socket})")
    for p in ops.processes(paths) or []:
        print(f"  {p['name']:<22} {p['state']:<9} pid {p['pid'] or '-'}")
    return 0


def cmd_down(args: argparse.Namespace, config: Config) -> int:
    """Needs only where things are (the PIPELINE_* settings and the servers' addresses)."""
    keeper = keeper_process(config.services, config.supervisord)
    if keeper.pid() is not None:
        keeper.stop(timeout=300)
        print("keeper: programs stopped, supervisord shut down")
    else:
        print("supervisord: programs stopped, supervisord shut down" if ops.stop_supervisord(config.supervisord)
              else "supervisord: not running")
    LocalServices(config.services).stop()  # normally the keeper's last step; again in case it was cut short
    problem = config.settings_problem()
    if problem:
        print(f"note: settings: {problem} (not needed to stop; bin/pipeline up refuses it)", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    if args.check:
        return check(args, config)
    snap = ops.snapshot(config.settings, config.supervisord)
    if args.json:
        print(json.dumps(snap, indent=2, default=str))
    else:
        views.show_status(console, snap)
    down = [name for name, up in snap["servers"].items() if not up]
    if down and not args.json:
        console.print(f"[red]not answering: {', '.join(down)}[/]")
    return 1 if down else 0


def check(args: argparse.Namespace, config: Config) -> int:
    """`status --check`: one line and perfdata, monitoring-plugin exit codes."""
    try:
        settings, paths = config.settings, config.supervisord
    except PipelineError as e:
        print(f"FOOD-ORDERS UNKNOWN - {e}")
        return health.UNKNOWN
    snap = ops.snapshot(settings, paths)
    state = Path(args.state_file) if args.state_file else ops.check_state_file(settings)
    before = ops.read_letters(state)
    if snap["dlq"]["messages"] is not None:
        ops.write_letters(state, snap["dlq"]["messages"])
    limits = health.Thresholds(args.lag_warn, args.lag_crit, args.lag_seconds_warn, args.lag_seconds_crit,
                               args.dlq_growth_warn, args.dlq_growth_crit)
    verdict = health.evaluate(snap, limits, before)
    print(verdict.line())
    return verdict.code


def cmd_chaos(args: argparse.Namespace, config: Config) -> int:
    from pipeline import chaos

    checks, counts = chaos.run(config.settings, config.host, config.supervisord, args.minutes, args.rate, args.seed)
    return 0 if views.show_chaos(console, checks, counts) else 1


def cmd_dlq(args: argparse.Namespace, config: Config) -> int:
    from pipeline import dlq_tools

    settings = config.settings
    if args.action == "show":
        since = dlq_tools.parse_since(args.since) if args.since else None
        letters = dlq_tools.show(settings, args.error, since, args.limit)
        if args.json:
            for letter in letters:
                print(json.dumps(letter.as_json()))
            return 0
        views.show_letters(console, settings.kafka_dlq_topic, letters, args.error, since)
        return 0
    if args.execute == args.dry_run:
        raise PipelineError("dlq replay: say --dry-run (show what would be replayed) or --execute")
    report, group = dlq_tools.replay(settings, args.error, args.execute, args.max_replays)
    for line in report.lines(args.execute, group):
        print(line)
    return 0


def cmd_top(args: argparse.Namespace, config: Config) -> int:
    from prometheus_client import generate_latest

    from pipeline import top
    from pipeline.exporter import build_registry

    paths = config.supervisord
    registry = build_registry(config.settings, paths.metrics_dir, paths)
    return top.run(lambda: generate_latest(registry).decode(), args.interval, args.once, console)


def cmd_scale(args: argparse.Namespace, config: Config) -> int:
    settings, paths = config.settings, config.supervisord
    if not ops.supervisord_running(paths):
        raise PipelineError("supervisord is not running: bin/pipeline up")
    rpc = ops.supervisor_rpc(paths)
    try:  # XML-RPC has no None: leave the count out to reconcile with the file
        result = rpc.pipeline.scale("consumer") if args.count is None else rpc.pipeline.scale("consumer", args.count)
    except xmlrpc.client.Fault as e:
        raise PipelineError(f"scale refused: {e.faultString}") from e
    print(f"consumer: {result['before']} -> {result['after']} processes")
    for key in ("started", "stopped"):
        if result[key]:
            print(f"  {key}: {', '.join(result[key])}")
    for line in after_scale(settings, config.host.kafka_lib, result["stopped"], result["after"]):
        print(f"  {line}")
    return 0


def cmd_logs(args: argparse.Namespace, config: Config) -> int:
    paths = config.supervisord
    files = ops.log_files(paths, args.name)
    if not files and not args.follow:
        raise PipelineError(f"no logs{' for ' + args.name if args.name else ''} under {paths.childlogdir}")
    for line in merged_tail(files, args.lines):
        print(line)
    if args.follow:
        follow(lambda: ops.log_files(paths, args.name))
    return 0


def cmd_topic(args: argparse.Namespace, config: Config) -> int:
    settings = config.settings
    count = grow_partitions(settings, args.count)
    print(f"{settings.kafka_topic}: {count} partitions. Producers pick them up within ~10 s; keys that now "
          "hash to a new partition keep their order from this moment on.")
    return 0


def cmd_produce(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from pipeline.producer import OrderProducer

    settings = config.settings
    setup_logging("produce", settings.log_level, settings.log_format)
    ensure_topics(settings)
    one_shot = replace(settings, producer_max_orders=args.count, producer_rate=args.rate)
    return OrderProducer(one_shot, one_shot.client_id()).run()


def cmd_migrate(_args: argparse.Namespace, config: Config) -> int:
    from pipeline.store import OrderStore

    settings = config.settings
    applied = OrderStore(settings.database_url, settings.client_id()).migrate()
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def cmd_audit(args: argparse.Namespace, config: Config) -> int:
    from pipeline.audit import audit, wait_for_no_lag

    settings = config.settings
    if args.wait > 0:
        lag = wait_for_no_lag(settings, args.wait)
        if lag != 0:
            print(f"lag still {lag if lag is not None else 'unknown (Kafka unreachable)'} after {args.wait:.0f}s; "
                  "auditing anyway")
    report = audit(settings)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bin/pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "install what is missing; start the keeper: servers, supervisord, programs, kept running")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for everything to answer")
    add("down", cmd_down, "stop the programs gracefully, supervisord, then the services")
    p = add("status", cmd_status, "one view of the host; --check: a monitoring check (exit 0/1/2/3)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="one line + perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, "
                   "3 UNKNOWN")
    limits = health.Thresholds()
    p.add_argument("--lag-warn", type=int, default=limits.lag_warn, metavar="N", help="messages (%(default)s)")
    p.add_argument("--lag-crit", type=int, default=limits.lag_crit, metavar="N", help="messages (%(default)s)")
    p.add_argument("--lag-seconds-warn", type=float, default=limits.lag_seconds_warn, metavar="S",
                   help="age of the oldest unconsumed order (%(default)s)")
    p.add_argument("--lag-seconds-crit", type=float, default=limits.lag_seconds_crit, metavar="S",
                   help="(%(default)s)")
    p.add_argument("--dlq-growth-warn", type=int, default=limits.dlq_growth_warn, metavar="N",
                   help="new dead letters since the previous check (%(default)s)")
    p.add_argument("--dlq-growth-crit", type=int, default=limits.dlq_growth_crit, metavar="N", help="(%(default)s)")
    p.add_argument("--state-file", help="where the previous check's DLQ count is kept "
                   "(default ~/.cache/food-orders/check-*.json)")
    p = add("chaos", cmd_chaos, "faults against the running pipeline, then proof from Kafka that nothing was lost")
    p.add_argument("--minutes", type=float, default=2.0, help="how long to inject faults (%(default)s)")
    p.add_argument("--rate", type=float, default=500.0, help="orders/s while it runs (%(default)s)")
    p.add_argument("--seed", type=int, help="random seed of the fault sequence (printed; default random)")
    p = add("dlq", cmd_dlq, "the dead-letter queue: show letters, replay them once their cause is fixed")
    p.add_argument("action", choices=["show", "replay"])
    p.add_argument("--error", metavar="CODE", help="only letters with this error code (schema, conflict, ...)")
    p.add_argument("--since", metavar="T", help="show: letters since an ISO time or 30m / 2h / 1d ago")
    p.add_argument("--limit", type=int, default=50, help="show: the last N letters (%(default)s)")
    p.add_argument("--json", action="store_true", help="show: one JSON object per letter")
    p.add_argument("--dry-run", action="store_true", help="replay: say what would be replayed")
    p.add_argument("--execute", action="store_true", help="replay: produce the letters to their source topic")
    p.add_argument("--max-replays", type=int, default=3, metavar="N",
                   help="replay: never replay a letter already replayed N times (%(default)s)")
    p = add("top", cmd_top, "a live view: rates, lag per partition, latency, DLQ, degraded consumers (q quits)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (%(default)s)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p = add("scale", cmd_scale, "set the number of consumer processes")
    p.add_argument("count", type=int, nargs="?", help="processes; omit to reconcile with conf.d/consumer.conf")
    p = add("logs", cmd_logs, "process logs, merged with a name prefix")
    p.add_argument("name", nargs="?", help="producer, consumer, consumer_02, ...")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=20)
    p = add("topic", cmd_topic, "topic administration")
    p.add_argument("what", choices=["partitions"])
    p.add_argument("count", type=int)
    p = add("produce", cmd_produce, "produce a one-shot load of mock orders")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.0, help="orders/s (0 = as fast as possible)")
    p = add("services", cmd_services, "ZooKeeper, Kafka and PostgreSQL alone")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--timeout", type=float, default=120.0)
    add("migrate", cmd_migrate, "apply database migrations")
    p = add("audit", cmd_audit, "check every order in the topic against PostgreSQL (ground truth from Kafka)")
    p.add_argument("--wait", type=float, default=0.0, help="first wait up to this many seconds for lag 0")
    sub.add_parser("bench", help="benchmark harness: bin/pipeline bench [--smoke] (see docs/benchmarks.md)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the harness parses its own options
        from bench.harness import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    if os.environ.get("PIPELINE_HOST_INSTALL") == "1" and args.command in ("up", "down", "services"):
        print(f"error: on an installed host systemd runs the servers and supervisord: "
              f"systemctl {'stop' if args.command == 'down' else 'start'} food-orders.target "
              "(systemctl status 'food-orders*' for their state)", file=sys.stderr)
        return 2
    config = Config(environment())
    # With a bad value anywhere, text: the command that needs the value says what is wrong.
    setup_logging("pipeline", "WARNING", "text" if config.settings_problem() else config.settings.log_format)
    try:
        code: int = args.func(args, config)
        return code
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.log_tail:
            print(e.log_tail, file=sys.stderr)
        return 1
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
