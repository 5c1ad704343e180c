"""What the broker needs from ZooKeeper before it starts: its old registration gone.

A broker killed with SIGKILL leaves its ephemeral node `/brokers/ids/<id>` in ZooKeeper until its
session expires (`zookeeper.session.timeout.ms`). A new broker started before that fails in
`registerBroker` with NodeExistsException and exits, so every restarter (the dev-mode keeper, a
systemd unit's ExecStartPre) waits here first. ZooKeeper's `dump` command lists the ephemeral nodes
of every live session, so no ZooKeeper client library is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.services.process import ServiceError, tcp_exchange

# server-zookeeper.properties sets the broker's session timeout to this; the wait allows a margin
# for ZooKeeper's expiry ticks (tickTime 2 s) on top.
SESSION_TIMEOUT_S = 10.0


def zookeeper_serving(port: int) -> bool:
    """ZooKeeper serves requests (`srvr` names its mode); `ruok` says imok before the database is loaded."""
    return b"Mode: " in tcp_exchange(port, b"srvr", timeout=2.0)


def broker_registered(zookeeper_port: int, broker_id: int = 0) -> bool | None:
    """True while some session holds /brokers/ids/<id>, False when none does; None when ZooKeeper is
    not serving yet (starting, loading its snapshot: it may still restore the old session)."""
    try:
        dump = tcp_exchange(zookeeper_port, b"dump", timeout=2.0).decode("utf-8", "replace")
    except ConnectionRefusedError:
        return False  # nothing listens: the broker waits for ZooKeeper itself
    except OSError:
        return None
    if "Sessions with Ephemerals" not in dump:  # "not currently serving requests", or dump not allowed
        return None
    return any(line.strip() == f"/brokers/ids/{broker_id}" for line in dump.splitlines())


def await_broker_released(zookeeper_port: int, broker_id: int = 0,
                          timeout: float = SESSION_TIMEOUT_S + 10,
                          say: Callable[[str], None] | None = None) -> float:
    """Wait until no session holds the broker's node; returns the seconds waited.

    ZooKeeper not listening at all is not waited for here: the broker itself waits for it to connect
    (`zookeeper.connection.timeout.ms`). A ZooKeeper that listens but does not serve yet is waited for:
    it may restore the old session from its snapshot."""
    started = time.monotonic()
    told = False
    while True:
        held = broker_registered(zookeeper_port, broker_id)
        if held is False:
            return time.monotonic() - started
        if not told and say is not None:
            say(f"kafka: broker {broker_id} still registered in ZooKeeper by a previous session; "
                f"waiting for it to expire (up to {timeout:.0f}s)")
            told = True
        if time.monotonic() - started > timeout:
            raise ServiceError(f"kafka: /brokers/ids/{broker_id} still held in ZooKeeper after {timeout:.0f}s; "
                               "is another broker with the same broker.id running?")
        time.sleep(0.5)
