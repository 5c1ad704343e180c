"""Operating the pipeline through supervisord: scale, restarts, a second host, status and logs.

Every test runs a real supervisord with the real producer and consumers against the test servers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, PipelineEnv, wait_for
from tests.supervised import Supervised

pytestmark = [pytest.mark.integration, pytest.mark.supervisor]


@pytest.fixture
def host(pipe: PipelineEnv, tmp_path: Path) -> Iterator[Supervised]:
    sup = Supervised(tmp_path / "host", pipe)
    try:
        yield sup
    finally:
        sup.stop()


def owners(pipe: PipelineEnv, members: int, partitions: int = 3) -> dict[str, list[int]]:
    """client.id -> partitions, once `members` members exist and every partition has an owner."""
    def settled() -> dict[str, list[int]] | None:
        got = pipe.members()
        owned = sorted(p for _, parts in got for p in parts)
        return dict(got) if len(got) == members and owned == list(range(partitions)) else None
    return wait_for(settled, 90, f"{members} members owning {partitions} partitions")


def by_pid(members: dict[str, list[int]]) -> dict[int, list[int]]:
    return {int(cid.rsplit("-", 1)[1]): parts for cid, parts in members.items()}


def test_scale_changes_only_the_difference_while_orders_keep_flowing(host: Supervised, pipe: PipelineEnv) -> None:
    host.start()
    wait_for(lambda: pipe.row_count() > 200, 60, "orders flowing")
    first_pid = wait_for(lambda: host.pids().get("consumer_01"), 30, "consumer_01 RUNNING")
    assert by_pid(owners(pipe, 1)) == {first_pid: [0, 1, 2]}

    out = host.ctl("scale", "consumer", "3", check=True).stdout
    assert "consumer_02" in out and "consumer_03" in out
    max_lag = 0
    members = None
    deadline = time.monotonic() + 90
    while members is None and time.monotonic() < deadline:
        max_lag = max(max_lag, pipe.lag())
        got = dict(pipe.members())
        if len(got) == 3 and sorted(p for parts in got.values() for p in parts) == [0, 1, 2]:
            members = got
        time.sleep(0.5)
    assert members is not None, "three members never owned one partition each"
    pids = host.pids()
    assert pids["consumer_01"] == first_pid  # the running consumer was not touched
    assert sorted(by_pid(members)) == sorted(pids[f"consumer_0{i}"] for i in (1, 2, 3))
    assert all(len(parts) == 1 for parts in members.values())
    assert max_lag < 2_000, f"the running consumer stalled during the scale (lag reached {max_lag})"

    out = host.ctl("scale", "consumer", "5", check=True).stdout
    assert "will idle" in out and "bin/pipeline topic partitions" in out
    five = owners(pipe, 5)
    assert sorted(len(p) for p in five.values()) == [0, 0, 1, 1, 1]

    out = host.ctl("scale", "consumer", "1", check=True).stdout
    host_name = os.uname().nodename
    assert all(f"group: removed {host_name}-consumer_0{i}" in out for i in (2, 3, 4, 5)), out
    info = host.info()
    assert sorted(n for n in info if n.startswith("consumer")) == ["consumer_01"]
    assert info["consumer_01"]["pid"] == first_pid
    for n in ("consumer_02", "consumer_03", "consumer_04", "consumer_05"):
        log = host.log(n)
        assert "SIGTERM received" in log and "stopped: batches" in log
        # the consumer's warnings when its final (synchronous) commit fails or is refused
        assert "commit failed (" not in log and "commit refused for" not in log, f"{n}: final commit lost"
    supervisord_log = (host.root / "var/log/supervisord.log").read_text()
    assert all(f"stopped: consumer_0{i} (exit status 0)" in supervisord_log for i in (2, 3, 4, 5))
    # The stopped static members were removed from the group, so their partitions move at once.
    assert by_pid(owners(pipe, 1)) == {first_pid: [0, 1, 2]}
    assert host.ctl("reread").stdout.strip() == "No config updates to processes"

    host.rpc().supervisor.stopProcess("producer", True)
    produced = sum(pipe.end_offsets().values())
    wait_for(lambda: pipe.row_count() == produced, 90, "every order stored")
    wait_for(lambda: pipe.lag() == 0, 60, "lag 0")
    assert pipe.stats_consistent()


def test_restarts_keep_partitions_count_and_orders(host: Supervised, pipe: PipelineEnv) -> None:
    (host.root / "conf.d" / "consumer.conf").write_text(
        (host.root / "conf.d" / "consumer.conf").read_text().replace("numprocs = 1", "numprocs = 3"))
    host.start()
    before = by_pid(owners(pipe, 3))
    pids = host.pids()
    own_01 = before[pids["consumer_01"]]

    # Static membership: a stop + start within the session timeout gets the same partition back and
    # the other members are not revoked.
    others_log = {n: len(host.log(n)) for n in ("consumer_02", "consumer_03")}
    host.ctl("stop", "consumer:consumer_01", check=True)
    host.ctl("start", "consumer:consumer_01", check=True)
    new_pid = wait_for(lambda: host.pids().get("consumer_01"), 30, "consumer_01 RUNNING")
    assert new_pid != pids["consumer_01"]
    # The restarted process took its partition straight back (no rebalance). The coordinator keeps
    # the static member's old client.id until the next rebalance; its instance id is the stable name.
    wait_for(lambda: f"[{own_01[0]}]" in host.log("consumer_01").split(f"consumer_01:{new_pid}]", 1)[-1],
             30, "the restarted consumer_01 to get its partition back")
    assert f"{pipe.topic}[{own_01[0]}]" in host.log("consumer_01").split(f"[consumer_01:{new_pid}] assigned")[1]
    members = json.loads(host.pipeline("status", "--json").stdout)["group"]["members"]
    by_instance = {m["instance_id"]: m for m in members}
    assert by_instance[f"{os.uname().nodename}-consumer_01"]["partitions"] == own_01
    assert by_instance[f"{os.uname().nodename}-consumer_01"]["pid"] == new_pid  # the pid now, from supervisord
    for n, seen in others_log.items():
        assert "revoked" not in host.log(n)[seen:], f"{n} lost partitions while consumer_01 restarted"

    # kill -9: supervisord restarts it, nothing is lost.
    killed = host.pids()["consumer_02"]
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: host.pids().get("consumer_02") not in (None, killed), 30, "consumer_02 restarted")
    # supervisord restart: the persisted count comes back.
    host.stop()
    host.start()
    wait_for(lambda: sorted(n for n in host.pids() if n.startswith("consumer")) == [
        "consumer_01", "consumer_02", "consumer_03"], 30, "the persisted three consumers")
    owners(pipe, 3)
    host.rpc().supervisor.stopProcess("producer", True)
    produced = sum(pipe.end_offsets().values())
    wait_for(lambda: pipe.row_count() == produced, 90, "every order stored")
    assert pipe.db("SELECT count(*) - count(DISTINCT order_id) FROM orders") == [(0,)]
    assert pipe.stats_consistent()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_second_host_joins_the_same_group(pipe: PipelineEnv, tmp_path: Path) -> None:
    here = Supervised(tmp_path / "a", pipe, consumers=2)
    there = Supervised(tmp_path / "b", pipe, consumers=2, PRODUCER_MAX_ORDERS="1")
    try:
        here.start()
        there.start(prefix=["unshare", "--uts", "sh", "-c", 'hostname other-host && exec "$@"', "sh"])
        members = owners(pipe, 4)
        hosts = {cid.rsplit("-", 1)[0].removeprefix("food-orders-") for cid in members}
        assert hosts == {os.uname().nodename, "other-host"}
        busy_hosts = {cid.rsplit("-", 1)[0] for cid, parts in members.items() if parts}
        assert len(busy_hosts) == 2, f"partitions should spread over both hosts: {members}"
        instances = {m["instance_id"] for m in json.loads(here.pipeline("status", "--json").stdout)["group"]["members"]}
        assert {"other-host-consumer_01", "other-host-consumer_02"} <= instances
    finally:
        there.stop()
        here.stop()


def test_status_json_and_log_following(host: Supervised, pipe: PipelineEnv) -> None:
    (host.root / "conf.d" / "consumer.conf").write_text(
        (host.root / "conf.d" / "consumer.conf").read_text().replace("numprocs = 1", "numprocs = 2"))
    host.start()
    members = owners(pipe, 2)
    wait_for(lambda: pipe.row_count() > 100, 60, "orders flowing")
    programs = {"consumer_01", "consumer_02", "producer", "metrics"}
    wait_for(lambda: programs <= set(host.pids()), 30, "the programs RUNNING (past startsecs)")
    snap = json.loads(host.pipeline("status", "--json").stdout)
    assert {"consumer:consumer_01", "consumer:consumer_02", "producer", "metrics"} <= {
        p["name"] for p in snap["processes"]}
    assert all(p["state"] == "RUNNING" and p["pid"] for p in snap["processes"])
    assert {m["client_id"]: m["partitions"] for m in snap["group"]["members"]} == members
    pids = host.pids()
    assert {m["process"]: m["pid"] for m in snap["group"]["members"]} == {
        n: pids[n] for n in ("consumer_01", "consumer_02")}
    assert [r["partition"] for r in snap["lag"]] == [0, 1, 2]
    assert snap["topic"]["partitions"] == 3
    assert snap["database"]["orders"] > 100 and snap["database"]["stats_mismatches"] == 0
    assert snap["database"]["unique_customers"] <= 100

    tail = subprocess.Popen([str(REPO / "bin" / "supervisorctl"), "tail", "-f", "producer"], env=host.env,
                            stdout=subprocess.PIPE, text=True)
    logs = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "logs", "-f", "-n", "0"], env=host.env, cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "produced" not in line and time.monotonic() < deadline:
            line = tail.stdout.readline()  # type: ignore[union-attr]
        assert "produced" in line, "supervisorctl tail -f showed no new producer line"
        seen: set[str] = set()
        deadline = time.monotonic() + 40
        while len(seen) < 3 and time.monotonic() < deadline:
            line = logs.stdout.readline()  # type: ignore[union-attr]
            seen.add(line.split("|", 1)[0].strip())
        assert {"producer", "consumer_01", "consumer_02"} <= seen
    finally:
        tail.kill()
        logs.kill()
