"""The consumer loop against in-memory Kafka, store and DLQ: every path the subprocess tests take (crash
points, PostgreSQL or DLQ down, rebalances inside consume, lost partitions, shutdown, fencing), in
milliseconds. Time is a fake clock that the fake consumer advances when it waits."""

from __future__ import annotations

import pytest

from pipeline.commits import CommitPolicy
from pipeline.consumer_loop import LoopPolicy
from pipeline.errors import FatalError
from pipeline.orders import DB_REJECTED
from tests.unit.consumer_world import P0, P1, P2, TOPIC, Crash, World


@pytest.fixture(params=[False, True], ids=["serial", "read-ahead"])
def world(request: pytest.FixtureRequest) -> World:
    w = World(read_ahead=request.param)
    w.kafka.assign(P0, P1, P2)
    return w


def test_valid_orders_stored_invalid_dead_lettered_then_committed_in_that_order(world: World) -> None:
    orders = world.produce(P0, 5) + world.produce(P1, 3)
    world.broker.append(P0, b"CUST-00001", b"{not json", [("trace", b"abc")])
    refused = world.produce(P2)[0]
    world.store.refuse.add(refused.order_id)
    world.drain()

    assert set(world.store.orders) == {o.order_id for o in orders}
    assert [(d.partition, d.offset, d.why.code) for d in world.dlq.letters] == [(0, 5, "invalid_json"),
                                                                                 (2, 0, DB_REJECTED)]
    bad = world.dlq.letters[0]
    assert (bad.key, bad.value, bad.headers, bad.topic) == (b"CUST-00001", b"{not json", [("trace", b"abc")], TOPIC)
    assert world.dlq.letters[1].value == world.broker.logs[P2][0].value()
    assert world.broker.committed == {P0: 6, P1: 3, P2: 1}
    assert world.broker.journal == ["write 9", "dlq 2", f"commit {[(P0, 6), (P1, 3), (P2, 1)]}"]
    assert world.loop.totals == {"batches": 1, "inserted": 8, "duplicates": 0, "dead": 2}


def test_a_batch_is_what_is_fetched_up_to_the_batch_size(world: World) -> None:
    world.produce(P0, 25)
    world.steps(1)
    assert world.broker.journal[0] == "write 10"
    world.drain()
    assert len(world.store.orders) == 25 and world.loop.totals["batches"] == 3


@pytest.mark.parametrize("point", ["after_db_commit", "after_dlq"])
def test_a_crash_before_the_commit_redelivers_and_doubles_nothing(world: World, point: str) -> None:
    world.produce(P0, 6)
    world.broker.append(P1, b"CUST-00001", b"nope")
    world.crash_at = point
    with pytest.raises(Crash):
        world.drain()
    assert len(world.store.orders) == 6 and world.broker.committed == {}
    assert len(world.dlq.letters) == (1 if point == "after_dlq" else 0)

    world.crash_at = None
    world.start()  # supervisord restarts the process
    world.kafka.assign(P0, P1, P2)
    world.drain()
    assert len(world.store.orders) == 6
    assert world.loop.totals == {"batches": 1, "inserted": 0, "duplicates": 6, "dead": 1}
    assert world.broker.committed == {P0: 6, P1: 1}


def test_database_down_pauses_keeps_polling_commits_nothing_and_resumes_alone(world: World, log: list[str]) -> None:
    world.produce(P0, 3)
    world.drain()
    committed = dict(world.broker.committed)
    world.store.down = True
    more = world.produce(P1, 4)
    started = world.clock.now
    world.steps(3)
    assert world.loop.degraded and world.kafka.paused == {P0, P1, P2}
    assert world.kafka.consumed_while_paused >= 3, "polling must go on while paused"
    assert world.broker.committed == committed
    # the backoff doubles (read-ahead adds its short waits for the next batch while each retry runs)
    assert world.clock.now - started == pytest.approx(0.5 + 1.0 + 2.0, abs=0.01)
    assert len(world.loop.pending or []) == 4
    assert sum("pausing 3 partition(s), keeping the batch of 4" in line for line in log) == 1

    world.store.down = False
    world.drain()
    assert not world.loop.degraded and world.kafka.paused == set()
    assert {o.order_id for o in more} <= set(world.store.orders)
    assert world.broker.committed == {P0: 3, P1: 4}
    assert any("dependency back; resumed 3 partition(s)" in line for line in log)


def test_dlq_down_keeps_the_batch_and_the_rewrite_is_a_redelivery(world: World) -> None:
    world.produce(P0, 2)
    world.broker.append(P0, b"CUST-00001", b"nope")
    world.dlq.down = True
    world.steps(2)
    assert world.loop.degraded and len(world.store.orders) == 2 and world.broker.committed == {}
    world.dlq.down = False
    world.drain()
    assert world.loop.totals == {"batches": 1, "inserted": 0, "duplicates": 2, "dead": 1}
    assert world.broker.committed == {P0: 3}


