"""Typed, frozen settings, parsed once from the environment (and `.env`) in each entry point."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from dotenv import dotenv_values

from pipeline.errors import SettingsError

# The checkout (an editable install) or, on an installed host, the venv's site-packages: relative paths
# are resolved from it; an installed host names its files with absolute PIPELINE_ENV_FILE, PIPELINE_PREFIX
# and PIPELINE_SUPERVISORD_CONF.
REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
N = TypeVar("N", int, float)

LogFormat = Literal["text", "json"]
KafkaMode = Literal["zookeeper", "kraft"]
_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Kafka client security passthrough: our variable -> librdkafka property.
_KAFKA_SECURITY_VARS = {
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}


@dataclass(frozen=True)
class Settings:
    """Every knob of the producer and the consumers. Names mirror the environment variables."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "food-orders"
    kafka_dlq_topic: str = "food-orders.dlq"
    kafka_partitions: int = 3
    kafka_replication_factor: int = 1
    consumer_group_id: str = "order-processors"
    client_id_prefix: str = "food-orders"
    database_url: str = "postgresql://orders@127.0.0.1:5433/orders"
    producer_rate: float = 10.0
    producer_max_orders: int = 0
    producer_seed: int | None = None
    consumer_batch_size: int = 5_000
    consumer_batch_timeout_ms: int = 200
    consumer_commit_interval_ms: int = 200
    consumer_session_timeout_ms: int = 10_000
    consumer_instance_id: str | None = None
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    kafka_security: tuple[tuple[str, str], ...] = ()
    metrics_enabled: bool = True
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9478
    alert_webhook_url: str | None = None
    alert_webhook_timeout_s: float = 5.0

    def client_id(self) -> str:
        """`{prefix}-{hostname}-{pid}`: distinct for every process on a host and across hosts."""
        return client_id(self.client_id_prefix)

    def kafka_common(self) -> dict[str, str]:
        """Connection settings shared by every Kafka client of this process."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **dict(self.kafka_security)}


@dataclass(frozen=True)
class HostSettings:
    """This host's files and local servers (the PIPELINE_* variables) and the two addresses the servers
    serve: all that `down`, `services` and `logs` need, so they work while another setting is broken."""

    prefix: Path = REPO / ".local"
    state_dir: Path = REPO / "var"
    supervisord_conf: Path = REPO / "supervisord.conf"
    kafka_mode: KafkaMode = "zookeeper"
    zookeeper_port: int = 2181
    controller_port: int = 9093
    kafka_bootstrap_servers: str = Settings.kafka_bootstrap_servers
    database_url: str = Settings.database_url

    @property
    def kafka_lib(self) -> Path:
        """The Kafka jars (bin/setup installs them; an installed host has them under /opt/food-orders)."""
        return self.prefix / "kafka" / "lib"


def client_id(prefix: str, hostname: str | None = None, pid: int | None = None) -> str:
    return f"{prefix}-{hostname or socket.gethostname()}-{pid if pid is not None else os.getpid()}"


def environment(env: Mapping[str, str] | None = None, env_file: Path | None = None) -> dict[str, str]:
    """`env` (default: os.environ) over the values of the env file: real variables win.

    The env file is `env_file`, else $PIPELINE_ENV_FILE, else the checkout's `.env`."""
    if env_file is None:
        env_file = Path(os.environ.get("PIPELINE_ENV_FILE", REPO / ".env"))
    merged: dict[str, str] = {}
    if env_file is not None and env_file.exists():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if env is None else env)
    return merged


