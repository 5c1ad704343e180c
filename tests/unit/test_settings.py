"""Settings: typed, frozen, and a bad value is an error naming its variable."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.errors import SettingsError
from pipeline.services import ServiceError, ServicesConfig
from pipeline.settings import REPO, Settings, client_id, parse_host_settings, parse_settings


def test_defaults_match_the_contract() -> None:
    s = parse_settings({})
    assert (s.kafka_topic, s.kafka_dlq_topic, s.consumer_group_id) == ("food-orders", "food-orders.dlq",
                                                                      "order-processors")
    assert (s.kafka_partitions, s.consumer_batch_size, s.log_format) == (3, 5000, "text")
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
    ("CONSUMER_COMMIT_INTERVAL_MS", "5000"),
    ("METRICS_ENABLED", "maybe"),
    ("METRICS_PORT", "99999"),
    ("METRICS_ADDRESS", "localhost:9"),
    ("ALERT_WEBHOOK_URL", "ftp://x/y"),
    ("ALERT_WEBHOOK_TIMEOUT_S", "0"),
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


def test_host_settings_use_the_same_parsers_and_defaults() -> None:
    host = parse_host_settings({"PIPELINE_PREFIX": "/opt/food-orders", "PIPELINE_STATE_DIR": "./var",
                                "PIPELINE_KAFKA_MODE": "KRaft"})
    assert host.kafka_lib == Path("/opt/food-orders/kafka/lib")
    assert host.state_dir == REPO / "var" and host.supervisord_conf == REPO / "supervisord.conf"
    assert host.kafka_mode == "kraft"
    assert (host.kafka_bootstrap_servers, host.database_url) == (Settings().kafka_bootstrap_servers,
                                                                 Settings().database_url)
    for name, value in [("PIPELINE_KAFKA_MODE", "docker"), ("PIPELINE_ZOOKEEPER_PORT", "70000"),
                        ("DATABASE_URL", "mysql://x@y/z"), ("KAFKA_BOOTSTRAP_SERVERS", "localhost")]:
        with pytest.raises(SettingsError, match=f"^{name}: "):
            parse_host_settings({name: value})


def test_services_config_is_derived_from_the_host_settings() -> None:
    host = parse_host_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092,other:9092",
                                "DATABASE_URL": "postgresql://pipe:s%40cret@127.0.0.1:15432/shop"})
    c = ServicesConfig.from_host(host)
    assert (c.kafka_port, c.postgres_port, c.db_user, c.db_password, c.db_name) == (
        19092, 15432, "pipe", "s@cret", "shop")
    assert c.database_url == "postgresql://pipe:s@cret@127.0.0.1:15432/shop"
    with pytest.raises(ServiceError, match="database name 'Shop-1' must match"):
        ServicesConfig.from_host(parse_host_settings({"DATABASE_URL": "postgresql://u@h:1/Shop-1"}))


@pytest.fixture
def broken_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An env file with one bad value, and a host with nothing running (state and supervisord in tmp_path)."""
    (tmp_path / "supervisord.conf").write_text("[unix_http_server]\nfile = %(here)s/run/supervisor.sock\n")
    (tmp_path / "env").write_text(f"CONSUMER_BATCH_SIZE=-5\nPIPELINE_STATE_DIR={tmp_path / 'state'}\n"
                                  f"PIPELINE_SUPERVISORD_CONF={tmp_path / 'supervisord.conf'}\n")
    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "env"))
    for name in ("CONSUMER_BATCH_SIZE", "PIPELINE_STATE_DIR", "PIPELINE_SUPERVISORD_CONF", "PIPELINE_HOST_INSTALL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_down_works_with_a_broken_value_and_names_it(broken_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["down"]) == 0
    out, err = capsys.readouterr()
    assert "supervisord: not running" in out and "postgres   not running" in out
    assert "CONSUMER_BATCH_SIZE: expected 1..100000, got -5" in err


def test_commands_that_need_the_broken_value_refuse_it(broken_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 2
    assert capsys.readouterr().err == "error: CONSUMER_BATCH_SIZE: expected 1..100000, got -5\n"
    assert cli.main(["logs"]) == 1  # needs only where supervisord logs
    assert capsys.readouterr().err == f"error: no logs under {broken_env / 'var' / 'log'}\n"


def test_metrics_and_alert_settings() -> None:
    s = parse_settings({"METRICS_ENABLED": "off", "METRICS_ADDRESS": "0.0.0.0", "METRICS_PORT": "9100",
                        "ALERT_WEBHOOK_URL": "https://hooks.example/x", "ALERT_WEBHOOK_TIMEOUT_S": "2.5"})
    assert (s.metrics_enabled, s.metrics_address, s.metrics_port) == (False, "0.0.0.0", 9100)
    assert (s.alert_webhook_url, s.alert_webhook_timeout_s) == ("https://hooks.example/x", 2.5)
    d = parse_settings({})
    assert (d.metrics_enabled, d.metrics_address, d.metrics_port, d.alert_webhook_url) == (True, "127.0.0.1", 9478,
                                                                                           None)


def test_certificates_named_in_the_settings_must_be_readable(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    with pytest.raises(SettingsError, match=rf"KAFKA_SSL_CA_LOCATION: cannot read {ca} \(No such file"):
        parse_settings({"KAFKA_SSL_CA_LOCATION": str(ca)})
    with pytest.raises(SettingsError, match=r"DATABASE_URL \(sslrootcert\): cannot read"):
        parse_settings({"DATABASE_URL": f"postgresql://u:p@db:5433/orders?sslmode=verify-full&sslrootcert={ca}"})
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = parse_settings({"KAFKA_SSL_CA_LOCATION": str(ca),
                        "DATABASE_URL": f"postgresql://u:p@db:5433/orders?sslmode=verify-full&sslrootcert={ca}"})
    assert s.kafka_common()["ssl.ca.location"] == str(ca)
