"""The per-message baseline: `python -m bench.baseline`.

The design the pipeline replaces, as a simple loop: poll one message, decode + validate it, INSERT its row
(and its customer_stats update, in one statement, so the work equals the pipeline's), COMMIT the database,
commit the offset synchronously. Same consumer config as pipeline.consumer, same environment variables;
`BENCH_BASELINE_MAX` stops it after that many messages (0 = until SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import psycopg2
from confluent_kafka import Consumer

from pipeline.consumer import consumer_config
from pipeline.orders import Order, decode_order, items_json
from pipeline.settings import load_settings
from pipeline.store import OrderStore

_INSERT_ONE = """
WITH inserted AS (
    INSERT INTO orders (order_id, customer_id, customer_name, customer_email, items, total_amount, status,
                        created_at, kafka_partition, kafka_offset, consumer_client_id)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING customer_id, total_amount, created_at
)
INSERT INTO customer_stats (customer_id, order_count, total_spent, first_order_at, last_order_at)
SELECT customer_id, 1, total_amount, created_at, created_at FROM inserted
ON CONFLICT (customer_id) DO UPDATE SET
    order_count = customer_stats.order_count + 1,
    total_spent = customer_stats.total_spent + excluded.total_spent,
    first_order_at = least(customer_stats.first_order_at, excluded.first_order_at),
    last_order_at = greatest(customer_stats.last_order_at, excluded.last_order_at)
"""

_stopping = False


def _stop(_signum: int, _frame: FrameType | None) -> None:
    global _stopping
    _stopping = True


def run(limit: int) -> int:
    settings = load_settings(env_file=None)
    client_id = settings.client_id()
    OrderStore(settings.database_url, client_id).migrate()
    conn = psycopg2.connect(settings.database_url, application_name=client_id)
    kafka = Consumer(consumer_config(settings, client_id))
    kafka.subscribe([settings.kafka_topic])
    done = 0
    try:
        with conn.cursor() as cur:
            while not _stopping and (limit == 0 or done < limit):
                msg = kafka.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                key, value = msg.key(), msg.value()
                order = decode_order(key if isinstance(key, bytes) else None,
                                     value if isinstance(value, bytes) else None)
                if isinstance(order, Order):  # the benchmark topic has no invalid messages
                    cur.execute(_INSERT_ONE, (
                        order.order_id, order.customer_id, order.customer_name, order.customer_email,
                        items_json(order), order.total_amount, order.status, order.created_at,
                        msg.partition(), msg.offset(), client_id,
                    ))
                conn.commit()
                kafka.commit(message=msg, asynchronous=False)
                done += 1
    finally:
        kafka.close()
        conn.close()
    print(f"baseline: processed {done} message(s)", file=sys.stderr)
    return 0


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return run(int(os.environ.get("BENCH_BASELINE_MAX", "0")))


if __name__ == "__main__":
    sys.exit(main())
