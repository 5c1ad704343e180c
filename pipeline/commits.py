"""Offset commits: what is sent to the broker, when, and what to do with its answer.

Batches are committed asynchronously (the loop does not wait for the broker); offsets done but not yet
confirmed are sent again while the loop is idle; before partitions are handed over and at shutdown the
commit is synchronous. Which offsets may be sent at all is `OffsetTracker`'s business (invariant 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from loguru import logger

from pipeline.errors import CommitNotSent
from pipeline.offsets import TP, OffsetTracker


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    """When offsets are sent: after a batch, unless offsets went out less than `every` seconds ago (then
    the next batch, or the idle loop, sends them); unconfirmed ones again at most every `resend_every`
    seconds while idle. At low rates batches are a few orders each, and an offset commit per batch
    costs the broker more than the orders themselves."""

    resend_every: float = 1.0
    every: float = 0.0

    def __post_init__(self) -> None:
        if not self.resend_every > 0 or not 0 <= self.every <= self.resend_every:
            raise ValueError(f"need resend_every > 0 and 0 <= every <= resend_every, got {self}")


class OffsetCommitter(Protocol):
    """The consumer's commit calls. Both raise CommitNotSent when the request cannot be sent."""

    def commit_async(self, offsets: dict[TP, int]) -> None:
        """Send the offsets; the broker's answer comes back through `Commits.answered`."""

    def commit_sync(self, offsets: dict[TP, int]) -> dict[TP, int]:
        """Send the offsets and wait; returns those the broker stored."""


class Commits:
    """Commit bookkeeping for one consumer: the tracker, the policy, the clock of the last attempt."""

    def __init__(self, committer: OffsetCommitter, policy: CommitPolicy = CommitPolicy(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.offsets = OffsetTracker()
        self._committer = committer
        self._policy = policy
        self._clock = clock
        self._last_try = float("-inf")
        self._tried: dict[TP, int] = {}  # the offsets of the last try

    def batch_done(self, next_offsets: dict[TP, int]) -> None:
        """A batch is written and dead-lettered: its offsets are committed (asynchronously)."""
        self.offsets.processed(next_offsets)
        if self._clock() - self._last_try >= self._policy.every:
            self.send()

    def send(self) -> None:
        """Send the offsets of everything written and dead-lettered; confirmations come in `answered`."""
        offsets = self.offsets.to_commit()
        if not offsets:
            return
        self._last_try = self._clock()
        self._tried = offsets
        try:
            self._committer.commit_async(offsets)
        except CommitNotSent as e:  # e.g. no coordinator right now: the idle loop tries again
            logger.info("offset commit not sent ({}); retried shortly", e)

    def resend_if_due(self) -> None:
        """Offsets not yet sent or not yet confirmed, sent while no new batch comes: at most once per
        `resend_every`, and no later than `every` after a batch left them waiting."""
        since = self._clock() - self._last_try
        if since >= self._policy.resend_every or (since >= self._policy.every and self._waiting()):
            self.send()

    def _waiting(self) -> bool:
        """Done offsets not tried yet (rather than tried and unconfirmed: those wait for `resend_every`)."""
        return any(self._tried.get(tp) != o for tp, o in self.offsets.to_commit().items())

    def answered(self, stored: dict[TP, int], refusal: str | None) -> None:
        """The broker's answer to an asynchronous commit."""
        if refusal is None:
            self.offsets.confirm(stored)
        else:  # mid-rebalance refusals (ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS...): sent again when idle
            logger.info("offset commit refused ({}); retried shortly", refusal)

    def commit_now(self, only: Iterable[TP] | None = None) -> None:
        """Synchronous commit, before partitions are handed over and at shutdown."""
        offsets = self.offsets.to_commit(only)
        if not offsets:
            return
        try:
            stored = self._committer.commit_sync(offsets)
        except CommitNotSent as e:
            logger.warning("commit failed ({}); the next owner redoes that work, the DB dedupes", e)
            return
        self.offsets.confirm(stored)
        logger.info("committed {}", {f"{t}[{p}]": o for (t, p), o in stored.items()})
        if len(stored) < len(offsets):
            logger.warning("commit refused for {} partition(s); the next owner redoes that work",
                           len(offsets) - len(stored))
