"""supervisorctl plugin: ``scale <program> [N]`` on top of the ``pipeline.scale`` RPC.

Enabled in supervisord.conf with::

    [ctlplugin:pipeline]
    supervisor.ctl_factory = pipeline.supervisor.ctl:make_ctlplugin
    ; optional: consumer_program = consumer   (the program whose scale is followed by
    ;           the consumer group steps: stopped members leave, idle consumers warned about)
"""

from __future__ import annotations

import logging
from typing import Any
from xmlrpc.client import Fault

from supervisor.options import make_namespec  # type: ignore[import-untyped,unused-ignore]
from supervisor.supervisorctl import (  # type: ignore[import-untyped,unused-ignore]
    ControllerPluginBase,
    LSBInitExitStatuses,
)
from supervisor.xmlrpc import Faults  # type: ignore[import-untyped,unused-ignore]

from pipeline.errors import SettingsError  # no dependencies: supervisorctl stays light

log = logging.getLogger(__name__)

USAGE = "scale <program> [N]"


def after_scale(stopped: list[str], consumers: int) -> list[str]:
    """The steps after a scale of the consumers, shared with ``bin/pipeline scale``
    (``pipeline.kafka_admin.after_scale``), with the settings of supervisorctl's environment.

    Never raises: supervisorctl must work even when Kafka or its client is not there
    (then there is nothing to say); a bad setting is one line naming it.
    """
    try:
        from pipeline import kafka_admin
        from pipeline.settings import environment, parse_host_settings, parse_settings

        env = environment()
        return kafka_admin.after_scale(parse_settings(env), parse_host_settings(env).kafka_lib, stopped, consumers)
    except SettingsError as exc:
        return [f"group and partitions not checked: {exc}"]
    except Exception as exc:  # noqa: BLE001 - the session timeout moves the partitions anyway
        log.debug("steps after the scale skipped: %s", exc)
        return []


def parse_args(arg: str) -> tuple[str, int | None]:
    """``"consumer 3"`` -> ``("consumer", 3)``; raises ValueError with a usage message."""
    parts = arg.split()
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"usage: {USAGE}")
    if len(parts) == 1:
        return parts[0], None
    try:
        count = int(parts[1])
    except ValueError:
        raise ValueError(f"N must be a whole number, got {parts[1]!r}") from None
    if count < 0:
        raise ValueError(f"N must be >= 0, got {count}")
    return parts[0], count


class ScaleControllerPlugin(ControllerPluginBase):  # type: ignore[misc]  # untyped base
    """Adds ``scale`` to supervisorctl."""

    def __init__(self, controller: Any, consumer_program: str = "consumer") -> None:
        super().__init__(controller)
        self.consumer_program = consumer_program

    def do_scale(self, arg: str) -> None:
        """scale <program> [N]: run N processes of <program> (only new or surplus ones change)."""
        try:
            program, count = parse_args(arg)
        except ValueError as exc:
            self._error(str(exc))
            self.help_scale()
            return
        if not self.ctl.upcheck():  # prints e.g. "...supervisor.sock no such file"
            return
        proxy = self.ctl.get_server_proxy("pipeline")
        try:
            # XML-RPC has no None: leave the argument out to reconcile with the file
            result = proxy.scale(program) if count is None else proxy.scale(program, count)
        except Fault as fault:
            if fault.faultCode == Faults.UNKNOWN_METHOD:
                self._error("supervisord has no pipeline.scale: enable [rpcinterface:pipeline] and restart it")
            else:
                self._error(fault.faultString)
            return
        self._report(result)

    def _report(self, result: dict[str, Any]) -> None:
        program = result["program"]
        for name in result["stopped"]:
            code = result["exit_status"].get(name)
            suffix = "" if code in (None, 0) else f" (exit status {code}{', killed by a signal' if code == -1 else ''})"
            self.ctl.output(f"{make_namespec(program, name)}: stopped and removed{suffix}")
        for name in result["started"]:
            self.ctl.output(f"{make_namespec(program, name)}: started")
        for failure in result["failed"]:
            namespec = make_namespec(program, failure["name"])
            self.ctl.output(f"{namespec}: ERROR ({failure['action']}: {failure['error']})")
        before, after = result["before"], result["after"]
        change = "unchanged" if before == after and not result["stopped"] and not result["started"] else "scaled"
        self.ctl.output(f"{program}: {change}, {before} -> {after} processes")
        self.ctl.output(f"{program}: numprocs={after} in {result['scale_file']}")
        if result["failed"]:
            self.ctl.exitstatus = LSBInitExitStatuses.GENERIC
        if program == self.consumer_program:
            for line in after_scale(list(result["stopped"]), after):
                self.ctl.output(f"{program}: {line}")

    def _error(self, message: str) -> None:
        self.ctl.output(f"ERROR: {message}")
        self.ctl.exitstatus = LSBInitExitStatuses.GENERIC

    def help_scale(self) -> None:
        self.ctl.output(f"{USAGE}\tRun N processes of <program>, changing only the added or")
        self.ctl.output("\t\t\tremoved ones (no group restart); N is saved in its conf.d file.")
        self.ctl.output(f"{'scale <program>':<24}Reconcile the running processes with that file.")


def make_ctlplugin(controller: Any, **config: str) -> ScaleControllerPlugin:
    """supervisor.ctl_factory for ``[ctlplugin:pipeline]`` (config: consumer_program)."""
    unknown = set(config) - {"consumer_program"}
    if unknown:
        raise ValueError(f"[ctlplugin:pipeline] unknown keys: {', '.join(sorted(unknown))}")
    return ScaleControllerPlugin(controller, **config)