def load_settings(env: Mapping[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Parse settings from `env` (default: os.environ over the `.env` file). Raises SettingsError."""
    return parse_settings(environment(env, env_file))


def _getter(env: Mapping[str, str]) -> Callable[[str, Callable[[str, str], T], T], T]:
    """`get(VARIABLE, parse, default)`: the default when unset or empty, else parse(VARIABLE, raw)."""

    def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = env.get(name, "").strip()
        return default if raw == "" else parse(name, raw)

    return get


def parse_host_settings(env: Mapping[str, str]) -> HostSettings:
    """The PIPELINE_* variables and the server addresses, by the same parsers and defaults as Settings."""
    d, get = HostSettings(), _getter(env)
    return HostSettings(
        prefix=get("PIPELINE_PREFIX", _path, d.prefix),
        state_dir=get("PIPELINE_STATE_DIR", _path, d.state_dir),
        supervisord_conf=get("PIPELINE_SUPERVISORD_CONF", _path, d.supervisord_conf),
        kafka_mode=get("PIPELINE_KAFKA_MODE", _choice(("zookeeper", "kraft")), d.kafka_mode),  # type: ignore[arg-type]
        zookeeper_port=get("PIPELINE_ZOOKEEPER_PORT", _int_range(1, 65535), d.zookeeper_port),
        controller_port=get("PIPELINE_KAFKA_CONTROLLER_PORT", _int_range(1, 65535), d.controller_port),
        kafka_bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS", _bootstrap, d.kafka_bootstrap_servers),
        database_url=get("DATABASE_URL", _database_url, d.database_url),
    )


def parse_settings(env: Mapping[str, str]) -> Settings:
    d, get = Settings(), _getter(env)
    settings = Settings(
        kafka_bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS", _bootstrap, d.kafka_bootstrap_servers),
        kafka_topic=get("KAFKA_TOPIC", _topic, d.kafka_topic),
        kafka_dlq_topic=get("KAFKA_DLQ_TOPIC", _topic, d.kafka_dlq_topic),
        kafka_partitions=get("KAFKA_PARTITIONS", _int_range(1, 10_000), d.kafka_partitions),
        kafka_replication_factor=get("KAFKA_REPLICATION_FACTOR", _int_range(1, 16), d.kafka_replication_factor),
        consumer_group_id=get("CONSUMER_GROUP_ID", _name, d.consumer_group_id),
        client_id_prefix=get("CLIENT_ID_PREFIX", _name, d.client_id_prefix),
        database_url=get("DATABASE_URL", _database_url, d.database_url),
        producer_rate=get("PRODUCER_RATE", _rate, d.producer_rate),
        producer_max_orders=get("PRODUCER_MAX_ORDERS", _int_range(0, 10**12), d.producer_max_orders),
        producer_seed=get("PRODUCER_SEED", _int_range(0, 2**63), d.producer_seed),
        consumer_batch_size=get("CONSUMER_BATCH_SIZE", _int_range(1, 100_000), d.consumer_batch_size),
        consumer_batch_timeout_ms=get(
            "CONSUMER_BATCH_TIMEOUT_MS", _int_range(1, 60_000), d.consumer_batch_timeout_ms
        ),
        consumer_commit_interval_ms=get(
            "CONSUMER_COMMIT_INTERVAL_MS", _int_range(0, 1_000), d.consumer_commit_interval_ms
        ),
        consumer_session_timeout_ms=get(
            "CONSUMER_SESSION_TIMEOUT_MS", _int_range(6_000, 300_000), d.consumer_session_timeout_ms
        ),
        consumer_instance_id=_instance_id(env),
        log_level=get("LOG_LEVEL", _choice(_LEVELS, upper=True), d.log_level),
        log_format=get("LOG_FORMAT", _choice(("text", "json")), d.log_format),  # type: ignore[arg-type]
        kafka_security=_security(env),
        metrics_enabled=get("METRICS_ENABLED", _bool, d.metrics_enabled),
        metrics_address=get("METRICS_ADDRESS", _address, d.metrics_address),
        metrics_port=get("METRICS_PORT", _int_range(1, 65535), d.metrics_port),
        alert_webhook_url=get("ALERT_WEBHOOK_URL", _http_url, d.alert_webhook_url),
        alert_webhook_timeout_s=get("ALERT_WEBHOOK_TIMEOUT_S", _seconds(0.1, 60.0), d.alert_webhook_timeout_s),
    )
    if settings.kafka_topic == settings.kafka_dlq_topic:
        raise SettingsError("KAFKA_DLQ_TOPIC: must differ from KAFKA_TOPIC")
    return settings


def _instance_id(env: Mapping[str, str]) -> str | None:
    """Static membership id: explicit, or `{hostname}-{supervisor process name}` under supervisord."""
    explicit = env.get("CONSUMER_INSTANCE_ID", "").strip()
    if explicit:
        return _name("CONSUMER_INSTANCE_ID", explicit)
    slot = env.get("SUPERVISOR_PROCESS_NAME", "").strip()
    return f"{socket.gethostname()}-{slot}" if slot else None


def _security(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    protocol = env.get("KAFKA_SECURITY_PROTOCOL", "").strip().upper() or "PLAINTEXT"
    if protocol not in _SECURITY_PROTOCOLS:
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL: expected one of {', '.join(_SECURITY_PROTOCOLS)}, "
                            f"got {protocol!r}")
    pairs = [("security.protocol", protocol)]
    pairs += [(prop, env[var].strip()) for var, prop in _KAFKA_SECURITY_VARS.items() if env.get(var, "").strip()]
    if protocol.startswith("SASL") and not env.get("KAFKA_SASL_MECHANISM", "").strip():
        raise SettingsError("KAFKA_SASL_MECHANISM: required when KAFKA_SECURITY_PROTOCOL is SASL_*")
    ca = env.get("KAFKA_SSL_CA_LOCATION", "").strip()
    if ca:
        _readable_file("KAFKA_SSL_CA_LOCATION", ca)
    return tuple(pairs)


def _readable_file(name: str, path: str) -> None:
    """A certificate the clients will need: missing or unreadable is one clear line now, not a TLS
    failure retried forever later."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise SettingsError(f"{name}: cannot read {path} ({e.strerror}); a worker gets the CA certificate "
                            "with deploy/install.sh --role worker --join BUNDLE") from None


def _int_range(lo: int, hi: int) -> Callable[[str, str], int]:
    return _bounded(int, "an integer", lo, hi)


def _rate(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of orders per second, got {raw!r}") from None
    if not 0 <= value <= 10_000_000 or value != value:
        raise SettingsError(f"{name}: expected 0 (unlimited) or a positive rate, got {raw!r}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _seconds(lo: float, hi: float) -> Callable[[str, str], float]:
    return _bounded(float, "a number of seconds", lo, hi, unit=" seconds")



def _bounded(cast: Callable[[str], N], what: str, lo: N, hi: N, unit: str = "") -> Callable[[str, str], N]:
    """A number within lo..hi; the error names the variable, the expected form and the range."""

    def parse(name: str, raw: str) -> N:
        try:
            value = cast(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected {what}, got {raw!r}") from None
        if not lo <= value <= hi:
            shown = f"{lo:g}..{hi:g}" if isinstance(lo, float) else f"{lo}..{hi}"
            got = repr(raw) if unit else str(value)
            raise SettingsError(f"{name}: expected {shown}{unit}, got {got}")
        return value

    return parse


def _address(name: str, raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an IP address to listen on (e.g. 127.0.0.1), got {raw!r}") from None
    return raw


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: expected an http:// or https:// URL, got {raw!r}")
    return raw


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise SettingsError(f"{name}: expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _name(name: str, raw: str) -> str:
    if len(raw) > 200 or any(c.isspace() for c in raw):
        raise SettingsError(f"{name}: expected a name without spaces (≤ 200 chars), got {raw!r}")
    return raw


def _topic(name: str, raw: str) -> str:
    ok = len(raw) <= 249 and raw not in (".", "..") and all(c.isalnum() or c in "._-" for c in raw)
    if not ok:
        raise SettingsError(f"{name}: {raw!r} is not a legal Kafka topic name ([a-zA-Z0-9._-], ≤ 249)")
    return raw


def _path(_name: str, raw: str) -> Path:
    """Relative to the checkout (see REPO), like bin/setup and bin/supervisorctl read them."""
    return (REPO / raw).resolve()


def _bootstrap(name: str, raw: str) -> str:
    for hostport in raw.split(","):
        host, _, port = hostport.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{name}: expected host:port[,host:port...], got {raw!r}")
    return raw


def _database_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.path.strip("/"):
        raise SettingsError(f"{name}: expected postgresql://user:password@host:port/database[?sslmode=...]")
    root_cert = parse_qs(parts.query).get("sslrootcert", [""])[-1]
    if root_cert and root_cert != "system":
        _readable_file(f"{name} (sslrootcert)", root_cert)
    return raw
