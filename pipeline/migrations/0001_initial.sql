-- Orders as consumed from Kafka, and per-customer aggregates kept in the same transaction.
-- customer_email is stored too (beyond the minimal contract) so a redelivery is compared on all content.
CREATE TABLE orders (
    order_id           text PRIMARY KEY CHECK (length(order_id) BETWEEN 1 AND 64),
    customer_id        text NOT NULL,
    customer_name      text NOT NULL,
    customer_email     text NOT NULL,
    items              jsonb NOT NULL,
    total_amount       numeric(10, 2) NOT NULL CHECK (total_amount > 0),
    status             text NOT NULL,
    created_at         timestamptz NOT NULL,
    kafka_partition    integer NOT NULL,
    kafka_offset       bigint NOT NULL,
    consumer_client_id text NOT NULL,
    processed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customer_stats (
    customer_id    text PRIMARY KEY,
    order_count    bigint NOT NULL,
    total_spent    numeric(16, 2) NOT NULL,
    first_order_at timestamptz NOT NULL,
    last_order_at  timestamptz NOT NULL
);
