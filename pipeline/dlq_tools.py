"""`bin/pipeline dlq show|replay`: read the dead-letter topic, and send letters back once their cause is fixed.

A letter is the original record (key, value, headers) plus our headers (pipeline.dlq). `show` lists
letters, newest last. `replay` produces letters back to their source topic with the original key,
value and headers and a `replay_count` header one higher, so a letter that fails again comes back to
the DLQ with its count and is not replayed past `--max-replays`. Its position is a consumer group of
its own (`{CONSUMER_GROUP_ID}-dlq-replay[-{code}]`), committed after each confirmed batch: a replay
that stops half-way resumes where it stopped. A letter replayed twice (a crash between produce and
commit) is a harmless redelivery for the consumer: same order id, same content.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from pipeline.errors import FatalError
from pipeline.logs import kafka_logger
from pipeline.settings import Settings

# Headers the consumer adds to a letter (pipeline.dlq); everything else is the original record's.
OURS = frozenset({"error", "error_detail", "source_topic", "source_partition", "source_offset",
                  "consumer_client_id", "value_truncated", "original_size", "original_headers_dropped",
                  "original_key_dropped"})
REPLAY_COUNT = "replay_count"
BATCH = 500

Header = tuple[str, str | bytes | None]


@dataclass(frozen=True)
class Letter:
    """One message of the dead-letter topic, with our headers parsed."""

    partition: int  # in the DLQ
    offset: int  # in the DLQ
    timestamp: float  # unix seconds (the letter's Kafka timestamp)
    key: bytes | None
    value: bytes | None
    original_headers: list[Header]
    error: str
    detail: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    replay_count: int
    truncated: bool  # the value (and maybe key, headers) was dropped: too big for the broker

    def as_json(self) -> dict[str, Any]:
        return {"dlq_partition": self.partition, "dlq_offset": self.offset,
                "time": datetime.fromtimestamp(self.timestamp, UTC).isoformat(), "error": self.error,
                "detail": self.detail, "source": f"{self.source_topic}[{self.source_partition}]@{self.source_offset}",
                "replay_count": self.replay_count, "key": _text(self.key), "value": _text(self.value),
                "headers": {k: _text(v) for k, v in self.original_headers if k != REPLAY_COUNT},
                "truncated": self.truncated}


def _text(data: str | bytes | None) -> str | None:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def parse_letter(partition: int, offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None,
                 headers: Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None
                 ) -> Letter:
    """A DLQ message as a Letter. Pure."""
    ours: dict[str, str] = {}
    original: list[Header] = []
    replays: list[str] = []
    pairs = headers.items() if isinstance(headers, Mapping) else headers or []
    for name, raw in pairs:
        data = raw.encode() if isinstance(raw, str) else raw
        if name in OURS:
            ours[name] = (data or b"").decode("utf-8", "replace")
        else:
            original.append((name, data))
            if name == REPLAY_COUNT:
                replays.append((data or b"").decode("ascii", "replace"))
    return Letter(partition, offset, timestamp_ms / 1000, key, value, original, ours.get("error", "unknown"),
                  ours.get("error_detail", ""), ours.get("source_topic", ""),
                  _int(ours.get("source_partition")), _int(ours.get("source_offset")),
                  (_int(replays[-1]) or 0) if replays else 0,
                  ours.get("value_truncated") == "1")


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def replay_headers(letter: Letter) -> list[Header]:
    """The original headers, with `replay_count` set one higher. Pure."""
    kept = [(k, v) for k, v in letter.original_headers if k != REPLAY_COUNT]
    return [*kept, (REPLAY_COUNT, str(letter.replay_count + 1).encode())]


def why_not(letter: Letter, max_replays: int) -> str | None:
    """Why a letter must not be replayed, or None. Pure."""
    if letter.truncated:
        return "its value was dropped (too big for the broker)"
    if not letter.source_topic:
        return "it names no source topic"
    if letter.replay_count >= max_replays:
        return f"replayed {letter.replay_count} time(s) already (--max-replays {max_replays})"
    return None


_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an ISO-8601 time, or `30m`, `2h`, `1d` ago. Pure (given `now`)."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return now - timedelta(**{unit: int(m[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FatalError(f"--since: expected an ISO-8601 time or 30m / 2h / 1d, got {text!r}") from None
    return when if when.tzinfo else when.astimezone()


# -- reading the DLQ ------------------------------------------------------------------------------


@dataclass
class DlqReader:
    """Reads the DLQ from given positions up to the end it has when the read starts (so it ends)."""

    settings: Settings
    group: str
    consumer: Any = field(init=False)

    def __post_init__(self) -> None:
        self.consumer = Consumer({**self.settings.kafka_common(), "group.id": self.group,
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                  "client.id": f"{self.settings.client_id()}-dlq", "log_level": 3},
                                 logger=kafka_logger())

    def partitions(self) -> list[int]:
        topic = self.settings.kafka_dlq_topic
        try:
            meta = self.consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as e:
            raise FatalError(f"Kafka unreachable: {e.args[0].str()}") from None
        if meta is None or meta.error is not None:
            raise FatalError(f"dead-letter topic {topic} does not exist (no letter was ever written)")
        return sorted(meta.partitions)

    def start_positions(self, since: datetime | None, committed: bool) -> dict[int, int]:
        topic, parts = self.settings.kafka_dlq_topic, self.partitions()
        if since is not None:
            ms = int(since.timestamp() * 1000)
            found = self.consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=10)
            return {tp.partition: tp.offset if tp.offset >= 0 else self._end(tp.partition) for tp in found}
        if committed:
            done = self.consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            return {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in done}
        return dict.fromkeys(parts, OFFSET_BEGINNING)

    def ends(self) -> dict[int, int]:
        """Each DLQ partition's end offset now."""
        return {p: self._end(p) for p in self.partitions()}

    def _end(self, partition: int) -> int:
        return int(self.consumer.get_watermark_offsets(
            TopicPartition(self.settings.kafka_dlq_topic, partition), timeout=10)[1])

    def read(self, start: dict[int, int]) -> Iterator[list[Letter]]:
        """Batches of letters from `start` to the end as of now."""
        topic = self.settings.kafka_dlq_topic
        ends = {p: self._end(p) for p in start}
        lows = {p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in start}
        todo = {p for p in start if ends[p] > max(lows[p], start[p] if start[p] >= 0 else lows[p])}
        if not todo:
            return
        self.consumer.assign([TopicPartition(topic, p, start[p]) for p in todo])
        idle_until = time.monotonic() + 30
        while todo:
            batch = []
            for msg in self.consumer.consume(BATCH, 1.0):
                if msg.error() is not None:
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise FatalError(f"reading {topic}: {msg.error().str()}")
                    continue
                p, o = msg.partition(), msg.offset()
                if p not in todo or o >= ends[p]:
                    continue
                batch.append(parse_letter(p, o, msg.timestamp()[1], msg.key(), msg.value(), msg.headers()))
                if o + 1 >= ends[p]:
                    todo.discard(p)
            if batch:
                idle_until = time.monotonic() + 30
                yield batch
            elif time.monotonic() > idle_until:
                raise FatalError(f"reading {topic}: no message for 30s before its end offsets {ends}")

    def commit(self, letters: Sequence[Letter]) -> None:
        last: dict[int, int] = {}
        for letter in letters:
            last[letter.partition] = max(last.get(letter.partition, -1), letter.offset)
        self.consumer.commit(offsets=[TopicPartition(self.settings.kafka_dlq_topic, p, o + 1)
                                      for p, o in last.items()], asynchronous=False)

    def close(self) -> None:
        self.consumer.close()


