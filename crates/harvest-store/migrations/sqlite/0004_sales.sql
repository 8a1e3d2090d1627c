-- Flash sales and their holds: the system of record the stock engines are rebuilt from.
-- `phase` is the lifecycle the room has been told about (sale.started, sale.ended), so
-- each announcement is made once even with several nodes; `ended_early_at` is set when
-- the owner (or the end of the room) ends a sale before its time.

CREATE TABLE sales (
    id             TEXT PRIMARY KEY NOT NULL,
    room_id        TEXT NOT NULL REFERENCES rooms (id),
    product_id     TEXT NOT NULL REFERENCES products (id),
    price          BIGINT NOT NULL CHECK (price >= 0),
    currency       TEXT NOT NULL,
    stock          BIGINT NOT NULL CHECK (stock >= 1),
    per_user_limit BIGINT NOT NULL CHECK (per_user_limit >= 1),
    starts_at      BIGINT NOT NULL,
    ends_at        BIGINT NOT NULL,
    hold_ttl_s     BIGINT NOT NULL CHECK (hold_ttl_s >= 1),
    phase          TEXT NOT NULL CHECK (phase IN ('scheduled', 'live', 'ended')),
    ended_early_at BIGINT,
    created_at     BIGINT NOT NULL
);
CREATE INDEX sales_room ON sales (room_id, id);
CREATE INDEX sales_phase ON sales (phase, id);

-- Holds are written behind the engine, in batches; a hold's final status never
-- changes again (writes guard on status = 'held').
CREATE TABLE holds (
    id         TEXT PRIMARY KEY NOT NULL,
    sale_id    TEXT NOT NULL REFERENCES sales (id),
    user_id    TEXT NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity >= 1),
    unit_price BIGINT NOT NULL CHECK (unit_price >= 0),
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    currency   TEXT NOT NULL,
    position   BIGINT NOT NULL CHECK (position >= 1),
    status     TEXT NOT NULL CHECK (status IN ('held', 'paid', 'released', 'expired')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at   BIGINT,
    order_id   TEXT
);
CREATE INDEX holds_sale ON holds (sale_id, position);
CREATE INDEX holds_user ON holds (user_id, id);
CREATE INDEX holds_status ON holds (status, sale_id);
