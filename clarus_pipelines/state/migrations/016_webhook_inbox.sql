-- The webhook inbox: in PostgreSQL mode (CLARUS_PIPELINES_STATE_URL=postgresql://...) each
-- accepted webhook is one row here, committed before the receiver answers 2xx, instead of
-- one file in the landing zone. It holds what a landing file holds. Any number of receivers
-- insert side by side; ingest reads "new since seq N" (receiver/inbox.py explains why a
-- reader never skips a row committed late). Written in the SQL both PostgreSQL and DuckDB
-- accept, so the DuckDB state carries the same (unused, empty) table.
CREATE SEQUENCE IF NOT EXISTS webhook_inbox_seq;
CREATE TABLE IF NOT EXISTS webhook_inbox (
    seq                BIGINT PRIMARY KEY DEFAULT nextval('webhook_inbox_seq'),  -- ingest order
    landing_id         VARCHAR NOT NULL UNIQUE,  -- receive time, e.g. 20250101T120000.123456Z, as a landing file's
    source             VARCHAR NOT NULL,         -- shopify, clarus, netsuite
    topic              VARCHAR NOT NULL,         -- orders/create, goods_out/completed, ... or unknown
    known_topic        BOOLEAN NOT NULL,         -- false: kept and flagged, no flow handles it
    dedupe_key         VARCHAR,                  -- one row per (source, dedupe_key); NULL for a quarantined body
    webhook_id         VARCHAR,                  -- X-Shopify-Webhook-Id, X-NetSuite-Event-Id, Clarus content hash
    received_at        TIMESTAMP NOT NULL,       -- when we received it (UTC)
    via                VARCHAR NOT NULL,         -- webhook, reconciliation, replay
    replay_of          VARCHAR,                  -- landing id a replay re-submitted
    headers            VARCHAR NOT NULL,         -- the kept headers as a JSON object (signatures, topic, ids)
    body               BYTEA NOT NULL,           -- the exact body bytes as received
    quarantined        BOOLEAN NOT NULL DEFAULT false,  -- refused at the door (outside the body contract): never ingested
    quarantine_reason  VARCHAR,
    UNIQUE (source, dedupe_key)
);

-- Posts refused at the door (bad signature or token) in PostgreSQL mode: no body, no sender
-- address; what the file mode appends to _rejections/<day>.jsonl.
CREATE SEQUENCE IF NOT EXISTS webhook_inbox_rejections_seq;
CREATE TABLE IF NOT EXISTS webhook_inbox_rejections (
    seq         BIGINT PRIMARY KEY DEFAULT nextval('webhook_inbox_rejections_seq'),
    refused_at  TIMESTAMP NOT NULL,
    source      VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL
);
