"""Worker hosts: a second host runs consumers against the first host's Kafka and PostgreSQL, with auth.

Two sandboxes, each a booted systemd with its own network namespace and hostname, joined by a veth
pair: orders-host (10.231.0.1) installs with --listen, orders-worker (10.231.0.2) with --role worker
--join and the bundle the first one wrote. The tests run in order (two hosts' life): refused inputs,
the server, the join, clients refused, wrong passwords in the worker's env file, and the audit.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, wait_for
from tests.host.conftest import NOT_ROOT
from tests.host.hostlib import INSTALL, assert_nothing_installed, orders, programs, refused, sh
from tests.host.sandbox import SystemdSandbox, link

pytestmark = pytest.mark.systemd

SERVER_IP, WORKER_IP = "10.231.0.1", "10.231.0.2"
BUNDLE = "/root/worker-bundle.tar"
PYTHON = "/opt/food-orders/venv/bin/python"
ENV_FILE = "/etc/food-orders/food-orders.env"


@pytest.fixture(scope="module")
def hosts(sandbox_workdir: Callable[[str], Path]) -> Iterator[tuple[SystemdSandbox, SystemdSandbox]]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    server = SystemdSandbox(sandbox_workdir("orders-host"), project=REPO, hostname="orders-host")
    worker = SystemdSandbox(sandbox_workdir("orders-worker"), project=REPO, hostname="orders-worker")
    with server, worker:
        link(server, worker, SERVER_IP, WORKER_IP)
        yield server, worker
    server.remove_workdir()
    worker.remove_workdir()


def group_members(server: SystemdSandbox) -> dict[str, list[int]]:
    """The consumer group as seen by the broker: client host -> partitions it owns."""
    script = """
import json
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
g = a.describe_consumer_groups(["order-processors"])["order-processors"].result(15)
owners = {}
for m in g.members:
    owners.setdefault(m.host.lstrip("/"), []).extend(tp.partition for tp in m.assignment.topic_partitions)