def test_a_partition_lost_while_paused_comes_back_resumed_after_recovery(world: World) -> None:
    world.produce(P0, 2)
    world.store.down = True
    world.steps(1)
    world.kafka.lose(P2)
    world.steps(1)
    assert world.kafka.paused == {P0, P1, P2}  # the client still remembers P2's pause
    world.store.down = False
    world.drain()
    assert world.kafka.paused == {P2} and world.kafka.assignment() == [P0, P1]
    world.kafka.assign(P2)
    world.produce(P2, 3)
    world.drain()
    assert world.kafka.paused == set() and world.broker.committed[P2] == 3


def test_a_partition_assigned_while_degraded_is_paused_too(world: World) -> None:
    world.kafka.revoke(P2)
    world.produce(P0)
    world.store.down = True
    world.steps(1)
    world.kafka.assign(P2)
    world.produce(P2, 2)
    world.steps(1)
    assert world.kafka.paused == {P0, P1, P2} and len(world.loop.pending or []) == 1


def test_revoke_commits_what_is_written_first_even_if_async_commits_were_refused(world: World) -> None:
    world.kafka.refusal = "REBALANCE_IN_PROGRESS"
    world.produce(P0, 2)
    world.produce(P1, 2)
    world.steps(1)
    assert world.broker.committed == {}
    world.kafka.revoke(P1)
    world.steps(1)
    assert world.broker.committed == {P1: 2}
    assert world.broker.journal[-1] == f"commit sync {[(P1, 2)]}"


def test_records_of_a_partition_revoked_inside_consume_are_dropped(world: World) -> None:
    world.produce(P0, 2)
    world.produce(P1, 2)
    world.kafka.revoke(P1, after_fetch=True)  # records already fetched when the callback runs
    world.steps(3)
    assert len(world.store.orders) == 2 and world.broker.committed == {P0: 2}
    assert world.broker.journal[0] == "write 2"


def test_a_pending_batch_loses_the_records_of_revoked_and_lost_partitions(world: World) -> None:
    world.produce(P0, 1)
    world.produce(P1, 2)
    world.produce(P2, 3)
    world.store.down = True
    world.steps(1)
    world.kafka.revoke(P1)
    world.kafka.lose(P2)
    world.steps(1)
    assert len(world.loop.pending or []) == 1
    world.store.down = False
    world.steps(2)
    assert len(world.store.orders) == 1 and world.broker.committed == {P0: 1}


def test_lost_partitions_are_never_committed(world: World) -> None:
    world.kafka.refusal = "ILLEGAL_GENERATION"
    world.produce(P0, 2)
    world.produce(P2, 2)
    world.steps(1)
    world.kafka.lose(P2)
    world.kafka.refusal = None
    world.steps(3)
    world.clock.now += 1.0
    world.steps(2)
    assert world.broker.committed == {P0: 2}


def test_unconfirmed_offsets_are_sent_again_when_idle_at_most_once_per_period(world: World, log: list[str]) -> None:
    world.kafka.unreachable = True
    world.produce(P0, 2)
    world.steps(1)
    assert any("offset commit not sent (no coordinator)" in line for line in log)
    world.kafka.unreachable = False
    world.steps(1)  # idle, but the last try was only 0.1 s ago
    assert world.broker.committed == {}
    world.steps(10)
    assert world.broker.committed == {P0: 2}
    assert sum(line.startswith("commit") for line in world.broker.journal) == 1


def test_shutdown_commits_what_is_done_and_leaves_the_pending_batch_uncommitted(world: World, log: list[str]) -> None:
    world.kafka.refusal = "REBALANCE_IN_PROGRESS"
    world.produce(P0, 2)
    world.steps(1)
    world.kafka.refusal = None
    world.store.down = True
    world.produce(P1, 3)
    world.steps(1)
    world.loop.stopping = True
    world.loop.run()  # returns at once: the stop was requested
    assert world.broker.committed == {P0: 2}
    assert world.kafka.closed and world.dlq.closed and world.store.closed
    assert any("stopping with 3 unwritten message(s)" in line for line in log)
    assert any(line.startswith("INFO stopped: batches 1, inserted 2") for line in log)


def test_a_stop_ends_the_paused_polling_early(world: World) -> None:
    world.produce(P0)
    world.store.down = True
    world.kafka.events.append((False, lambda: setattr(world.loop, "stopping", True)))
    started = world.clock.now
    world.steps(1)
    assert world.clock.now - started < 0.5


def test_a_fenced_or_fatal_client_stops_the_loop(world: World) -> None:
    world.steps(1)
    world.kafka.fatal = "another process uses group.instance.id host-consumer_01"
    with pytest.raises(FatalError, match=r"group\.instance\.id"):
        world.steps(1)


