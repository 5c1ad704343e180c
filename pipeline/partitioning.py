"""Kafka's default key partitioning, to predict which partition a customer's orders land on.

Matches the Java client (``Utils.murmur2`` + ``Utils.toPositive``) and librdkafka's
``murmur2_random`` partitioner for non-null keys. Pure Python; for tooling and tests.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: 32-bit MurmurHash2, returned as a signed Java int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    body = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:body]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    # Java's switch falls through: 3 -> 2 -> 1.
    if rest == 3:
        h ^= data[body + 2] << 16
    if rest >= 2:
        h ^= data[body + 1] << 8
    if rest >= 1:
        h ^= data[body]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, num_partitions: int) -> int:
    """The partition the Java client (and librdkafka ``murmur2_random``) picks for a non-null key."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