print(json.dumps(owners))
"""
    out = server.run(PYTHON, "-c", script, check=False, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def rows_by_host(server: SystemdSandbox) -> dict[str, int]:
    out = sh(server, "runuser -u postgres -- psql -h /run/food-orders-postgresql -p 5433 -d orders -tAF' ' -c "
                     "\"SELECT split_part(consumer_client_id, '-', 4), count(*) FROM orders GROUP BY 1\"")
    return {host: int(n) for host, n in (line.split() for line in out.splitlines() if line.strip())}


def test_bad_input_is_refused_with_one_line(hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    server, worker = hosts
    refused(worker, f"{INSTALL} --role worker", "a worker needs --join BUNDLE")
    refused(worker, f"{INSTALL} --role worker --join /nonexistent.tar", "no such file")
    refused(worker, f"{INSTALL} --join /nonexistent.tar", "no such file")  # --join alone means a worker
    refused(worker, f"echo x >/tmp/x && tar -C /tmp -cf /tmp/bad.tar x && {INSTALL} --role worker --join /tmp/bad.tar",
            "not a worker bundle")
    refused(worker, f"{INSTALL} --role worker --listen {WORKER_IP}", "--listen is for the host that serves")
    refused(server, f"{INSTALL} --listen 127.0.0.1", "not loopback")
    refused(server, f"{INSTALL} --listen 10.231.9.9", "no interface of this host has that address")


def test_the_server_listens_for_workers_only_with_tls_and_passwords(
        hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    server, _ = hosts
    out = server.run(INSTALL, "--listen", SERVER_IP, timeout=300).stdout
    assert "worker-bundle.tar" in out and "ACLs" in out, out
    modes = sh(server, "cd /etc/food-orders && stat -c '%n %a %U:%G' worker-bundle.tar worker-credentials.env "
                       "tls/ca.key tls/kafka.pem tls/postgresql.key tls/ca.pem")
    assert modes.split("\n")[:6] == ["worker-bundle.tar 600 root:root", "worker-credentials.env 600 root:root",
                                     "tls/ca.key 600 root:root", "tls/kafka.pem 640 root:food-orders-kafka",
                                     "tls/postgresql.key 640 root:postgres", "tls/ca.pem 644 root:root"], modes
    listening = {re.sub(r"^\[::ffff:(.*)\]", r"\1", line.split()[3])
                 for line in sh(server, "ss -Hltn").splitlines() if line.strip()}
    # Beyond loopback: only the authenticated Kafka listener and PostgreSQL; ZooKeeper, the plain Kafka
    # listener and the metrics endpoint stay on loopback.
    assert {f"{SERVER_IP}:9094", f"{SERVER_IP}:5433"} <= listening, listening
    assert {a for a in listening if a.startswith(SERVER_IP)} == {f"{SERVER_IP}:9094", f"{SERVER_IP}:5433"}, listening
    assert {"127.0.0.1:2181", "127.0.0.1:9092", "127.0.0.1:9478"} <= listening, listening
    assert all(a.startswith(("127.", "[::1]", SERVER_IP)) for a in listening), f"a wildcard listener: {listening}"
    again = server.run(INSTALL, timeout=300).stdout  # --listen is remembered; certificates, passwords kept
    assert "nothing changed" in again and "server certificate" not in again, again
    sh(server, f"sed -i 's/^PRODUCER_RATE=.*/PRODUCER_RATE=200/' {ENV_FILE} && supervisorctl restart producer")
    wait_for(lambda: orders(server) > 200, 60, "orders flowing on the server")


def test_a_worker_joins_and_the_partitions_spread_across_both_hosts(
        hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    server, worker = hosts
    bundle = server.run("base64", "/etc/food-orders/worker-bundle.tar").stdout  # as an operator would scp it
    worker.run("bash", "-c", f"base64 -d >{BUNDLE}", input=bundle)
    out = worker.run(INSTALL, "--role", "worker", "--join", BUNDLE, timeout=300).stdout
    assert f"joined: {SERVER_IP}:9094 as food-orders-worker" in out, out
    units = sh(worker, "systemctl list-unit-files --no-legend 'food-orders*' | awk '{print $1}'").split()
    assert sorted(units) == ["food-orders.service", "food-orders.target"], units
    assert sh(worker, f"stat -c '%a %U:%G' {ENV_FILE}").strip() == "640 root:food-orders"
    worker.wait_active("food-orders.service", 60)
    assert programs(worker)["producer"][0] == "STOPPED", "a worker's producer does not start by itself"
    sh(worker, "supervisorctl scale consumer 2")
    wait_for(lambda: set(group_members(server)) == {"127.0.0.1", WORKER_IP}
             and all(group_members(server).values()), 90, "partitions owned by consumers on both hosts")
    spread = group_members(server)
    assert sorted(p for parts in spread.values() for p in parts) == [0, 1, 2], spread
    wait_for(lambda: rows_by_host(server).get("worker", 0) > 50, 60, "orders written by the worker's consumers")
    again = worker.run(INSTALL, timeout=300).stdout  # an upgrade of a worker: its role and settings are kept
    assert "nothing changed" in again, again
    listen = worker.run(INSTALL, "--listen", WORKER_IP, check=False, cwd="/")
    assert listen.returncode == 1 and "--listen is for the host that serves" in listen.stderr, listen.stderr


CLIENTS = """
import json, socket, sys, time
import psycopg2
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from pipeline.settings import load_settings
s = load_settings()
common = dict(s.kafka_common())
out = {}

def kafka(name, config, action=lambda a: a.list_topics(timeout=6)):
    errors = []
    admin = AdminClient({**config, "error_cb": lambda e: errors.append(e.name()), "log_level": 0})
    try:
        action(admin)
        out[name] = "ok"
    except KafkaException as e:
        admin.poll(0)
        out[name] = errors[0] if errors else e.args[0].name()

