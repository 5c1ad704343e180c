"""The chaos runner's short run, as CI runs it: two minutes of faults against a whole dev-mode host
(its own keeper, servers and supervisord), then the runner's own proof from the topic. The long run's
table is in docs/reliability.md."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, wait_for
from tests.supervised import Supervised, keeper_host

pytestmark = [pytest.mark.supervisor, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Supervised]:
    with keeper_host(tmp_path) as sup:
        yield sup


def test_two_minutes_of_faults_lose_double_and_reorder_nothing(host: Supervised) -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "chaos", "--minutes", "2", "--rate", "300",
                          "--seed", "7"], env={**host.env, "COLUMNS": "160"}, cwd=REPO, capture_output=True,
                         text=True, timeout=840)
    print(out.stdout)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "verdict: OK, nothing lost, nothing doubled, nothing reordered" in out.stdout
    faults = dict(re.findall(r"(\w+) (\d+)", out.stdout.split("faults: ", 1)[1].splitlines()[0]))
    assert set(faults) == {"kill_consumer", "scale", "stall_consumer", "stop_postgres", "kill_broker",
                           "kill_supervisord"}, faults
    assert "VIOLATED" not in out.stdout
    generated = re.search(r"generated ids in the topic +│ (\d+) exactly once", out.stdout)
    assert generated and int(generated[1]) > 20_000, out.stdout
    assert "the supervised producer started again" in out.stdout
    wait_for(lambda: host.info()["producer"]["statename"] == "RUNNING", 30, "the supervised producer RUNNING")