def test_stats_are_logged_every_ten_seconds(world: World, log: list[str]) -> None:
    world.produce(P0, 2)
    world.steps(1)
    assert not any("batches 1" in line for line in log)
    world.clock.now += 10
    world.steps(1)
    assert "INFO batches 1, orders inserted 2, redelivered 0, dead-lettered 0" in log


def test_at_low_rates_offsets_go_out_at_most_once_per_commit_interval_and_none_is_left_behind(
        world: World) -> None:
    world.start(batch_size=10, commit_every=0.2)
    world.kafka.assign(P0, P1, P2)
    for _ in range(5):  # five one-order batches within 0.2 s
        world.produce(P0)
        world.steps(1)
        world.clock.now += 0.01
    commits = [line for line in world.broker.journal if line.startswith("commit")]
    assert commits == [f"commit {[(P0, 1)]}"], "one commit for the first batch, the rest wait"
    world.steps(1)  # idle: nothing sent yet, the interval has not passed
    world.clock.now += 0.2
    world.steps(2)  # idle after the interval: what waited goes out, and is confirmed
    assert world.broker.committed == {P0: 5}
    assert [line for line in world.broker.journal if line.startswith("commit")][1:] == [f"commit {[(P0, 5)]}"]


# -- read-ahead: the next batch is consumed while PostgreSQL writes this one -------------------------


@pytest.fixture
def ahead() -> World:
    w = World(read_ahead=True)
    w.kafka.assign(P0, P1, P2)
    return w


def test_the_next_batch_is_read_during_the_write_but_written_only_after_the_commit(ahead: World) -> None:
    ahead.produce(P0, 25)
    ahead.steps(1)
    assert ahead.broker.journal == ["write 10", "dlq 0", f"commit {[(P0, 10)]}"]
    assert len(ahead.loop.ahead or []) == 10, "batch 2 is consumed while batch 1 is written"
    ahead.drain()
    assert len(ahead.store.orders) == 25 and ahead.loop.totals["batches"] == 3
    assert ahead.broker.journal == ["write 10", "dlq 0", f"commit {[(P0, 10)]}",
                                    "(encoded ahead)", "write 10", "dlq 0", f"commit {[(P0, 20)]}",
                                    "(encoded ahead)", "write 5", "dlq 0", f"commit {[(P0, 25)]}"]


def test_a_failed_write_keeps_what_was_read_ahead_in_the_batch(ahead: World) -> None:
    orders = ahead.produce(P0, 8) + ahead.produce(P1, 8)
    ahead.store.down = True
    ahead.steps(1)
    assert ahead.loop.degraded and ahead.loop.ahead is None
    assert len(ahead.loop.pending or []) == 16, "the read-ahead records join the kept batch"
    ahead.store.down = False
    ahead.drain()
    assert set(ahead.store.orders) == {o.order_id for o in orders}
    assert ahead.loop.totals == {"batches": 1, "inserted": 16, "duplicates": 0, "dead": 0}
    assert ahead.broker.committed == {P0: 8, P1: 8}


def test_a_partition_revoked_during_the_write_leaves_the_read_ahead(ahead: World) -> None:
    ahead.produce(P0, 10)
    ahead.produce(P1, 15)
    ahead.steps(1)  # writes P0's 10; reads P1's first 10 ahead
    ahead.kafka.revoke(P1, after_fetch=True)  # during the read-ahead of step 2
    ahead.steps(3)
    # The write in flight finishes (the next owner finds those 10 as redeliveries); the 5 read ahead
    # after the revocation are not written, and nothing of P1 is committed by this member.
    assert [line for line in ahead.broker.journal if line.startswith("write")] == ["write 10", "write 10"]
    assert len(ahead.store.orders) == 20
    assert P1 not in ahead.broker.committed, "a revoked partition's records are the next owner's"
    assert ahead.broker.committed == {P0: 10}


def test_a_stop_leaves_the_read_ahead_uncommitted(ahead: World, log: list[str]) -> None:
    ahead.produce(P0, 15)
    ahead.steps(1)
    ahead.loop.stopping = True
    ahead.loop.run()
    assert ahead.broker.committed == {P0: 10}
    assert any("stopping with 5 unwritten message(s)" in line for line in log)


def test_policies_check_themselves() -> None:
    with pytest.raises(ValueError):
        LoopPolicy(0, 0.1)
    with pytest.raises(ValueError):
        LoopPolicy(10, 0.1, backoff_start=2, backoff_max=1)
    with pytest.raises(ValueError):
        CommitPolicy(resend_every=0)
    with pytest.raises(ValueError):
        CommitPolicy(resend_every=1.0, every=2.0)