def show(settings: Settings, error: str | None, since: datetime | None, limit: int) -> list[Letter]:
    """The last `limit` letters (of one error code, since a time), oldest first. Never commits."""
    reader = DlqReader(settings, f"{settings.consumer_group_id}-dlq-show")
    try:
        found: list[Letter] = []
        for batch in reader.read(reader.start_positions(since, committed=False)):
            found.extend(x for x in batch if error is None or x.error == error)
            del found[:-limit]
        return found
    finally:
        reader.close()


@dataclass
class ReplayReport:
    replayed: dict[str, int] = field(default_factory=dict)  # error code -> letters replayed
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> letters
    other_errors: int = 0  # letters of another error code, passed over

    def lines(self, execute: bool, group: str) -> list[str]:
        verb = "replayed" if execute else "would replay"
        total = sum(self.replayed.values())
        out = [f"{verb} {total} letter(s)" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(self.replayed.items()))})"
                                              if total else "")]
        out += [f"not replayed: {n} letter(s): {why}" for why, n in sorted(self.skipped.items())]
        if self.other_errors:
            out.append(f"passed over: {self.other_errors} letter(s) of other error codes")
        out.append(f"position saved in consumer group {group}" if execute else
                   "dry run: nothing produced, position not moved (--execute to replay)")
        return out


def replay(settings: Settings, error: str | None, execute: bool, max_replays: int) -> tuple[ReplayReport, str]:
    """Replay letters from the replay group's position to the current end of the DLQ."""
    group = f"{settings.consumer_group_id}-dlq-replay" + (f"-{error}" if error else "")
    reader = DlqReader(settings, group)
    producer = Producer({**settings.kafka_common(), "client.id": f"{settings.client_id()}-replay",
                         "enable.idempotence": True, "acks": "all", "message.timeout.ms": 30_000},
                        logger=kafka_logger())
    report = ReplayReport()
    try:
        topics = reader.consumer.list_topics(timeout=10).topics
        for batch in reader.read(reader.start_positions(None, committed=True)):
            gone = next((x for x in batch if (error is None or x.error == error) and x.source_topic
                         and x.source_topic not in topics), None)
            if gone is not None:
                raise FatalError(f"letter {gone.partition}@{gone.offset}: its source topic {gone.source_topic} does "
                                 "not exist; replay stopped before this batch (the position is kept: create the "
                                 "topic and replay again)")
            sent: list[KafkaError | None] = []

            def delivered(err: KafkaError | None, _msg: Any, answers: list[KafkaError | None] = sent) -> None:
                answers.append(err)

            for letter in batch:
                if error is not None and letter.error != error:
                    report.other_errors += 1
                    continue
                reason = why_not(letter, max_replays)
                if reason is not None:
                    report.skipped[reason] = report.skipped.get(reason, 0) + 1
                    continue
                report.replayed[letter.error] = report.replayed.get(letter.error, 0) + 1
                if execute:
                    producer.produce(letter.source_topic, letter.value, letter.key, headers=replay_headers(letter),
                                     on_delivery=delivered)
            if execute:
                if producer.flush(60) or any(err is not None for err in sent):
                    failed = next((err.str() for err in sent if err is not None), "not confirmed within 60s")
                    raise FatalError(f"replay stopped, the batch was not delivered ({failed}); the position was "
                                     "not moved, so a new replay resends it (duplicates are harmless)")
                reader.commit(batch)
    finally:
        reader.close()
        producer.flush(10)
    return report, group
