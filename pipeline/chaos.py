"""`bin/pipeline chaos`: faults against a running pipeline (`bin/pipeline up`) for M minutes, then proof
from Kafka itself that nothing was lost, doubled or reordered.

While orders flow at `--rate` (from a producer of the runner's own, which records every id it
generates; the supervised producer is held stopped meanwhile), the runner injects one fault at a time,
each kind once first in a random order, then picked at random (a seeded generator):

- kill -9 of a random consumer (supervisord restarts it);
- scale the consumers to a random count in 1..6 (as `bin/pipeline scale` does);
- SIGSTOP of a consumer for longer than the session timeout, then SIGCONT (its partitions move away
  and come back);
- PostgreSQL stopped hard (SIGQUIT to the postmaster: immediate shutdown; the keeper starts it again);
- kill -9 of the Kafka broker (the keeper starts it again once ZooKeeper has let go of it);
- kill -9 of supervisord (the keeper stops its orphans and starts it again);
- now and then an invalid message, whose position is recorded.

Then it stops producing, restores the consumer count, waits for the group to catch up and checks:
every valid order id in the topic is in PostgreSQL exactly once and none is extra, `customer_stats`
equals the rows' aggregates customer by customer, the DLQ holds a letter for every invalid message
injected and for nothing else of the run, each customer's rows keep `created_at` in `kafka_offset`
order, and every id the runner generated is in the topic exactly once. A table of verdicts; exit 1
on any violation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
import psycopg2
from confluent_kafka import KafkaException, Producer

from pipeline.audit import topic_order_ids, wait_for_no_lag
from pipeline.dlq_tools import DlqReader
from pipeline.errors import FatalError
from pipeline.kafka_admin import after_scale, ensure_topics
from pipeline.logs import kafka_logger
from pipeline.observe import STATS_MISMATCHES
from pipeline.ops import SupervisordPaths, supervisor_rpc, supervisord_running
from pipeline.producer import OrderProducer
from pipeline.settings import HostSettings, Settings

FAULTS = ("kill_consumer", "scale", "stall_consumer", "stop_postgres", "kill_broker", "kill_supervisord")
WEIGHTS = (4, 3, 1, 1, 1, 1)
PAUSE = (2.0, 8.0)  # seconds between faults, drawn uniformly
INVALID_EVERY = 5.0  # seconds between injected invalid messages


@dataclass
class Injected:
    positions: set[tuple[int, int]] = field(default_factory=set)  # (partition, offset) of invalid messages

    def delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.positions.add((msg.partition(), msg.offset()))


@dataclass
class Check:
    name: str
    expected: str
    found: str
    ok: bool


class RecordingProducer(OrderProducer):
    """The pipeline's producer, remembering every order id it generates."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        super().__init__(settings, client_id)
        self.generated: list[str] = []
        generate = self.generator.next_order_json

        def recording(order_id: str, created_at: datetime) -> tuple[bytes, bytes]:
            self.generated.append(order_id)
            return generate(order_id, created_at)

        self.generator.next_order_json = recording  # type: ignore[method-assign]


