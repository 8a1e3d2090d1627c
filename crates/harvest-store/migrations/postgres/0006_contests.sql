-- Contests, PK matches, judges' entries and per-second like tallies.
--
-- A contest's record is derived, never copied: the orders paid in its participants'
-- rooms (with their refunds), the rooms' like tallies, the judges' entries and the
-- results of its matches. Settlement stores the frozen standings and audit once
-- (`settled_at IS NULL` guards the write), and `harvest contest replay` recomputes
-- them from that record.

CREATE TABLE contests (
    id             TEXT PRIMARY KEY NOT NULL,
    organizer_id   TEXT NOT NULL,
    title          TEXT NOT NULL,
    starts_at      BIGINT NOT NULL,
    ends_at        BIGINT NOT NULL,
    settle_grace_s BIGINT NOT NULL CHECK (settle_grace_s >= 0),
    -- The rules (window, grace, scoring with defaults filled in) as JSON.
    rules          TEXT NOT NULL,
    -- The participants, in contest order, as a JSON array.
    participants   TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    settled_at     BIGINT,
    -- The frozen results at settlement: {"standings": ..., "audit": ...}.
    results        TEXT
);
CREATE INDEX contests_open ON contests (settled_at, id);

-- Which rooms take part in which contest (a room may be in several contests).
CREATE TABLE contest_rooms (
    contest_id     TEXT NOT NULL REFERENCES contests (id),
    room_id        TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    PRIMARY KEY (contest_id, room_id)
);
CREATE INDEX contest_rooms_room ON contest_rooms (room_id, contest_id);

-- PK matches. `phase` is what the rooms have been told (pk.started, pk.ended), moved
-- with a compare-and-set so each is announced once; `scores` and `winner_ids` (JSON)
-- are frozen when the match ends.
CREATE TABLE contest_matches (
    id              TEXT PRIMARY KEY NOT NULL,
    contest_id      TEXT NOT NULL REFERENCES contests (id),
    participant_ids TEXT NOT NULL,
    starts_at       BIGINT NOT NULL,
    ends_at         BIGINT NOT NULL,
    metric          TEXT NOT NULL,
    phase           TEXT NOT NULL CHECK (phase IN ('scheduled', 'live', 'ended')),
    scores          TEXT,
    winner_ids      TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX contest_matches_contest ON contest_matches (contest_id, id);
CREATE INDEX contest_matches_phase ON contest_matches (phase, id);

-- Every judge's entry, in the order received; a judge's later entry replaces the
-- earlier one when scoring.
CREATE TABLE contest_judge_entries (
    id         TEXT PRIMARY KEY NOT NULL,
    contest_id TEXT NOT NULL REFERENCES contests (id),
    judge      TEXT NOT NULL,
    scores     TEXT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX contest_judge_entries_contest ON contest_judge_entries (contest_id, id);

-- Likes each room received per second (Unix seconds), summed over every node.
CREATE TABLE room_like_tallies (
    room_id TEXT NOT NULL,
    second  BIGINT NOT NULL,
    count   BIGINT NOT NULL CHECK (count >= 0),
    PRIMARY KEY (room_id, second)
);
