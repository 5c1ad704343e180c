"""ZooKeeper, the Kafka broker and PostgreSQL as private servers under one state directory.

Used by `bin/pipeline services ...` for a local run and by the test fixtures (free ports, temp dir).
Layout of the state dir: `<name>/data`, `<name>/conf`, `log/<name>.log`, `run/<name>.pid`.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import unquote, urlsplit

from pipeline.services.process import ManagedProcess, RunAs, ServiceError
from pipeline.services.zookeeper import await_broker_released, zookeeper_serving
from pipeline.settings import REPO, HostSettings, KafkaMode

KAFKA_DEPLOY = REPO / "deploy" / "kafka"
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class ServicesConfig:
    """Where the servers live and listen: derived from the host settings by `from_host`."""

    state_dir: Path
    prefix: Path
    kafka_mode: KafkaMode
    zookeeper_port: int
    kafka_port: int
    controller_port: int
    postgres_port: int
    db_name: str
    db_user: str
    db_password: str
    kafka_heap: str = "1g"
    # More than one port: a cluster of that many brokers (ZooKeeper mode), broker.id 0, 1, ...
    extra_kafka_ports: tuple[int, ...] = ()

    @property
    def kafka_lib(self) -> Path:
        return self.prefix / "kafka" / "lib"

    @property
    def broker_ports(self) -> tuple[int, ...]:
        return (self.kafka_port, *self.extra_kafka_ports)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports)

    @property
    def database_url(self) -> str:
        return (
            f"postgresql://{self.db_user}:{self.db_password}@127.0.0.1:"
            f"{self.postgres_port}/{self.db_name}"
        )

    @staticmethod
    def from_host(host: HostSettings) -> ServicesConfig:
        """The local servers serve the first KAFKA_BOOTSTRAP_SERVERS port and DATABASE_URL's port,
        database and role (whose names we put in SQL, so they must be plain identifiers)."""
        url = urlsplit(host.database_url)
        user, db = unquote(url.username or "orders"), url.path.lstrip("/")
        for part, what in ((user, "user"), (db, "database")):
            if not _IDENT.fullmatch(part):
                raise ServiceError(f"DATABASE_URL: {what} name {part!r} must match {_IDENT.pattern}")
        ports = tuple(int(hostport.rsplit(":", 1)[1]) for hostport in host.kafka_bootstrap_servers.split(","))
        if len(ports) > 1 and host.kafka_mode == "kraft":
            raise ServiceError("KAFKA_BOOTSTRAP_SERVERS lists several brokers: a local cluster runs in ZooKeeper "
                               "mode (PIPELINE_KAFKA_MODE=zookeeper)")
        return ServicesConfig(
            state_dir=host.state_dir,
            prefix=host.prefix,
            kafka_mode=host.kafka_mode,
            zookeeper_port=host.zookeeper_port,
            kafka_port=ports[0],
            extra_kafka_ports=ports[1:],
            controller_port=host.controller_port,
            postgres_port=url.port or 5432,
            db_name=db,
            db_user=user,
            db_password=unquote(url.password or ""),
        )


def broker_name(broker: int) -> str:
    return "kafka" if broker == 0 else f"kafka-{broker + 1}"


def broker_index(name: str) -> int:
    return 0 if name == "kafka" else int(name.rsplit("-", 1)[1]) - 1


def render(template: Path, dest: Path, **values: object) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(Template(template.read_text()).substitute({k: str(v) for k, v in values.items()}))


class LocalServices:
    """The three servers of one host, started and stopped in dependency order."""

    def __init__(self, config: ServicesConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.root = config.state_dir
        self.say = say

    # -- the servers --------------------------------------------------------------------------

    def zookeeper(self) -> ManagedProcess:
        c, d = self.config, self.root / "zookeeper"
        conf = d / "conf" / "zoo.cfg"
        return ManagedProcess(
            name="zookeeper",
            command=self._java(
                "org.apache.zookeeper.server.quorum.QuorumPeerMain", "zookeeper", "256m", str(conf)
            ),
            pid_file=self.root / "run" / "zookeeper.pid",
            log_file=self.root / "log" / "zookeeper.out",
            extra_logs=[self.root / "log" / "zookeeper.log"],
            ports=[c.zookeeper_port],
            ready=lambda: zookeeper_serving(c.zookeeper_port),
            marker=str(conf),
        )

    def kafka(self, broker: int = 0) -> ManagedProcess:
        """Broker `broker` (broker.id): named kafka, then kafka-2, kafka-3, ... in a cluster."""
        c, name = self.config, broker_name(broker)
        conf = self.root / name / "conf" / "server.properties"
        port = c.broker_ports[broker]
        ports = [port] + ([c.controller_port] if c.kafka_mode == "kraft" else [])
        return ManagedProcess(
            name=name,
            command=self._java("kafka.Kafka", name, c.kafka_heap, str(conf)),
            pid_file=self.root / "run" / f"{name}.pid",
            log_file=self.root / "log" / f"{name}.out",
            extra_logs=[self.root / "log" / f"{name}.log"],
            ports=ports,
            ready=lambda: broker_answers(f"127.0.0.1:{port}"),
            marker=str(conf),
            before_start=(lambda: await_broker_released(c.zookeeper_port, broker, say=self.say))
            if c.kafka_mode == "zookeeper" else None,
        )

    def brokers(self) -> list[ManagedProcess]:
        return [self.kafka(i) for i in range(len(self.config.broker_ports))]

    def postgres(self) -> ManagedProcess:
        c, d = self.config, self.root / "postgres"
        return ManagedProcess(
            name="postgres",
            command=[
                str(postgres_bin("postgres")), "-D", str(d / "data"), "-p", str(c.postgres_port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={d / 'run'}",
            ],
            pid_file=self.root / "run" / "postgres.pid",
            log_file=self.root / "log" / "postgres.log",
            ports=[c.postgres_port],
            ready=lambda: self._pg_isready(),
            marker=str(d / "data"),
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back sessions, checkpoint, exit
            run_as=RunAs.postgres_if_root(),
        )

    def all(self) -> list[ManagedProcess]:
        """Start order: ZooKeeper (if used), broker, PostgreSQL. Stop order is the reverse."""
        kafka = self.brokers() if self.config.kafka_mode == "kraft" else [self.zookeeper(), *self.brokers()]
        return [*kafka, self.postgres()]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 90.0, say: Callable[[str], None] = print) -> None:
        self._prepare_state_dir()
        for server in self.all():
            self._prepare(server.name)
            pid = server.start(timeout)
            say(f"{server.name:<10} ready  pid {pid:<7} {self._where(server.name)}")
            if server.name == "postgres":
                self._ensure_database()

    def prepare(self, name: str) -> None:
        """What a server needs before (re)starting: its state dir reachable and written (idempotent). A
        restart prepares again: the postgres account's path to its data may have been closed meanwhile
        (a temp dir's parent reset to 0700, say)."""
        self._prepare_state_dir()
        self._prepare(name)

    def stop(self, timeout: float = 60.0, say: Callable[[str], None] = print) -> None:
        for server in reversed(self.all()):
            stopped = server.stop(timeout)
            say(f"{server.name:<10} {'stopped' if stopped else 'not running'}")

    def status(self) -> list[tuple[str, int | None, str]]:
        return [(s.name, s.pid(), self._where(s.name)) for s in self.all()]

    def _where(self, name: str) -> str:
        c = self.config
        if name.startswith("kafka"):
            broker = broker_index(name)
            role = f"broker {broker} of {len(c.broker_ports)}, " if len(c.broker_ports) > 1 else ""
            return f"127.0.0.1:{c.broker_ports[broker]} ({role}{c.kafka_mode} mode)"
        return {
            "zookeeper": f"127.0.0.1:{c.zookeeper_port}",
            "postgres": f"127.0.0.1:{c.postgres_port}/{c.db_name}",
        }[name]

    # -- preparation --------------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ServiceError(f"state dir {self.root} is not writable: {e.strerror}") from e
        if not (self.config.kafka_lib / "kafka_2.13-3.9.2.jar").exists():
            raise ServiceError(f"Kafka jars missing under {self.config.kafka_lib}: run bin/setup")
        if shutil.which("java") is None:
            raise ServiceError("java not found on PATH: run bin/setup (installs a Java 17 runtime)")
        if RunAs.postgres_if_root().user:
            # The postgres account must be able to reach its data dir below ours.
            for p in [self.root, *self.root.parents]:
                if p.stat().st_mode & 0o001 == 0 and p != Path("/"):
                    os.chmod(p, p.stat().st_mode | 0o011)
                if p == Path("/"):
                    break

    def _prepare(self, name: str) -> None:
        c, d = self.config, self.root / name
        (d / "data").mkdir(parents=True, exist_ok=True)
        if name == "zookeeper":
            render(KAFKA_DEPLOY / "zookeeper.properties", d / "conf" / "zoo.cfg",
                   data_dir=d / "data", zookeeper_port=c.zookeeper_port)
        elif name.startswith("kafka"):
            broker = broker_index(name)
            conf = d / "conf" / "server.properties"
            render(KAFKA_DEPLOY / f"server-{c.kafka_mode}.properties", conf, data_dir=d / "data",
                   kafka_port=c.broker_ports[broker], zookeeper_port=c.zookeeper_port,
                   controller_port=c.controller_port)
            with open(conf, "a") as f:
                f.write("\n" + (KAFKA_DEPLOY / "server-common.properties").read_text())
                if len(c.broker_ports) > 1:
                    f.write("\n" + Template((KAFKA_DEPLOY / "server-cluster.properties").read_text()).substitute(
                        broker_id=broker, replicas=min(3, len(c.broker_ports))))
            if c.kafka_mode == "kraft" and not (d / "data" / "meta.properties").exists():
                self._format_kraft(conf)
        elif name == "postgres":
            self._init_postgres(d)

    def _java(self, main: str, name: str, heap: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{heap}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{KAFKA_DEPLOY / 'log4j.properties'}",
            f"-Dpipeline.log.file={self.root / 'log' / f'{name}.log'}",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp", f"{self.config.kafka_lib}/*", main, *args,
        ]

    def _format_kraft(self, conf: Path) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cmd = self._java("kafka.tools.StorageTool", "kafka-storage", "256m",
                         "format", "-t", cluster_id, "-c", str(conf))
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise ServiceError("kafka: formatting KRaft storage failed", out.stdout + out.stderr)

    def _init_postgres(self, d: Path) -> None:
        run_as = RunAs.postgres_if_root()
        data, run = d / "data", d / "run"
        run.mkdir(parents=True, exist_ok=True)
        if run_as.user:
            shutil.chown(d, run_as.user, run_as.user)
            for p in (data, run):
                shutil.chown(p, run_as.user, run_as.user)
            (self.root / "log").mkdir(exist_ok=True)
        os.chmod(data, 0o700)
        os.chmod(run, 0o700)
        if (data / "PG_VERSION").exists():
            return
        out = subprocess.run(
            [str(postgres_bin("initdb")), "-D", str(data), "-U", "postgres",
             "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, user=run_as.user,
        )
        if out.returncode != 0:
            raise ServiceError("postgres: initdb failed", out.stdout + out.stderr)
        with open(data / "postgresql.conf", "a") as f:
            f.write("\n# food-orders pipeline\nshared_buffers = 256MB\nmax_connections = 100\n"
                    "logging_collector = off\nlog_min_messages = warning\n")
        # initdb with peer auth only lets the OS user "postgres" in locally; TCP uses passwords.
        if run_as.user is None:
            (data / "pg_hba.conf").write_text(
                "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            )

    def psql(self, sql: str, *, db: str = "postgres") -> str:
        """Run SQL as the cluster's superuser over the private socket; returns the unaligned output."""
        d = self.root / "postgres"
        run_as = RunAs.postgres_if_root()
        out = subprocess.run(
            [str(postgres_bin("psql")), "-h", str(d / "run"), "-p", str(self.config.postgres_port),
             "-U", "postgres", "-d", db, "-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, user=run_as.user, cwd="/",
        )
        if out.returncode != 0:
            raise ServiceError(f"postgres: {out.stderr.strip().splitlines()[-1]}")
        return out.stdout.strip()

    def _pg_isready(self) -> bool:
        d = self.root / "postgres"
        out = subprocess.run(
            [str(postgres_bin("pg_isready")), "-h", str(d / "run"), "-p", str(self.config.postgres_port)],
            capture_output=True,
        )
        return out.returncode == 0

    def _ensure_database(self) -> None:
        """The pipeline's role and database; the role's password follows DATABASE_URL every start."""
        c = self.config
        if not c.db_password:
            raise ServiceError("DATABASE_URL has no password: run bin/setup (it writes one into .env)")
        user, password, db = c.db_user, c.db_password.replace("'", "''"), c.db_name
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'")
        verb = "ALTER" if exists == "1" else "CREATE"
        self.psql(f'{verb} ROLE "{user}" LOGIN PASSWORD \'{password}\'')
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") != "1":
            self.psql(f'CREATE DATABASE "{db}" OWNER "{user}"')


def postgres_bin(name: str) -> Path:
    """A PostgreSQL server binary: Debian keeps them under /usr/lib/postgresql/<major>/bin."""
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ServiceError(f"PostgreSQL's {name} not found: run bin/setup (installs postgresql)")


def broker_answers(bootstrap: str) -> bool:
    """True once the broker answers a metadata request and lists itself."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    md = admin.list_topics(timeout=2)
    return bool(md.brokers) and md.controller_id >= 0