class Chaos:
    def __init__(self, settings: Settings, host: HostSettings, paths: SupervisordPaths, seed: int,
                 say: Callable[[str], None]) -> None:
        self.settings, self.host, self.paths = settings, host, paths
        self.rng = random.Random(seed)
        self.say = say
        self.counts: Counter[str] = Counter()
        self.injected = Injected()

    # -- what is running -------------------------------------------------------------------------

    def rpc(self) -> Any:
        return supervisor_rpc(self.paths)

    def consumers(self) -> dict[str, int]:
        """RUNNING consumer processes: name -> pid (empty while supervisord is down)."""
        try:
            info = self.rpc().supervisor.getAllProcessInfo()
        except OSError:
            return {}
        return {p["name"]: p["pid"] for p in info if p["group"] == "consumer" and p["statename"] == "RUNNING"}

    def server_pid(self, name: str) -> int | None:
        try:
            pid = int((self.host.state_dir / "run" / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def wait(self, what: str, ready: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise FatalError(f"chaos: {what} not back within {timeout:.0f}s; stopping")
            time.sleep(0.5)

    def hold_producer_stopped(self) -> None:
        """The supervised producer would mix its orders into the ordering check: stopped while we run."""
        try:
            info = self.rpc().supervisor.getProcessInfo("producer")
            if info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                self.rpc().supervisor.stopProcess("producer")
        except (OSError, Exception):  # noqa: BLE001 - supervisord restarting: asked again next turn
            pass

    # -- the faults ------------------------------------------------------------------------------

    def kill_consumer(self) -> str:
        running = self.consumers()
        if not running:
            return "no consumer running"
        name = self.rng.choice(sorted(running))
        os.kill(running[name], signal.SIGKILL)
        return f"kill -9 {name} (pid {running[name]})"

    def scale(self) -> str:
        count = self.rng.randint(1, 6)
        result = self.rpc().pipeline.scale("consumer", count)
        after_scale(self.settings, self.host.kafka_lib, result["stopped"], result["after"])
        return f"scale {result['before']} -> {result['after']}"

    def stall_consumer(self) -> str:
        running = self.consumers()
        if not running:
            return "no consumer running"
        name = self.rng.choice(sorted(running))
        seconds = self.settings.consumer_session_timeout_ms / 1000 + 4
        os.kill(running[name], signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(running[name], signal.SIGCONT)
        return f"SIGSTOP {name} for {seconds:.0f}s, then SIGCONT"

    def stop_postgres(self) -> str:
        pid = self.server_pid("postgres")
        if pid is None:
            return "PostgreSQL not running"
        os.kill(pid, signal.SIGQUIT)  # the postmaster's immediate shutdown
        self.wait("PostgreSQL", lambda: self.server_pid("postgres") not in (None, pid))
        return f"PostgreSQL stopped hard (pid {pid}) and started again"

    def kill_broker(self) -> str:
        """A random broker of the host's (kafka, kafka-2, ... in a local cluster)."""
        names = sorted(p.stem for p in (self.host.state_dir / "run").glob("kafka*.pid"))
        name = self.rng.choice(names) if names else "kafka"
        pid = self.server_pid(name)
        if pid is None:
            return f"{name} not running"
        os.kill(pid, signal.SIGKILL)
        self.wait(name, lambda: self.server_pid(name) not in (None, pid), timeout=180)
        return f"kill -9 {name} (pid {pid}) and started again"

    def kill_supervisord(self) -> str:
        pid = int(self.rpc().supervisor.getPID())
        os.kill(pid, signal.SIGKILL)
        self.wait("supervisord", lambda: supervisord_running(self.paths) and bool(self.consumers()), timeout=180)
        self.hold_producer_stopped()
        return f"kill -9 supervisord (pid {pid}) and started again"

    def inject_invalid(self, producer: Producer) -> None:
        """One invalid message; its position is recorded on delivery. Refused for now (a broker that
        just restarted may not know the topic yet): none this time."""
        n = len(self.injected.positions)
        with contextlib.suppress(KafkaException, BufferError):
            producer.produce(self.settings.kafka_topic, f'{{"order_id": "chaos-invalid-{n}"'.encode(),
                             f"CUST-{self.rng.randint(1, 100):05d}".encode(), on_delivery=self.injected.delivered)

    # -- the run ---------------------------------------------------------------------------------

    def run(self, minutes: float, rate: float) -> list[Check]:
        if not supervisord_running(self.paths):
            raise FatalError("chaos: supervisord is not running (bin/pipeline up first)")
        for name in ("zookeeper", "kafka", "postgres"):
            if self.host.kafka_mode == "kraft" and name == "zookeeper":
                continue
            if self.server_pid(name) is None:
                raise FatalError(f"chaos: {name} is not running under the keeper (bin/pipeline up first)")
        ensure_topics(self.settings)
        info = self.rpc().supervisor.getAllProcessInfo()
        start_consumers = sum(p["group"] == "consumer" for p in info) or 1
        producer_was = next((p["statename"] for p in info if p["name"] == "producer"), "STOPPED")
        start_dlq = self._dlq_end()
        self.hold_producer_stopped()
        producer = RecordingProducer(dataclasses.replace(self.settings, producer_rate=rate, producer_max_orders=0),
                                     f"{self.settings.client_id()}-chaos")
        feeder = threading.Thread(target=producer.run, name="chaos-producer", daemon=True)
        feeder.start()
        invalid = Producer({**self.settings.kafka_common(), "enable.idempotence": True}, logger=kafka_logger())
        deadline = time.monotonic() + minutes * 60
        next_invalid = time.monotonic()
        first = self.rng.sample(FAULTS, len(FAULTS))  # every kind once, in a random order, then at random
        self.say(f"chaos for {minutes:g} min at {rate:g} orders/s")
        try:
            while time.monotonic() < deadline:
                if time.monotonic() >= next_invalid:
                    self.inject_invalid(invalid)
                    next_invalid = time.monotonic() + INVALID_EVERY
                invalid.poll(0)
                fault = first.pop() if first else self.rng.choices(FAULTS, WEIGHTS)[0]
                self.say(f"{fault}: {getattr(self, fault)()}")
                self.counts[fault] += 1
                self.hold_producer_stopped()
                time.sleep(self.rng.uniform(*PAUSE))
            self.say(f"restoring {start_consumers} consumer(s); waiting for the group to catch up")
        finally:
            producer.stopping = True
            feeder.join(120)
            invalid.flush(60)
            self.restore(start_consumers, producer_was)
        lag = wait_for_no_lag(self.settings, 300)
        checks = self.verify(producer.generated, start_dlq)
        checks.insert(0, Check("group caught up", "lag 0", f"lag {lag}", lag == 0))
        if producer_was in ("RUNNING", "STARTING"):
            self.rpc().supervisor.startProcess("producer", False)
            self.say("the supervised producer started again")
        return checks

    def restore(self, consumers: int, producer_was: str) -> None:
        """The consumer count as it was (also when the run itself failed: then the producer too)."""
        self.wait("supervisord", lambda: supervisord_running(self.paths), timeout=180)
        result = self.rpc().pipeline.scale("consumer", consumers)
        after_scale(self.settings, self.host.kafka_lib, result["stopped"], result["after"])
        if sys.exc_info()[0] is not None and producer_was in ("RUNNING", "STARTING"):
            self.rpc().supervisor.startProcess("producer", False)

    def _dlq_end(self) -> dict[int, int]:
        reader = DlqReader(self.settings, f"{self.settings.consumer_group_id}-chaos")
        try:
            return reader.ends()
        finally:
            reader.close()

    # -- the proof -------------------------------------------------------------------------------

    def verify(self, generated: list[str], dlq_start: dict[int, int]) -> list[Check]:
        topic = topic_order_ids(self.settings, timeout=300)
        with psycopg2.connect(self.settings.database_url, connect_timeout=10) as conn, conn.cursor() as cur:
            cur.execute("SELECT order_id, kafka_partition, kafka_offset FROM orders")
            rows = cur.fetchall()
            cur.execute(STATS_MISMATCHES)
            mismatches = int(cur.fetchone()[0])  # type: ignore[index]
            cur.execute("""SELECT count(*) FROM (
                               SELECT created_at < lag(created_at) OVER (PARTITION BY customer_id
                                                                         ORDER BY kafka_partition, kafka_offset) AS back
                               FROM orders WHERE order_id = ANY(%s)) t WHERE back""", (generated,))
            reordered = int(cur.fetchone()[0])  # type: ignore[index]
        conn.close()
        retained = {order_id for order_id, partition, offset in rows if offset >= topic.first_offsets.get(partition, 0)}
        stored = Counter(order_id for order_id, _, _ in rows)
        missing = set(topic.ids) - set(stored)
        extra = retained - set(topic.ids)
        twice = [i for i, n in stored.items() if n > 1]
        gen = Counter(generated)
        lost = [i for i in gen if topic.ids.get(i, 0) == 0]
        doubled = [i for i in gen if topic.ids.get(i, 0) > 1 or gen[i] > 1]
        letters = self._letters_since(dlq_start)
        injected = self.injected.positions

        def sample(ids: list[str] | set[str]) -> str:
            return f" e.g. {', '.join(sorted(ids)[:3])}" if ids else ""

        return [
            Check("orders missing from PostgreSQL", "0", f"{len(missing)}{sample(missing)}", not missing),
            Check("orders in PostgreSQL not in the topic", "0", f"{len(extra)}{sample(extra)}", not extra),
            Check("orders stored twice", "0", str(len(twice)), not twice),
            Check("customer_stats = the rows' aggregates", "0 customers differ", f"{mismatches} differ",
                  mismatches == 0),
            Check("created_at in kafka_offset order per customer", "0 out of order", f"{reordered} out of order",
                  reordered == 0),
            Check("generated ids in the topic", f"{len(gen)} exactly once",
                  f"{len(gen) - len(lost) - len(doubled)} once, {len(lost)} missing, {len(doubled)} more than once",
                  not lost and not doubled),
            Check("dead letters of the run = invalid messages injected", f"{len(injected)} positions",
                  f"{len(letters & injected)} of them, {len(letters - injected)} others",
                  letters == injected),
        ]

    def _letters_since(self, start: dict[int, int]) -> set[tuple[int, int]]:
        """Source positions of the letters written since the run began (a letter sent twice counts once)."""
        reader = DlqReader(self.settings, f"{self.settings.consumer_group_id}-chaos")
        try:
            return {(x.source_partition or 0, x.source_offset) for batch in reader.read(start) for x in batch
                    if x.source_topic == self.settings.kafka_topic and x.source_offset is not None}
        finally:
            reader.close()


def say(text: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {text}", flush=True)


def run(settings: Settings, host: HostSettings, paths: SupervisordPaths, minutes: float, rate: float,
        seed: int | None) -> tuple[list[Check], Counter[str]]:
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 31)
    say(f"seed {seed} (repeat this run's faults with --seed {seed})")
    chaos = Chaos(settings, host, paths, seed, say)
    checks = chaos.run(minutes, rate)
    return checks, chaos.counts

