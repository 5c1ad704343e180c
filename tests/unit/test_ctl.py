"""The supervisor plugins' own logic against fakes: argument checks, faults, the report, the steps after a
scale. End to end against a real supervisord: tests/integration/test_supervisor_scale.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from xmlrpc.client import Fault

import pytest
from supervisor.options import ProcessGroupConfig
from supervisor.states import SupervisorStates
from supervisor.xmlrpc import Faults, RPCError

import pipeline
from pipeline import kafka_admin
from pipeline.settings import Settings
from pipeline.supervisor import ctl, rpc


class FakeProxy:
    def __init__(self, answer: dict[str, Any] | Fault) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    def scale(self, *args: Any) -> dict[str, Any]:
        self.calls.append(args)
        if isinstance(self.answer, Fault):
            raise self.answer
        return self.answer


class FakeController:
    """What the plugin uses of supervisorctl's Controller."""

    def __init__(self, proxy: FakeProxy, up: bool = True) -> None:
        self.proxy, self.up = proxy, up
        self.lines: list[str] = []
        self.exitstatus = 0

    def upcheck(self) -> bool:
        return self.up

    def get_server_proxy(self, namespace: str) -> FakeProxy:
        assert namespace == "pipeline"
        return self.proxy

    def output(self, line: str) -> None:
        self.lines.append(line)


def result(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"program": "consumer", "before": 1, "after": 1, "started": [], "stopped": [],
                            "failed": [], "exit_status": {}, "scale_file": "/x/conf.d/consumer.conf",
                            "file_changed": False}
    return {**base, **changes}


REAL_AFTER_SCALE = ctl.after_scale


@pytest.fixture(autouse=True)
def steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lines the plugin's steps after a scale return (none by default: no Kafka here)."""
    lines: list[str] = []
    monkeypatch.setattr(ctl, "after_scale", lambda stopped, consumers: list(lines))
    return lines


def run(arg: str, answer: dict[str, Any] | Fault | None = None) -> FakeController:
    controller = FakeController(FakeProxy(answer if answer is not None else result()))
    ctl.make_ctlplugin(controller).do_scale(arg)
    return controller


@pytest.mark.parametrize(("arg", "message"), [
    ("", "usage: scale <program> [N]"),
    ("consumer 2 3", "usage: scale <program> [N]"),
    ("consumer two", "N must be a whole number, got 'two'"),
    ("consumer -1", "N must be >= 0, got -1"),
])
def test_bad_arguments_are_an_error_with_the_usage_and_call_nothing(arg: str, message: str) -> None:
    controller = run(arg)
    assert controller.lines[0] == f"ERROR: {message}"
    assert controller.lines[1].startswith("scale <program> [N]\tRun N processes")  # the help follows
    assert controller.exitstatus == 1
    assert controller.proxy.calls == []


def test_arguments_reach_the_rpc_and_no_count_is_left_out() -> None:
    assert ctl.parse_args("consumer 3") == ("consumer", 3)
    assert run("consumer 3").proxy.calls == [("consumer", 3)]
    assert run("consumer").proxy.calls == [("consumer",)]  # XML-RPC has no None


def test_supervisord_down_is_left_to_upcheck() -> None:
    controller = FakeController(FakeProxy(result()), up=False)
    ctl.make_ctlplugin(controller).do_scale("consumer 2")
    assert controller.proxy.calls == [] and controller.lines == []


@pytest.mark.parametrize(("fault", "message"), [
    (Fault(Faults.UNKNOWN_METHOD, "UNKNOWN_METHOD"),
     "ERROR: supervisord has no pipeline.scale: enable [rpcinterface:pipeline] and restart it"),
    (Fault(Faults.BAD_NAME, "BAD_NAME: no such program: 'x'"), "ERROR: BAD_NAME: no such program: 'x'"),
])
def test_faults_are_one_error_line(fault: Fault, message: str) -> None:
    controller = run("consumer 2", fault)
    assert controller.lines == [message] and controller.exitstatus == 1


def test_report_names_every_process_then_the_steps_after_the_scale(steps: list[str]) -> None:
    steps.append("group: removed h-consumer_03")
    answer = result(before=3, after=2, started=["consumer_04"], stopped=["consumer_03", "consumer_02"],
                    exit_status={"consumer_03": 0, "consumer_02": -1},
                    failed=[{"name": "consumer_04", "action": "start", "error": "SPAWN_ERROR"}])
    controller = run("consumer 2", answer)
    assert controller.lines == [
        "consumer:consumer_03: stopped and removed",
        "consumer:consumer_02: stopped and removed (exit status -1, killed by a signal)",
        "consumer:consumer_04: started",
        "consumer:consumer_04: ERROR (start: SPAWN_ERROR)",
        "consumer: scaled, 3 -> 2 processes",
        "consumer: numprocs=2 in /x/conf.d/consumer.conf",
        "consumer: group: removed h-consumer_03",
    ]
    assert controller.exitstatus == 1  # a process failed


def test_only_the_consumer_program_has_group_steps(steps: list[str]) -> None:
    steps.append("warning: idle")
    controller = run("consumer", result())
    assert controller.lines[-2:] == ["consumer: numprocs=1 in /x/conf.d/consumer.conf", "consumer: warning: idle"]
    assert "consumer: unchanged, 1 -> 1 processes" in controller.lines
    controller = run("other 2", result(program="other", after=2, started=["other_02"]))
    assert not any("idle" in line for line in controller.lines)
    assert controller.exitstatus == 0


