-- Orders (paid holds), webhook answers, late payments.
-- One order per hold: the unique hold_id is what makes a hold impossible to pay twice.

ALTER TABLE holds ADD COLUMN user_name TEXT;
-- The reservation's Idempotency-Key and request digest, so a replay after the stock
-- engine lost its records still answers the first hold.
ALTER TABLE holds ADD COLUMN idempotency_key TEXT;
ALTER TABLE holds ADD COLUMN request_fingerprint TEXT;
CREATE INDEX holds_key ON holds (sale_id, user_id, idempotency_key);

CREATE TABLE orders (
    id            TEXT PRIMARY KEY NOT NULL,
    hold_id       TEXT NOT NULL UNIQUE,
    sale_id       TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    product_id    TEXT NOT NULL,
    buyer_id      TEXT NOT NULL,
    buyer_name    TEXT NOT NULL,
    quantity      BIGINT NOT NULL CHECK (quantity >= 1),
    unit_price    BIGINT NOT NULL CHECK (unit_price >= 0),
    amount        BIGINT NOT NULL CHECK (amount >= 0),
    currency      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('paid', 'refunded')),
    paid_at       BIGINT NOT NULL,
    refunded_at   BIGINT,
    refund_reason TEXT,
    provider      TEXT NOT NULL,
    provider_ref  TEXT
);
CREATE INDEX orders_buyer ON orders (buyer_id, id);
CREATE INDEX orders_room ON orders (room_id, id);
CREATE INDEX orders_sale ON orders (sale_id, id);

-- The first final answer to each webhook event, returned to its replays.
CREATE TABLE payment_events (
    event_id   TEXT PRIMARY KEY NOT NULL,
    status     BIGINT NOT NULL,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Payments that arrived after their hold ended: no order, no stock; to be refunded.
CREATE TABLE late_payments (
    event_id     TEXT PRIMARY KEY NOT NULL,
    hold_id      TEXT NOT NULL,
    provider_ref TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
