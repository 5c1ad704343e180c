"""Peer (b): Quix Streams with its PostgreSQL sink, draining the orders topic into `orders`.

Runs with the peers' own virtualenv (`.local/peers/quix-venv/bin/python bench/peers/quix_sink.py`),
never in the project's: it imports nothing from this repository. Configured by the environment that
`bench/peers/quix.py` sets (PEER_*). It reads the pipeline's own JSON (no re-encoding): the sink adapts
`items` (a list) to jsonb itself, and PostgreSQL casts the text of `created_at` and the number of
`total_amount` to the columns' types. Stops on SIGTERM, as Quix applications do.
"""

from __future__ import annotations

import os
from typing import Any

from quixstreams import Application, message_context  # type: ignore[import-not-found, unused-ignore]
from quixstreams.sinks.community.postgresql import (  # type: ignore[import-not-found, unused-ignore]
    PostgreSQLSink,
)


def main() -> None:
    env = os.environ
    client_id = f"quixstreams-{os.getpid()}"
    app = Application(
        broker_address=env["PEER_BOOTSTRAP"],
        consumer_group=env["PEER_GROUP"],
        auto_offset_reset="earliest",
        # A checkpoint flushes the sink (one transaction per partition), then commits the offsets.
        commit_interval=float(env["PEER_COMMIT_INTERVAL"]),
        commit_every=int(env["PEER_COMMIT_EVERY"]),
        consumer_extra_config={"client.id": client_id},
        state_dir=env["PEER_STATE_DIR"],
        use_changelog_topics=False,  # stateless: no changelog topics to create
        loglevel="INFO",
    )
    topic = app.topic(env["PEER_TOPIC"], value_deserializer="json", key_deserializer="bytes")
    sink = PostgreSQLSink(
        host=env["PEER_PG_HOST"],
        port=int(env["PEER_PG_PORT"]),
        dbname=env["PEER_PG_DBNAME"],
        user=env["PEER_PG_USER"],
        password=env["PEER_PG_PASSWORD"],
        table_name="orders",
        schema_auto_update=False,  # the table is created beforehand, as ours
        primary_key_columns="order_id",
        upsert_on_primary_key=True,
        include_metadata=False,  # no __key / timestamp columns: the table is ours
    )

    def with_source(order: dict[str, Any]) -> dict[str, Any]:
        """The columns our consumer fills from the record's coordinates."""
        ctx = message_context()
        order["kafka_partition"] = ctx.partition
        order["kafka_offset"] = ctx.offset
        order["consumer_client_id"] = client_id
        return order

    sdf = app.dataframe(topic)
    sdf = sdf.apply(with_source)
    sdf.sink(sink)
    app.run()


if __name__ == "__main__":
    main()
