"""XML-RPC namespace ``pipeline``: scale a ``numprocs`` program without restarting it.

supervisord cannot change ``numprocs`` in place: ``reread`` + ``update`` stops and
re-adds the whole group (supervisor issue #177).  ``pipeline.scale`` instead

1. writes ``numprocs=N`` into the small included file that holds the program's
   section (atomically; the file is the persisted truth, a restart brings N back),
2. re-reads the configuration exactly as ``supervisorctl reread`` does and takes the
   group's new ``ProcessGroupConfig`` from it, so a later ``reread`` sees no change,
3. swaps that config into the live group, keeping the live ``ProcessConfig`` objects
   of the processes that stay (they keep running, same pid),
4. starts only the new processes and stops only the surplus ones (highest
   process_num first, with their own stopsignal/stopwaitsecs), then removes them.

Waits never block supervisord: like ``supervisor.startProcess``/``stopProcess`` the
method returns a callable that the HTTP layer polls until it stops answering
``NOT_DONE_YET``.  Enabled in supervisord.conf with::

    [rpcinterface:pipeline]
    supervisor.rpcinterface_factory = pipeline.supervisor.rpc:make_rpcinterface
    ; optional: scale_file = conf.d/consumer.conf   (relative to supervisord.conf)
    ; optional: max_count = 64
"""

from __future__ import annotations

import configparser
import contextlib
import glob
import os
import platform
import re
from collections.abc import Callable
from typing import Any

from supervisor import events  # type: ignore[import-untyped,unused-ignore]
from supervisor.http import NOT_DONE_YET  # type: ignore[import-untyped,unused-ignore]
from supervisor.options import (  # type: ignore[import-untyped,unused-ignore]
    ProcessGroupConfig,
    expand,
    make_namespec,
)
from supervisor.rpcinterface import (  # type: ignore[import-untyped,unused-ignore]
    SupervisorNamespaceRPCInterface,
)
from supervisor.states import (  # type: ignore[import-untyped,unused-ignore]
    RUNNING_STATES,
    STOPPED_STATES,
    ProcessStates,
    SupervisorStates,
)
from supervisor.xmlrpc import Faults, RPCError  # type: ignore[import-untyped,unused-ignore]

from pipeline.supervisor.scalefile import ScaleFileError, atomic_write, defines_section, read_text, set_numprocs

DEFAULT_MAX_COUNT = 64
_PENDING_ATTR = "_pipeline_scale_pending"  # attribute we hang on the Supervisor object

_TRAILING_NUMBER_RE = re.compile(r"(\d+)$")

Deferred = Callable[[], Any]


def process_order(name: str) -> tuple[int, str]:
    """Sort key: the trailing process number (``consumer_10`` after ``consumer_9``)."""
    match = _TRAILING_NUMBER_RE.search(name)
    return (int(match.group(1)) if match else -1, name)


# --- the RPC namespace -----------------------------------------------------------------


def _set_deferred(callback: Deferred, delay: float) -> Deferred:
    # supervisor's HTTP layer reads these attributes off the function it is given.
    setattr(callback, "delay", delay)  # noqa: B010 - plain functions have no typed attrs
    return callback


