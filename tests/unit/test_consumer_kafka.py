"""The confluent-kafka adapter of the consumer loop, without a broker: commit answers and refusals are
translated into what the loop understands (a fenced instance stops it; other refusals are retried)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, TopicPartition

from pipeline.consumer import KafkaConsumer
from pipeline.offsets import TP
from pipeline.settings import Settings


class Listener:
    def __init__(self) -> None:
        self.answers: list[tuple[dict[TP, int], str | None]] = []

    def assigned(self, partitions: list[TP]) -> None: ...
    def revoked(self, partitions: list[TP]) -> None: ...
    def lost(self, partitions: list[TP]) -> None: ...

    def committed(self, stored: dict[TP, int], refusal: str | None) -> None:
        self.answers.append((stored, refusal))


@pytest.fixture
def kafka() -> Iterator[tuple[KafkaConsumer, Listener]]:
    # Nothing listens on port 1: the client never reaches a broker, and nothing here needs one.
    consumer = KafkaConsumer(Settings(kafka_bootstrap_servers="127.0.0.1:1", consumer_instance_id="h-consumer_01"),
                             "test")
    listener = Listener()
    consumer._listener = listener
    yield consumer, listener
    consumer.close()


def test_commit_answers_reach_the_loop_as_partition_pairs(kafka: tuple[KafkaConsumer, Listener]) -> None:
    consumer, listener = kafka
    consumer._on_commit(None, [TopicPartition("t", 0, 5), TopicPartition("t", 1, 9)])
    consumer._on_commit(KafkaError(KafkaError.ILLEGAL_GENERATION), [TopicPartition("t", 0, 6)])
    consumer._on_commit(KafkaError(KafkaError._NO_OFFSET), [])
    assert listener.answers[0] == ({("t", 0): 5, ("t", 1): 9}, None)
    assert listener.answers[1][0] == {} and listener.answers[1][1]
    assert len(listener.answers) == 2 and consumer.fatal_error() is None


def test_a_fenced_instance_is_fatal(kafka: tuple[KafkaConsumer, Listener]) -> None:
    consumer, listener = kafka
    consumer._on_commit(KafkaError(KafkaError.FENCED_INSTANCE_ID), [])
    assert (consumer.fatal_error() or "").startswith("the group coordinator fenced group.instance.id h-consumer_01 "
                                                     "(FENCED_INSTANCE_ID on an offset commit)")
    assert listener.answers == []
