"""bin/setup: idempotent, and a damaged Kafka install is detected and repaired."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration


def test_rerun_verifies_and_a_deleted_jar_is_restored(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    shutil.copytree(REPO / ".local" / "kafka" / "lib", prefix / "kafka" / "lib")
    env = {**os.environ, "PIPELINE_PREFIX": str(prefix)}

    again = subprocess.run([REPO / "bin" / "setup"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "jars verified against deploy/kafka/jars.manifest" in again.stdout
    assert "up to date with requirements.txt" in again.stdout

    victim = prefix / "kafka" / "lib" / "zookeeper-3.8.4.jar"
    victim.unlink()
    (prefix / "kafka" / "lib" / "kafka-clients-3.9.2.jar").write_bytes(b"truncated")
    repair = subprocess.run([REPO / "bin" / "setup"], env=env, capture_output=True, text=True, timeout=600)
    assert repair.returncode == 0, repair.stderr
    assert "jars installed and verified" in repair.stdout
    assert victim.exists()
    check = subprocess.run(["sha256sum", "--quiet", "--strict", "-c", REPO / "deploy" / "kafka" / "jars.manifest"],
                           cwd=prefix / "kafka" / "lib", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