def test_help_scale() -> None:
    controller = FakeController(FakeProxy(result()))
    ctl.make_ctlplugin(controller).help_scale()
    assert controller.lines[0].startswith("scale <program> [N]")
    with pytest.raises(ValueError, match="unknown keys: colour"):
        ctl.make_ctlplugin(controller, colour="red")


# -- the steps after a scale ------------------------------------------------------------------------


def test_after_scale_releases_the_stopped_and_warns_about_idle_consumers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, list[str]]] = []
    monkeypatch.setattr(kafka_admin, "topic_partition_count", lambda settings, topic=None: 3)
    monkeypatch.setattr(kafka_admin, "release_static_members",
                        lambda settings, lib, names: calls.append((lib, names)) or [f"removed {n}" for n in names])
    settings = Settings(kafka_topic="orders")
    assert kafka_admin.after_scale(settings, Path("/jars"), ["consumer_05"], 5) == [
        "group: removed consumer_05",
        "warning: 5 consumers but orders has 3 partitions: 2 will idle. "
        "Add partitions: bin/pipeline topic partitions 5",
    ]
    assert calls == [(Path("/jars"), ["consumer_05"])]
    assert kafka_admin.after_scale(settings, Path("/jars"), [], 3) == []
    monkeypatch.setattr(kafka_admin, "topic_partition_count", lambda settings, topic=None: None)  # Kafka down
    assert kafka_admin.after_scale(settings, Path("/jars"), [], 9) == []


def test_supervisorctl_reads_the_settings_of_its_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[str, Path]] = []
    monkeypatch.setattr(kafka_admin, "after_scale",
                        lambda settings, lib, stopped, n: seen.append((settings.kafka_topic, lib)) or ["ok"])
    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "env"))
    (tmp_path / "env").write_text(f"KAFKA_TOPIC=from-file\nPIPELINE_PREFIX={tmp_path}\n")
    assert REAL_AFTER_SCALE([], 1) == ["ok"]
    assert seen == [("from-file", tmp_path / "kafka" / "lib")]

    (tmp_path / "env").write_text("CONSUMER_BATCH_SIZE=-5\n")
    assert REAL_AFTER_SCALE([], 1) == [
        "group and partitions not checked: CONSUMER_BATCH_SIZE: expected 1..100000, got -5"]


def test_no_kafka_client_means_no_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pipeline.kafka_admin", None)  # the import fails
    monkeypatch.delattr(pipeline, "kafka_admin")
    assert REAL_AFTER_SCALE(["consumer_02"], 1) == []


# -- the rpc interface's checks ---------------------------------------------------------------------


class FakeOptions:
    mood = SupervisorStates.RUNNING
    here = "/nowhere"


class FakeSupervisord:
    def __init__(self) -> None:
        self.options = FakeOptions()
        consumer = type("Group", (), {"config": ProcessGroupConfig(self.options, "consumer", 999, [])})()
        odd = type("Group", (), {"config": object()})()
        self.process_groups = {"consumer": consumer, "odd": odd}


@pytest.fixture
def namespace(monkeypatch: pytest.MonkeyPatch) -> rpc.ScaleNamespaceRPCInterface:
    monkeypatch.setattr(rpc.events, "subscribe", lambda event, callback: None)  # no global subscription
    return rpc.make_rpcinterface(FakeSupervisord(), max_count="8")


@pytest.mark.parametrize(("args", "fault", "text"), [
    (("consumer", -1), Faults.BAD_ARGUMENTS, "count -1 is outside 0..8"),
    (("consumer", 9), Faults.BAD_ARGUMENTS, "count 9 is outside 0..8"),
    (("consumer", "3"), Faults.BAD_ARGUMENTS, "count must be an integer, got '3'"),
    (("consumer", True), Faults.BAD_ARGUMENTS, "count must be an integer, got True"),
    (("nosuch", 1), Faults.BAD_NAME, "no such program: 'nosuch'"),
    ((3, 1), Faults.BAD_NAME, "no such program: 3"),
    (("odd", 1), Faults.BAD_NAME, "odd is not a plain [program:x] group"),
])
def test_bad_rpc_arguments_are_faults_before_anything_is_read(
        namespace: rpc.ScaleNamespaceRPCInterface, args: tuple[Any, ...], fault: int, text: str) -> None:
    with pytest.raises(RPCError) as info:
        namespace.scale(*args)
    assert info.value.code == fault and text in info.value.text


def test_no_scale_while_supervisord_shuts_down(namespace: rpc.ScaleNamespaceRPCInterface) -> None:
    namespace.supervisord.options.mood = SupervisorStates.SHUTDOWN
    with pytest.raises(RPCError) as info:
        namespace.scale("consumer", 1)
    assert info.value.code == Faults.SHUTDOWN_STATE


@pytest.mark.parametrize(("config", "message"), [
    ({"colour": "red"}, "unknown keys: colour"),
    ({"max_count": "many"}, "max_count must be an integer"),
    ({"max_count": "0"}, "max_count must be >= 1"),
])
def test_bad_rpcinterface_config_is_refused(config: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rpc.make_rpcinterface(FakeSupervisord(), **config)


def test_process_order_sorts_by_the_trailing_number() -> None:
    names = ["consumer_10", "consumer_9", "consumer_01", "other"]
    assert sorted(names, key=rpc.process_order) == ["other", "consumer_01", "consumer_9", "consumer_10"]
