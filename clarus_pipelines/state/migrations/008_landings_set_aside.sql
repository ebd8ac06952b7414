-- Landings ingest could not store (outside the body contract, unreadable file): each is set
-- aside on its own with the reason, so the rest of its batch goes on. A set-aside landing
-- is also in processed_landings (nothing waits on it); LANDING_SET_ASIDE tells the
-- integration engineer, who fixes the sender and replays it.
CREATE TABLE landings_set_aside (
    landing_id    VARCHAR PRIMARY KEY,
    source        VARCHAR NOT NULL,
    topic         VARCHAR NOT NULL,
    reason        VARCHAR NOT NULL,   -- the first cause, e.g. "JSON string holds a lone UTF-16 surrogate"
    set_aside_at  TIMESTAMP NOT NULL,
    run_id        VARCHAR
);
