-- Chat moderation that must outlive a restart: bans and timed mutes per room.
CREATE TABLE room_bans (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE room_mutes (
    room_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