class ScaleNamespaceRPCInterface:
    """The ``pipeline`` XML-RPC namespace (one instance per supervisord HTTP server)."""

    def __init__(self, supervisord: Any, scale_file: str | None, max_count: int) -> None:
        self.supervisord = supervisord
        self._scale_file = scale_file
        self._max_count = max_count
        # supervisor's own start/stop logic, reused for identical semantics and faults
        self._main = SupervisorNamespaceRPCInterface(supervisord)
        if getattr(supervisord, _PENDING_ATTR, None) is None:
            setattr(supervisord, _PENDING_ATTR, {})
        # Removal of stopped surplus processes must not depend on the client staying
        # connected: if it goes away its deferred is never polled again, so a tick
        # sweeps too.  supervisord clears subscriptions on restart and then builds
        # the rpc interfaces again, so subscribing here is re-done each run.
        events.subscribe(events.Tick5Event, self._on_tick)

    # public XML-RPC API: every public method is remotely callable, so helpers are _private

    def scale(self, program: str, count: int | None = None) -> Any:
        """Set the number of processes of a numprocs program, in place.

        Writes numprocs=count into the included file holding [program:<program>],
        then starts only the new processes or stops (highest number first) and
        removes only the surplus ones; the others keep running.  Without count,
        reconciles the running group with the file.

        @param string program  program (process group) name, e.g. consumer
        @param int count       wanted number of processes (optional)
        @return struct result  program, before, after, started, stopped, failed,
                               exit_status, scale_file, file_changed
        """
        if self.supervisord.options.mood < SupervisorStates.RUNNING:
            raise RPCError(Faults.SHUTDOWN_STATE)
        group = self._group(program)
        if count is not None:
            self._check_count(count)
        pending = self._sweep(program)
        if pending:
            raise RPCError(
                Faults.STILL_RUNNING,
                f"a previous scale of {program} is still stopping {', '.join(pending)}; retry",
            )
        path = self._scale_file_for(program)
        try:
            old_text = read_text(path)
            new_text = old_text if count is None else set_numprocs(old_text, f"program:{program}", count)
            if new_text != old_text:
                atomic_write(path, new_text)
        except ScaleFileError as exc:
            raise RPCError(Faults.FAILED, str(exc)) from exc

        options = self.supervisord.options
        saved_configs = options.process_group_configs
        try:
            new_config = self._reread_group(program)
            wanted = len(new_config.process_configs)
            if count is not None and wanted != count:
                raise RPCError(Faults.FAILED, f"{path}: numprocs={count} written but reads back as {wanted}")
            if count is None:
                self._check_count(wanted, source=path)
            kept = self._check_kept(group, new_config, path)
        except RPCError:
            # leave file and pending config as they were: nothing was applied
            options.process_group_configs = saved_configs
            if new_text != old_text:
                # best effort: the fault being raised is the actionable part
                with contextlib.suppress(ScaleFileError):
                    atomic_write(path, old_text)
            raise
        return self._apply(group, new_config, kept, path, file_changed=new_text != old_text)

    # --- validation and config ---------------------------------------------------------

    def _group(self, program: Any) -> Any:
        if not isinstance(program, str) or program not in self.supervisord.process_groups:
            raise RPCError(Faults.BAD_NAME, f"no such program: {program!r}")
        group = self.supervisord.process_groups[program]
        if type(group.config) is not ProcessGroupConfig:
            raise RPCError(Faults.BAD_NAME, f"{program} is not a plain [program:x] group")
        return group

    def _check_count(self, count: Any, source: str = "count") -> None:
        if isinstance(count, bool) or not isinstance(count, int):
            raise RPCError(Faults.BAD_ARGUMENTS, f"count must be an integer, got {count!r}")
        if not 0 <= count <= self._max_count:
            raise RPCError(Faults.BAD_ARGUMENTS, f"{source}: count {count} is outside 0..{self._max_count}")

    def _scale_file_for(self, program: str) -> str:
        """The file holding [program:<program>]: ``scale_file`` or found via [include]."""
        here = self.supervisord.options.here
        section = f"program:{program}"
        configured = self._scale_file
        candidates = [os.path.join(here, configured)] if configured is not None else self._included_files()
        for path in candidates:
            try:
                text = read_text(path)
            except ScaleFileError:
                if self._scale_file is not None:
                    raise RPCError(Faults.FAILED, f"cannot read scale file {path}") from None
                continue
            if defines_section(text, section):
                return path
        where = candidates[0] if self._scale_file is not None else "any [include] file"
        raise RPCError(
            Faults.BAD_NAME,
            f"{program} cannot be scaled: [{section}] is not defined in {where}",
        )

    def _included_files(self) -> list[str]:
        """The files supervisord's [include] pulls in, expanded the way it does."""
        options = self.supervisord.options
        parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
        try:
            parser.read(options.configfile, encoding="utf-8")
            files = parser.get("include", "files", fallback="")
            expansions = {"here": options.here, "host_node_name": platform.node()}
            expansions.update(options.environ_expansions)
            files = expand(files.replace("%(here)s", options.here), expansions, "include.files")
        except (configparser.Error, OSError, ValueError):
            return []
        base = os.path.dirname(os.path.abspath(options.configfile))
        found: list[str] = []
        for pattern in str(files).split():
            found.extend(sorted(glob.glob(os.path.join(base, pattern))))
        return found

    def _reread_group(self, program: str) -> Any:
        """The group's config as a fresh ``reread`` builds it (same code path)."""
        options = self.supervisord.options
        try:
            # exactly what supervisor.reloadConfig does; it only refreshes the pending
            # config (what `update` would apply), nothing running changes
            options.process_config(do_usage=False)
        except ValueError as exc:
            raise RPCError(Faults.CANT_REREAD, str(exc)) from exc
        for config in options.process_group_configs:
            if config.name == program:
                return config
        raise RPCError(Faults.BAD_NAME, f"{program} is no longer in the configuration")

    @staticmethod
    def _check_kept(group: Any, new_config: Any, path: str) -> dict[str, Any]:
        """Processes that stay must have unchanged configs, or we would hide an edit."""
        if type(new_config) is not ProcessGroupConfig:
            raise RPCError(Faults.FAILED, f"{new_config.name} is no longer a plain [program:x]")
        kept: dict[str, Any] = {}
        for pconfig in new_config.process_configs:
            process = group.processes.get(pconfig.name)
            if process is None:
                continue
            if process.config != pconfig:
                fields = [
                    name
                    for name in pconfig.req_param_names + pconfig.optional_param_names
                    if getattr(process.config, name) != getattr(pconfig, name)
                ]
                raise RPCError(
                    Faults.FAILED,
                    f"{path} changes more than numprocs for {pconfig.name} "
                    f"({', '.join(fields) or 'config'}); apply that with "
                    f"'supervisorctl update {new_config.name}' (restarts the group)",
                )
            kept[pconfig.name] = process
        return kept

    # --- applying ------------------------------------------------------------------------

    def _apply(self, group: Any, new_config: Any, kept: dict[str, Any], path: str, *, file_changed: bool) -> Any:
        program = new_config.name
        before = len(group.processes)
        surplus = sorted(
            (p for name, p in group.processes.items() if name not in kept),
            key=lambda p: process_order(p.config.name),
            reverse=True,
        )
        # Kept processes keep their live ProcessConfig objects (equal by __eq__), so the
        # group config describes exactly what runs and a later reread sees no change.
        new_config.process_configs = [
            kept[p.name].config if p.name in kept else p for p in new_config.process_configs
        ]
        fresh = [p for p in new_config.process_configs if p.name not in kept]
        group.config = new_config  # supervisord.diff_to_active compares group.config

        result: dict[str, Any] = {
            "program": program,
            "before": before,
            "after": len(new_config.process_configs),
            "started": [],
            "stopped": [],
            "failed": [],
            "exit_status": {},
            "scale_file": path,
            "file_changed": file_changed,
        }
        waits: list[tuple[str, str, Deferred]] = []

        # stop first: surplus go away before new ones (if any) come up
        pending = getattr(self.supervisord, _PENDING_ATTR)
        pending[program] = [(group, p, result) for p in surplus]
        for process in surplus:
            name = process.config.name
            if process.get_state() in RUNNING_STATES or process.get_state() == ProcessStates.STOPPING:
                self._call(waits, result, name, "stop", self._stop, program, process)
            else:
                result["stopped"].append(name)
        for pconfig in fresh:
            pconfig.create_autochildlogs()  # what add_process_group's after_setuid does
            group.processes[pconfig.name] = pconfig.make_process(group)
        for pconfig in fresh:
            self._call(waits, result, pconfig.name, "start", self._main.startProcess,
                       make_namespec(program, pconfig.name), True)
        self._sweep(program)

        def onwait() -> Any:
            for item in list(waits):
                name, kind, callback = item
                try:
                    value = callback()
                except RPCError as exc:
                    result["failed"].append({"name": name, "action": kind, "error": exc.text})
                    waits.remove(item)
                    continue
                if value is not NOT_DONE_YET:
                    result["started" if kind == "start" else "stopped"].append(name)
                    waits.remove(item)
            self._sweep(program)
            if waits:
                return NOT_DONE_YET
            return self._finish(result)

        if not waits:
            return self._finish(result)
        return _set_deferred(onwait, 0.05)

    @staticmethod
    def _call(waits: list[tuple[str, str, Deferred]], result: dict[str, Any], name: str,
              kind: str, func: Callable[..., Any], *args: Any) -> None:
        """Run a start/stop; queue its deferred, or record success/failure now."""
        try:
            value = func(*args)
        except RPCError as exc:
            result["failed"].append({"name": name, "action": kind, "error": exc.text})
            return
        if callable(value):
            waits.append((name, kind, value))
        else:
            result["started" if kind == "start" else "stopped"].append(name)

    def _stop(self, program: str, process: Any) -> Any:
        """stopProcess for a RUNNING/STARTING/BACKOFF process; wait on one already STOPPING."""
        if process.get_state() != ProcessStates.STOPPING:
            return self._main.stopProcess(make_namespec(program, process.config.name), True)

        def onwait() -> Any:
            return True if process.get_state() in STOPPED_STATES else NOT_DONE_YET

        return _set_deferred(onwait, 0)

    @staticmethod
    def _finish(result: dict[str, Any]) -> dict[str, Any]:
        result["started"].sort(key=process_order)
        # stopped is reported in the order the surplus were signalled: highest first
        result["stopped"].sort(key=process_order, reverse=True)
        return result

    def _sweep(self, program: str) -> list[str]:
        """Remove stopped surplus processes of ``program``; return names still stopping.

        Called by the scale's deferred and by a tick (whichever comes first), so each
        pending entry carries the result dict its exit status is recorded in.
        """
        pending: dict[str, list[tuple[Any, Any, dict[str, Any]]]] = getattr(self.supervisord, _PENDING_ATTR)
        waiting: list[tuple[Any, Any, dict[str, Any]]] = []
        for group, process, result in pending.get(program, []):
            name = process.config.name
            if self.supervisord.process_groups.get(program) is not group or group.processes.get(name) is not process:
                continue  # group was removed/replaced meanwhile (update, reload): nothing to do
            if process.get_state() not in STOPPED_STATES:
                waiting.append((group, process, result))
                continue
            del group.processes[name]
            if process.exitstatus is not None:  # None: it never ran
                result["exit_status"][name] = process.exitstatus
        if waiting:
            pending[program] = waiting
        else:
            pending.pop(program, None)
        return [process.config.name for _, process, _ in waiting]

    def _on_tick(self, event: Any) -> None:
        pending: dict[str, Any] = getattr(self.supervisord, _PENDING_ATTR)
        for program in list(pending):
            self._sweep(program)


def make_rpcinterface(supervisord: Any, **config: str) -> ScaleNamespaceRPCInterface:
    """supervisor.rpcinterface_factory for ``[rpcinterface:pipeline]``.

    Config keys: ``scale_file`` (path relative to supervisord.conf's directory; default:
    whichever [include]d file defines the program) and ``max_count`` (default 64).
    """
    unknown = set(config) - {"scale_file", "max_count"}
    if unknown:
        raise ValueError(f"[rpcinterface:pipeline] unknown keys: {', '.join(sorted(unknown))}")
    try:
        max_count = int(config.get("max_count", DEFAULT_MAX_COUNT))
    except ValueError as exc:
        raise ValueError(f"[rpcinterface:pipeline] max_count must be an integer: {exc}") from exc
    if max_count < 1:
        raise ValueError("[rpcinterface:pipeline] max_count must be >= 1")
    return ScaleNamespaceRPCInterface(supervisord, config.get("scale_file"), max_count)
