"""Offset bookkeeping: only processed offsets are committable; confirmed ones are not sent again."""

from __future__ import annotations

from pipeline.offsets import OffsetTracker


def test_only_unconfirmed_processed_offsets_are_committed() -> None:
    t = OffsetTracker()
    assert t.to_commit() == {}
    t.assigned([("t", 0), ("t", 1)])
    t.processed({("t", 0): 10, ("t", 1): 5})
    t.processed({("t", 0): 8})  # an older batch never moves an offset back
    assert t.to_commit() == {("t", 0): 10, ("t", 1): 5}
    t.confirm({("t", 0): 10})
    assert t.to_commit() == {("t", 1): 5}
    assert t.to_commit(only={("t", 0)}) == {}
    t.processed({("t", 0): 12})
    t.confirm({("t", 0): 10})  # a late answer for an older commit changes nothing
    assert t.to_commit() == {("t", 0): 12, ("t", 1): 5}


def test_forgotten_partitions_are_never_committed() -> None:
    t = OffsetTracker()
    t.assigned([("t", 0), ("t", 1)])
    t.processed({("t", 0): 10, ("t", 1): 5})
    t.forget({("t", 1)})
    assert t.to_commit() == {("t", 0): 10}
    # A batch or a commit answer arriving after the revocation changes nothing for that partition.
    t.processed({("t", 1): 9})
    t.confirm({("t", 1): 9})
    assert t.to_commit() == {("t", 0): 10} and ("t", 1) not in t.confirmed
