"""deploy/install.sh and the units under a real systemd: install, faults, stop order, restarts, operators.

The tests of this module run in order against one sandbox (one host's life): refused installs,
an install, kill -9 of every server and of supervisord under load, the stop order, a full stop +
start, restarts, an operator's scale, a second install, remove and purge. Ground truth is
`food-orders audit` inside the host: every order id in the topic is in PostgreSQL exactly once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.helpers import wait_for
from tests.host.hostlib import (
    AUXILIARY,
    INSTALL,
    all_running,
    assert_nothing_installed,
    cursor,
    journal_after,
    orders,
    programs,
    refused,
    sh,
)
from tests.host.sandbox import SystemdSandbox

pytestmark = pytest.mark.systemd

SERVERS = ["food-orders-zookeeper.service", "food-orders-kafka.service", "food-orders-postgresql.service"]
UNITS = [*SERVERS, "food-orders.service"]
REPAIR_TARGET_S = 30.0


@pytest.fixture(scope="module")
def host(sandbox: SystemdSandbox) -> Iterator[SystemdSandbox]:
    yield sandbox
    sandbox.run(INSTALL, "--purge", check=False, timeout=180)


def test_bad_input_is_refused_with_one_line_and_nothing_installed(host: SystemdSandbox) -> None:
    assert_nothing_installed(host)
    # A copy nobody can read, wherever the checkout is: the root check comes before anything else.
    refused(host, f"install -m 0755 {INSTALL} /tmp/install.sh && runuser -u nobody -- /tmp/install.sh", "run as root")
    # A private mount namespace per case: the broken Java or the read-only prefix exist for that command only.
    refused(host, f"unshare -m sh -c 'mount --bind /bin/false /usr/bin/java && {INSTALL}'",
            "/usr/bin/java does not run")
    refused(host, f"mkdir -p /srv/ro && unshare -m sh -c 'mount -t tmpfs -o ro none /srv/ro && "
                  f"{INSTALL} --prefix /srv/ro/food-orders'", "cannot write the prefix /srv/ro/food-orders")
    refused(host, "(python3 -m http.server 9092 --bind 127.0.0.1 >/dev/null 2>&1 & echo $! >/tmp/squatter); "
                  "for i in $(seq 100); do ss -Hltn 'sport = :9092' | grep -q . && break; sleep 0.1; done; "
                  f"{INSTALL}; rc=$?; kill $(cat /tmp/squatter); exit $rc", "port 9092 (kafka) is already in use")
    refused(host, f"{INSTALL} --bogus", "unknown argument")


def test_install_from_the_checkout_offline_and_orders_flow(host: SystemdSandbox) -> None:
    out = host.run(INSTALL, timeout=300).stdout
    assert "wrote food-orders.env with a generated database password" in out
    for unit in [*UNITS, "food-orders.target"]:
        assert host.unit_state(unit) == "active", unit
    assert sh(host, "stat -c '%a %U:%G' /etc/food-orders/food-orders.env /run/food-orders").split("\n")[:2] == \
        ["640 root:food-orders", "770 food-orders:food-orders"]
    users = sh(host, "ps -o user:20= -C java,postgres,supervisord | sort -u")
    assert set(users.split()) == {"food-orders-kafka", "postgres", "food-orders"}
    # Under load from here on; an upgrade must keep this edit of the env file.
    sh(host, "sed -i 's/^PRODUCER_RATE=.*/PRODUCER_RATE=300/' /etc/food-orders/food-orders.env && "
             "systemctl restart food-orders.service")
    wait_for(lambda: orders(host) > 300, 60, "orders in PostgreSQL")
    # Observable as installed: the metrics endpoint on loopback and the monitoring check, as an operator.
    wait_for(lambda: programs(host).get("metrics", ("",))[0] == "RUNNING", 30, "the metrics program RUNNING")
    scrape = sh(host, "python3 -c 'import urllib.request as u; "
                      "print(u.urlopen(\"http://127.0.0.1:9478/metrics\", timeout=10).read().decode())'")
    assert 'food_orders_orders_inserted_total{process="consumer_01"}' in scrape
    assert 'food_orders_server_up{server="kafka"} 1.0' in scrape
    check = host.run("bash", "-lc", "food-orders status --check", check=False, cwd="/")
    assert check.returncode in (0, 1) and check.stdout.startswith("FOOD-ORDERS "), check.stdout


def test_kill_9_of_each_server_and_supervisord_is_repaired_and_nothing_is_lost(host: SystemdSandbox) -> None:
    repair: dict[str, float] = {}
    for unit in [*SERVERS, "food-orders.service"]:
        before = orders(host)
        killed = host.main_pid(unit)
        started = time.monotonic()
        host.run("kill", "-KILL", str(killed))
        wait_for(lambda u=unit, k=killed: host.unit_state(u) == "active" and host.main_pid(u) not in (0, k),
                 60, f"systemd to restart {unit}")
        if unit == "food-orders.service":
            wait_for(lambda: all_running(host, 2), 60, "producer and consumer RUNNING again")
        repair[unit] = time.monotonic() - started
        wait_for(lambda b=before: orders(host) > b + 100, 90, f"orders flowing again after kill -9 of {unit}")
    for program in ("consumer:consumer_01", "producer"):
        _, pid = programs(host)[program]
        position = cursor(host)
        host.run("kill", "-KILL", str(pid))
        wait_for(lambda p=program, k=pid: programs(host)[p][0] == "RUNNING" and programs(host)[p][1] != k,
                 30, f"supervisord to restart {program}")
        # The alerts listener said so, in the journal of food-orders.service under its own name.
        wait_for(lambda p=program, k=pid, c=position: re.search(
            rf"alerts .*ALERT {p} exited unexpectedly \(pid {k}, was RUNNING\)", journal_after(host, c)),
            30, f"the alert for {program} in the journal")
    for program in AUXILIARY:  # the metrics endpoint and the alerts listener come back too
        _, pid = programs(host)[program]
        host.run("kill", "-KILL", str(pid))
        wait_for(lambda p=program, k=pid: programs(host)[p][0] == "RUNNING" and programs(host)[p][1] != k,
                 30, f"supervisord to restart {program}")
    print("repair seconds:", {u: round(s, 1) for u, s in repair.items()})
    assert all(seconds < REPAIR_TARGET_S for seconds in repair.values()), repair
    sh(host, "supervisorctl stop producer")
    audit = sh(host, "food-orders audit --wait 120")
    assert "verdict: OK" in audit and "missing from orders: 0" in audit, audit
    sh(host, "supervisorctl start producer")


def test_stop_order_programs_then_kafka_then_zookeeper(host: SystemdSandbox) -> None:
    sh(host, "supervisorctl scale consumer 2")
    wait_for(lambda: all_running(host, 3), 30, "2 consumers and the producer RUNNING")
    position = cursor(host)
    host.systemctl("stop", "food-orders.target")
    wait_for(lambda: all(host.unit_state(u) == "inactive" for u in UNITS), 120, "every unit inactive")
    journal = journal_after(host, position)

    def when(pattern: str) -> str:
        found = [line.split()[0] for line in journal.splitlines() if re.search(pattern, line)]
        assert found, f"no journal line matches {pattern!r}"
        return found[-1]

    producer = when(r"stopped: producer \(exit status 0\)")
    consumers = [when(rf"stopped: consumer_0{n} \(exit status 0\)") for n in (1, 2)]
    kafka = when(r"Stopped food-orders-kafka.service")
    zookeeper = when(r"Stopped food-orders-zookeeper.service")
    postgres = when(r"Stopped food-orders-postgresql.service")
    assert producer < min(consumers) and max(consumers) < kafka < zookeeper, journal
    assert max(consumers) < postgres, journal
    assert len(re.findall(r"consumer_0[12] .*stopped: batches", journal)) == 2, "each consumer's final commit line"


def test_start_after_a_full_stop_resumes_with_the_same_count_and_nothing_lost(host: SystemdSandbox) -> None:
    before = orders(host)
    host.systemctl("start", "food-orders.target")
    for unit in UNITS:
        host.wait_active(unit, 120)
    wait_for(lambda: all_running(host, 3), 60, "the same 2 consumers and the producer")
    wait_for(lambda: orders(host) > before + 100, 90, "orders flowing after the start")


def test_restart_of_the_target_three_times(host: SystemdSandbox) -> None:
    position = cursor(host)
    for attempt in range(3):
        host.systemctl("restart", "food-orders.target")
        for unit in UNITS:
            host.wait_active(unit, 120)
        wait_for(lambda: all_running(host, 3), 60, f"programs RUNNING after restart {attempt + 1}")
    journal = journal_after(host, position)
    assert "Scheduled restart job" not in journal, "a restart of the target needed systemd's automatic restarts"
    assert journal.count("Started food-orders-kafka.service") == 3


def test_an_operator_scales_from_any_directory_and_the_count_survives_a_restart(host: SystemdSandbox) -> None:
    sh(host, "id alice >/dev/null 2>&1 || useradd --create-home --groups food-orders alice; "
             "id bob >/dev/null 2>&1 || useradd --create-home bob")
    first = programs(host)["consumer:consumer_01"][1]
    out = sh(host, "cd /tmp && supervisorctl scale consumer 3", user="alice")
    assert "2 -> 3 processes" in out, out
    wait_for(lambda: all_running(host, 4), 30, "3 consumers and the producer RUNNING")
    assert programs(host)["consumer:consumer_01"][1] == first, "scale up restarted consumer_01"
    assert "RUNNING" in sh(host, "supervisorctl status producer", user="alice")
    denied = host.run("bash", "-lc", "supervisorctl status", user="bob", check=False, cwd="/")
    assert denied.returncode != 0 and "RUNNING" not in denied.stdout
    # An operator reads the metrics directory (it may not clean it): a killed process is left out.
    killed = programs(host)["consumer:consumer_02"][1]
    host.run("kill", "-KILL", str(killed))
    wait_for(lambda: programs(host)["consumer:consumer_02"][0] == "RUNNING"
             and programs(host)["consumer:consumer_02"][1] != killed, 30, "consumer_02 restarted")
    assert sh(host, f"ls /run/food-orders/metrics/gauge_livemax_{killed}.db"), "the dead process's gauges"
    status = sh(host, "COLUMNS=100 food-orders status", user="alice")
    assert "degraded consumers: none" in status and "match the rows, customer by customer" in status, status
    frame = sh(host, "COLUMNS=80 food-orders top --once --interval 0.5", user="alice")
    assert re.search(r"consumer_03 +RUNNING", frame), frame
    host.systemctl("restart", "food-orders.target")
    host.wait_active("food-orders.service", 120)
    wait_for(lambda: all_running(host, 4), 60, "3 consumers after a restart of the target")
    before = programs(host)
    host.systemctl("reload", "food-orders.service")
    assert programs(host) == before, "systemctl reload restarted a program"


def test_installing_again_changes_nothing(host: SystemdSandbox) -> None:
    snapshot = "sha256sum /etc/food-orders/food-orders.env /etc/food-orders/conf.d/consumer.conf " \
               "/etc/food-orders/supervisord.conf /etc/systemd/system/food-orders*; readlink /opt/food-orders/venv"
    files = sh(host, snapshot)
    supervisord = host.main_pid("food-orders.service")
    out = host.run(INSTALL, timeout=300).stdout
    assert "nothing changed" in out and "food-orders.env kept" in out and "numprocs=3 (kept)" in out, out
    assert sh(host, snapshot) == files
    assert host.main_pid("food-orders.service") == supervisord, "an install with no change restarted supervisord"
    assert "PRODUCER_RATE=300" in sh(host, "cat /etc/food-orders/food-orders.env")


def test_remove_keeps_data_and_a_reinstall_picks_it_up(host: SystemdSandbox) -> None:
    sh(host, "supervisorctl stop producer")
    audit = sh(host, "food-orders audit --wait 120")
    assert "verdict: OK" in audit, audit
    kept = orders(host)
    password = sh(host, "grep ^DATABASE_URL= /etc/food-orders/food-orders.env")
    out = host.run(INSTALL, "--remove", timeout=180).stdout
    assert "kept: /etc/food-orders" in out
    assert sh(host, "ls /etc/systemd/system | grep -c food-orders", check=False).strip() == "0"
    assert sh(host, "test -d /opt/food-orders || echo gone").strip() == "gone"
    assert sh(host, "test -f /var/lib/food-orders/postgresql/PG_VERSION && echo kept").strip() == "kept"
    host.run(INSTALL, timeout=300)
    assert sh(host, "grep ^DATABASE_URL= /etc/food-orders/food-orders.env") == password
    wait_for(lambda: orders(host) > kept, 90, "the reinstalled host to add to the kept orders")
    wait_for(lambda: all_running(host, 4), 60, "the kept consumer count (3) after the reinstall")


def test_purge_says_what_it_deletes_and_deletes_it(host: SystemdSandbox) -> None:
    out = host.run(INSTALL, "--purge", timeout=180).stdout
    assert "/var/lib/food-orders" in out and "the PostgreSQL cluster" in out and "purged" in out
    assert_nothing_installed(host)
