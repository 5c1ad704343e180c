"""Settings: typed, frozen, and a bad value is an error naming its variable."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from pipeline.errors import SettingsError
from pipeline.settings import Settings, client_id, parse_settings


def test_defaults_match_the_contract() -> None:
    s = parse_settings({})
    assert (s.kafka_topic, s.kafka_dlq_topic, s.consumer_group_id) == ("food-orders", "food-orders.dlq",
                                                                      "order-processors")
    assert (s.kafka_partitions, s.consumer_batch_size, s.log_format) == (3, 500, "text")
    assert s.consumer_instance_id is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kafka_topic = "x"  # type: ignore[misc]


def test_values_are_parsed_and_typed() -> None:
    s = parse_settings({"PRODUCER_RATE": "2.5", "KAFKA_PARTITIONS": "6", "LOG_LEVEL": "debug",
                        "LOG_FORMAT": "JSON", "CONSUMER_BATCH_TIMEOUT_MS": "50"})
    assert (s.producer_rate, s.kafka_partitions, s.log_level, s.log_format) == (2.5, 6, "DEBUG", "json")
    assert s.consumer_batch_timeout_ms == 50


@pytest.mark.parametrize(("name", "value"), [
    ("KAFKA_PARTITIONS", "three"),
    ("KAFKA_PARTITIONS", "0"),
    ("CONSUMER_BATCH_SIZE", "-5"),
    ("PRODUCER_RATE", "fast"),
    ("PRODUCER_RATE", "-1"),
    ("LOG_FORMAT", "xml"),
    ("LOG_LEVEL", "LOUD"),
    ("KAFKA_TOPIC", "bad topic!"),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
    ("DATABASE_URL", "mysql://x@y/z"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("CONSUMER_SESSION_TIMEOUT_MS", "100"),
])
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: "):
        parse_settings({name: value})


def test_dlq_must_differ_from_the_topic() -> None:
    with pytest.raises(SettingsError, match="KAFKA_DLQ_TOPIC"):
        parse_settings({"KAFKA_TOPIC": "a", "KAFKA_DLQ_TOPIC": "a"})


def test_sasl_passthrough_and_its_requirements() -> None:
    s = parse_settings({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                        "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"})
    assert s.kafka_common()["security.protocol"] == "SASL_SSL"
    assert s.kafka_common()["sasl.mechanism"] == "SCRAM-SHA-512"
    with pytest.raises(SettingsError, match="KAFKA_SASL_MECHANISM"):
        parse_settings({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})


def test_client_id_is_prefix_hostname_pid() -> None:
    assert client_id("food-orders", "host-a", 4242) == "food-orders-host-a-4242"
    assert Settings(client_id_prefix="p").client_id() == f"p-{socket.gethostname()}-{__import__('os').getpid()}"


def test_static_membership_id_follows_the_supervisor_slot() -> None:
    s = parse_settings({"SUPERVISOR_PROCESS_NAME": "consumer_03"})
    assert s.consumer_instance_id == f"{socket.gethostname()}-consumer_03"
    assert parse_settings({"CONSUMER_INSTANCE_ID": "fixed-1"}).consumer_instance_id == "fixed-1"
