-- With several nodes, one node at a time pushes a contest's live scores and standings
-- to its rooms: it holds a lease on the contest, renewed every second, that another
-- node takes over once it lapses.
ALTER TABLE contests ADD COLUMN pusher TEXT;
ALTER TABLE contests ADD COLUMN pusher_until BIGINT;
