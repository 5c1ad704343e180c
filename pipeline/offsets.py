"""Which offsets may be committed, and which the broker has confirmed. Pure bookkeeping.

An offset enters `done` only after its batch was written to PostgreSQL and its dead letters were
confirmed by the broker (invariant 3); commits are then sent asynchronously, and `confirmed` follows
the broker's answers. Whatever is done but not confirmed is sent again: when the consumer is idle, and
synchronously before partitions are revoked and at shutdown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TP = tuple[str, int]  # (topic, partition)


class OffsetTracker:
    def __init__(self) -> None:
        self.owned: set[TP] = set()
        self.done: dict[TP, int] = {}
        self.confirmed: dict[TP, int] = {}

    def assigned(self, partitions: Iterable[TP]) -> None:
        self.owned.update(partitions)

    def processed(self, next_offsets: Mapping[TP, int]) -> None:
        """A batch is fully handled: its next offsets may be committed (for partitions still owned)."""
        for tp, offset in next_offsets.items():
            if tp in self.owned and offset > self.done.get(tp, -1):
                self.done[tp] = offset

    def to_commit(self, only: Iterable[TP] | None = None) -> dict[TP, int]:
        """Done but not yet confirmed (optionally only for the given partitions)."""
        keep = None if only is None else set(only)
        return {tp: o for tp, o in self.done.items()
                if o != self.confirmed.get(tp) and (keep is None or tp in keep)}

    def confirm(self, offsets: Mapping[TP, int]) -> None:
        """The broker stored these offsets."""
        for tp, offset in offsets.items():
            if tp in self.owned and offset > self.confirmed.get(tp, -1):
                self.confirmed[tp] = offset

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions this member no longer owns: their next owner starts from the last commit."""
        for tp in partitions:
            self.owned.discard(tp)
            self.done.pop(tp, None)
            self.confirmed.pop(tp, None)
