-- Products and rooms: the catalogue and the live-stream rooms that sell from it.
-- Timestamps are milliseconds since the Unix epoch (UTC); money is integer minor units.

CREATE TABLE products (
    id          TEXT PRIMARY KEY NOT NULL,
    owner_id    TEXT NOT NULL,
    sku         TEXT NOT NULL,
    title       TEXT NOT NULL,
    title_lower TEXT NOT NULL,
    origin      TEXT,
    unit        TEXT,
    list_price  BIGINT NOT NULL CHECK (list_price >= 0),
    currency    TEXT NOT NULL,
    image_url   TEXT,
    created_at  BIGINT NOT NULL,
    UNIQUE (owner_id, sku)
);
CREATE INDEX products_owner ON products (owner_id, id);

CREATE TABLE rooms (
    id                TEXT PRIMARY KEY NOT NULL,
    title             TEXT NOT NULL,
    description       TEXT,
    streamer_id       TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('scheduled', 'live', 'ended')),
    playback_url      TEXT,
    scheduled_start   BIGINT,
    started_at        BIGINT,
    ended_at          BIGINT,
    created_at        BIGINT NOT NULL,
    pinned_product_id TEXT REFERENCES products (id)
);
CREATE INDEX rooms_status ON rooms (status, id);
CREATE INDEX rooms_streamer ON rooms (streamer_id, id);

CREATE TABLE room_products (
    room_id    TEXT NOT NULL REFERENCES rooms (id),
    product_id TEXT NOT NULL REFERENCES products (id),
    position   BIGINT NOT NULL,
    PRIMARY KEY (room_id, product_id)
);
