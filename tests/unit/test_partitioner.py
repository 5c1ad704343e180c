"""murmur2 / partition_for against Kafka's own test vectors (the Java client itself: tests/integration)."""

from __future__ import annotations

import pytest

from pipeline.mockdata import CUSTOMERS
from pipeline.partitioning import murmur2, partition_for

# From Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java (testMurmur2).
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS.items(), ids=lambda v: repr(v))
def test_murmur2_kafka_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_for_range_and_errors() -> None:
    assert partition_for(b"", 1) == 0
    assert all(0 <= partition_for(c.customer_id.encode(), 7) < 7 for c in CUSTOMERS)
    assert {partition_for(c.customer_id.encode(), 3) for c in CUSTOMERS} == {0, 1, 2}
    with pytest.raises(ValueError, match="num_partitions"):
        partition_for(b"x", 0)
