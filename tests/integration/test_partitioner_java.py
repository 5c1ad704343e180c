"""partition_for must agree with Kafka's Java client, bit for bit: needs Java and the Kafka jars."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.mockdata import CUSTOMERS
from pipeline.partitioning import murmur2, partition_for
from pipeline.settings import parse_host_settings

pytestmark = pytest.mark.integration

JAVA_PROG = """
import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.utils.Utils;

public class Prog {
    public static void main(String[] args) {
        for (String key : args) {
            int h = Utils.murmur2(key.getBytes(StandardCharsets.UTF_8));
            System.out.println(key + " " + h + " " + Utils.toPositive(h) % 3 + " " + Utils.toPositive(h) % 7);
        }
    }
}
"""


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if java is None:
        pytest.fail(
            "java not found (JAVA_HOME or PATH): a JDK 17 is required to check partitioning against Kafka"
        )
    return java


def _kafka_lib() -> Path:
    lib = parse_host_settings(os.environ).kafka_lib
    if not any(lib.glob("kafka-clients-*.jar")):
        pytest.fail(f"no kafka-clients jar in {lib}: install Kafka (bin/setup) or set PIPELINE_PREFIX")
    return lib


def test_customer_partitions_match_java_client(tmp_path: Path) -> None:
    java, lib = _java(), _kafka_lib()
    (tmp_path / "Prog.java").write_text(JAVA_PROG)
    keys = [c.customer_id for c in CUSTOMERS]
    proc = subprocess.run(
        [java, "-cp", f"{lib}/*", "Prog.java", *keys],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"java failed:\n{proc.stderr}"
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == keys
    for key, h, p3, p7 in rows:
        assert murmur2(key.encode()) == int(h), key
        assert partition_for(key.encode(), 3) == int(p3), key
        assert partition_for(key.encode(), 7) == int(p7), key
