-- The room event log: every sequenced room event, in order, per room and epoch.
CREATE TABLE room_logs (
    room_id  TEXT PRIMARY KEY NOT NULL,
    epoch    TEXT NOT NULL,
    last_seq BIGINT NOT NULL
);

CREATE TABLE room_events (
    room_id    TEXT NOT NULL,
    epoch      TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    ts         BIGINT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (room_id, epoch, seq)
);
CREATE INDEX room_events_ts ON room_events (ts);
