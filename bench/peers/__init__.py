"""Peers: the same drain done by other tools, for `bin/pipeline bench --peers` / `--peers-smoke`.

The harness fills one topic with N orders (the pipeline's own producer), then drains it into a fresh
database with each of: Kafka Connect standalone + the Debezium JDBC sink, Quix Streams with its
PostgreSQL sink, and this pipeline with 1 and N consumers. One table compares them.

- `install`: the peers' downloads (Maven, pip), made only when the peers are asked for;
- `topics`: the orders read back from the topic, and their re-encoding for Kafka Connect;
- `watch`: when a drain's first and last rows became visible (committed);
- `meter`: CPU of a sink's process tree and of the PostgreSQL backends that serve it;
- `connect`, `quix`: how each peer is configured and started (`quix_sink.py` runs in the peers'
  own virtualenv, never in the project's);
- `run`: the drains, the table and the JSON.
"""