def create(admin):
    admin.create_topics([NewTopic("intruder", 1, 1)])["intruder"].result(15)

kafka("kafka_no_credentials", {"bootstrap.servers": common["bootstrap.servers"]})
kafka("kafka_wrong_password", {**common, "sasl.password": "wrong"})
kafka("kafka_right_password", common)
kafka("kafka_create_topic", common, create)
for name, port in (("tcp_kafka_loopback_listener", 9092), ("tcp_zookeeper", 2181)):
    try:
        socket.create_connection((sys.argv[1], port), timeout=3).close()
        out[name] = "ok"
    except OSError as e:
        out[name] = type(e).__name__

def pg(name, url, statement="SELECT count(*) FROM orders"):
    try:
        with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(statement)
            out[name] = "ok"
    except psycopg2.Error as e:
        out[name] = str(e).strip().splitlines()[0]

url = s.database_url
base, _, query = url.partition("?")
user, _, rest = base.removeprefix("postgresql://").partition("@")
role, _, password = user.partition(":")
pg("pg_no_password", f"postgresql://{role}@{rest}?{query}")
pg("pg_wrong_password", f"postgresql://{role}:wrong@{rest}?{query}")
pg("pg_without_tls", f"postgresql://{user}@{rest}?sslmode=disable")
pg("pg_right_password", url)
pg("pg_create_table", url, "CREATE TABLE intruder (x int)")
pg("pg_alter_table", url, "ALTER TABLE orders ADD COLUMN intruder int")
pg("pg_delete", url, "DELETE FROM orders")
print(json.dumps(out))
"""


def test_clients_without_the_right_credentials_are_refused(hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    _, worker = hosts
    out = worker.run(PYTHON, "-c", CLIENTS, SERVER_IP, env={"PIPELINE_ENV_FILE": ENV_FILE}, timeout=120).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["kafka_right_password"] == "ok", seen
    assert seen["kafka_no_credentials"] in ("_TRANSPORT", "_ALL_BROKERS_DOWN"), seen
    assert seen["kafka_wrong_password"] == "_AUTHENTICATION", seen
    assert seen["kafka_create_topic"] in ("CLUSTER_AUTHORIZATION_FAILED", "TOPIC_AUTHORIZATION_FAILED"), seen
    assert seen["tcp_kafka_loopback_listener"] == seen["tcp_zookeeper"] == "ConnectionRefusedError", seen
    assert seen["pg_right_password"] == "ok", seen
    assert "password" in seen["pg_no_password"], seen
    assert "password authentication failed" in seen["pg_wrong_password"], seen
    assert "no pg_hba.conf entry" in seen["pg_without_tls"] and "no encryption" in seen["pg_without_tls"], seen
    assert "permission denied for schema public" in seen["pg_create_table"], seen
    assert "must be owner of table orders" in seen["pg_alter_table"], seen
    assert "permission denied for table orders" in seen["pg_delete"], seen


@pytest.mark.parametrize("variable, password, expected", [
    ("KAFKA_SASL_PASSWORD", r"^(KAFKA_SASL_PASSWORD=).*$", "Kafka refused this client's credentials"),
    ("DATABASE_URL", r"^(DATABASE_URL=postgresql://[^:]*:)[^@]*(?=@)", "PostgreSQL refused this client"),
])
def test_a_wrong_password_in_the_env_file_is_one_clear_error(
        hosts: tuple[SystemdSandbox, SystemdSandbox], variable: str, password: str, expected: str) -> None:
    _, worker = hosts
    exits = "grep -c 'consumer_01 (exit status 1; not expected)' /var/log/food-orders/supervisord.log || true"
    exited_before = int(sh(worker, exits))
    good = sh(worker, f"cat {ENV_FILE}")
    worker.run("bash", "-c", f"cat >{ENV_FILE}", input=re.sub(password, r"\1wrong", good, count=1, flags=re.M))
    # A process that exits within startsecs makes supervisorctl say "spawn error" and exit non-zero.
    sh(worker, ": >/var/log/food-orders/consumer_01.log; supervisorctl restart 'consumer:*'", check=False)
    assert sh(worker, f"grep -c '^{variable}=.*wrong' {ENV_FILE}").strip() == "1"
    wait_for(lambda: expected in sh(worker, "cat /var/log/food-orders/consumer_01.log"), 60,
             f"'{expected}' in consumer_01's log")
    log = sh(worker, "cat /var/log/food-orders/consumer_01.log")
    line = next(line for line in log.splitlines() if expected in line)
    assert "ERROR" in line and variable.split("_")[0] in line, line
    wait_for(lambda: int(sh(worker, exits)) > exited_before, 60, "consumer_01 exiting with status 1")
    worker.run("bash", "-c", f"cat >{ENV_FILE}", input=good)
    sh(worker, "supervisorctl restart 'consumer:*'")
    wait_for(lambda: [state for name, (state, _) in programs(worker).items() if name.startswith("consumer:")]
             == ["RUNNING", "RUNNING"], 60, "both consumers RUNNING again")


def test_an_expired_ca_in_a_bundle_is_refused(hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    _, worker = hosts
    ca_before = sh(worker, "sha256sum /etc/food-orders/tls/ca.pem")
    result = worker.run("bash", "-c", f"""set -e; d=$(mktemp -d); tar -C $d -xf {BUNDLE}
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=old -keyout $d/k \\
            -out $d/csr 2>/dev/null
        openssl x509 -req -in $d/csr -signkey $d/k -days -1 -out $d/ca.pem 2>/dev/null
        tar -C $d -cf /root/expired.tar worker.env ca.pem; {INSTALL} --role worker --join /root/expired.tar""",
                        check=False, cwd="/")
    assert result.returncode == 1, result.stdout
    expected = "install.sh: error: --join /root/expired.tar: the CA certificate expired on"
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr
    assert sh(worker, "sha256sum /etc/food-orders/tls/ca.pem") == ca_before, "a refused join changed the CA"


def test_a_ca_that_does_not_match_keeps_the_worker_retrying_with_a_clear_line(
        hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    server, worker = hosts
    good = sh(worker, f"cat {ENV_FILE}")
    # PostgreSQL verifies against a copy; the file Kafka's clients read becomes a stranger's CA.
    worker.run("bash", "-c", f"cat >{ENV_FILE}", input=good.replace("sslrootcert=/etc/food-orders/tls/ca.pem",
                                                                   "sslrootcert=/etc/food-orders/tls/pg-ca.pem"))
    sh(worker, "cd /etc/food-orders/tls && cp ca.pem pg-ca.pem && cp ca.pem /root/ca.good && openssl req -x509 "
               "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=stranger "
               "-keyout /root/stranger.key -out ca.pem 2>/dev/null && : >/var/log/food-orders/consumer_01.log && "
               "supervisorctl restart 'consumer:*'")
    wait_for(lambda: "TLS with the broker failed" in sh(worker, "cat /var/log/food-orders/consumer_01.log"), 60,
             "the TLS failure in consumer_01's log")
    line = sh(worker, "grep -m1 'TLS with the broker failed' /var/log/food-orders/consumer_01.log")
    assert "certificate verify failed" in line and "keeps retrying" in line, line
    assert programs(worker)["consumer:consumer_01"][0] == "RUNNING", "a TLS failure must not end the process"
    before = rows_by_host(server).get("worker", 0)
    sh(worker, "cp /root/ca.good /etc/food-orders/tls/ca.pem")  # the consumers succeed on their next try
    wait_for(lambda: rows_by_host(server).get("worker", 0) > before + 50, 120, "the worker writing orders again")
    worker.run("bash", "-c", f"cat >{ENV_FILE}", input=good)
    sh(worker, "rm /etc/food-orders/tls/pg-ca.pem && supervisorctl restart 'consumer:*'")


def test_an_expiring_server_certificate_is_renewed_by_an_install_and_workers_carry_on(
        hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    server, _ = hosts
    tls = "/etc/food-orders/tls"
    # A certificate of the same CA and address that ends tomorrow, where the installer looks.
    sh(server, f"cd {tls} && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=soon "
               f"-keyout /root/soon.key -out /root/soon.csr 2>/dev/null && echo 'subjectAltName=IP:{SERVER_IP}' "
               f">/root/ext && openssl x509 -req -in /root/soon.csr -CA ca.pem -CAkey ca.key -days 1 "
               f"-extfile /root/ext -out server.pem 2>/dev/null")
    kafka_pid = server.main_pid("food-orders-kafka.service")
    before = rows_by_host(server).get("worker", 0)
    out = server.run(INSTALL, timeout=300).stdout  # an upgrade: --listen is kept from the env file
    assert f"server certificate for {SERVER_IP}" in out, out
    assert sh(server, f"openssl x509 -in {tls}/kafka.pem -noout -checkend $((800 * 86400)) >/dev/null && echo long") \
        == "long\n"
    assert server.main_pid("food-orders-kafka.service") != kafka_pid, "Kafka must restart to serve the new certificate"
    wait_for(lambda: rows_by_host(server).get("worker", 0) > before + 50, 120, "the worker writing orders again")


def test_kill_9_of_every_process_on_the_worker_is_repaired(hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    server, worker = hosts
    for program in ("consumer:consumer_01", "metrics", "alerts"):  # supervisord restarts its programs
        _, pid = programs(worker)[program]
        worker.run("kill", "-KILL", str(pid))
        wait_for(lambda p=program, k=pid: programs(worker).get(p, ("", 0))[0] == "RUNNING"  # type: ignore[misc]
                 and programs(worker)[p][1] != k, 30, f"{program} restarted by supervisord")
    supervisord = worker.main_pid("food-orders.service")
    worker.run("kill", "-KILL", str(supervisord))  # systemd restarts supervisord, and with it the programs
    wait_for(lambda: worker.main_pid("food-orders.service") not in (0, supervisord)
             and worker.unit_state("food-orders.service") == "active", 60, "food-orders.service restarted")
    wait_for(lambda: [state for name, (state, _) in programs(worker).items() if name.startswith("consumer:")]
             == ["RUNNING", "RUNNING"], 60, "both consumers RUNNING after supervisord's restart")
    before = rows_by_host(server).get("worker", 0)
    wait_for(lambda: rows_by_host(server).get("worker", 0) > before + 50, 120, "the worker writing orders again")


def test_every_order_reached_postgresql_exactly_once(hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    server, worker = hosts
    wait_for(lambda: rows_by_host(server).get("worker", 0) > 0 and group_members(server).get(WORKER_IP), 90,
             "the worker's consumers back in the group")
    sh(server, "supervisorctl stop producer")
    audit = sh(server, "food-orders audit --wait 120", timeout=180)
    assert "verdict: OK" in audit and "missing from orders: 0" in audit, audit
    # The worker reads the same truth through its own credentials (a group of its own, read-only).
    remote = sh(worker, "food-orders audit", timeout=120)
    assert "verdict: OK" in remote, remote
    counts = rows_by_host(server)
    assert counts.get("worker", 0) > 0 and counts.get("host", 0) > 0, counts


def test_purge_of_a_worker_leaves_nothing(hosts: tuple[SystemdSandbox, SystemdSandbox]) -> None:
    _, worker = hosts
    out = worker.run(INSTALL, "--purge", timeout=180).stdout
    assert "purged" in out, out
    assert_nothing_installed(worker)
