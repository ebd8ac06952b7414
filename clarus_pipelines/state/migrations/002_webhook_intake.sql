-- Webhook intake: landed webhooks parsed into events, refusals at the door, and what the
-- reconciliation reads found that no webhook brought.

-- Every landed event once (by landing id, and by the event's dedupe key per source).
-- Flows read new events in ingest order: WHERE seq > <their last seq> AND topic IN (...);
-- seq only grows, so DuckDB's zone maps skip everything already read.
CREATE SEQUENCE landed_events_seq;
CREATE TABLE landed_events (
    landing_id        VARCHAR PRIMARY KEY,      -- landing file id = receive time, e.g. 20250101T120000.123456Z
    seq               BIGINT NOT NULL DEFAULT nextval('landed_events_seq'),
    source            VARCHAR NOT NULL,         -- shopify, clarus, netsuite
    topic             VARCHAR NOT NULL,         -- orders/create, refunds/create, goods_out/completed, salesorder/update...
    known_topic       BOOLEAN NOT NULL,         -- false: stored and flagged, no flow handles it
    entity_type       VARCHAR NOT NULL,         -- order, refund, fulfillment, goods_out, goods_in, salesorder...
    entity_id         VARCHAR,                  -- Shopify order id, Clarus goods out id, NetSuite internal id
    parent_id         VARCHAR,                  -- the order of a refund or fulfilment; our reference on a goods out
    entity_updated_at TIMESTAMP,                -- the entity's own last change (UTC), when the payload says
    received_at       TIMESTAMP NOT NULL,       -- when we received it (UTC)
    webhook_id        VARCHAR,                  -- X-Shopify-Webhook-Id, X-NetSuite-Event-Id, Clarus content hash
    dedupe_key        VARCHAR NOT NULL,
    payload           JSON NOT NULL,            -- the webhook body as received
    via               VARCHAR NOT NULL,         -- webhook, reconciliation, replay
    replay_of         VARCHAR,                  -- landing id a replay re-submitted
    ingested_at       TIMESTAMP NOT NULL
);

-- How far each downstream flow has read landed_events.
CREATE TABLE event_consumers (
    consumer    VARCHAR PRIMARY KEY,
    last_seq    BIGINT NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);

-- Refused posts (bad signature or token), counted per minute; no body, no sender address.
CREATE TABLE webhook_rejections (
    minute   TIMESTAMP NOT NULL,
    source   VARCHAR NOT NULL,
    reason   VARCHAR NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (minute, source, reason)
);

-- How much of each rejection log file has been counted.
CREATE TABLE webhook_rejection_offsets (
    log_file    VARCHAR PRIMARY KEY,
    bytes_read  BIGINT NOT NULL
);

-- One row per reconciliation read: how many records it checked and how many no webhook had brought.
CREATE TABLE reconciliation_runs (
    run_at        TIMESTAMP NOT NULL,
    source        VARCHAR NOT NULL,
    entity_type   VARCHAR NOT NULL,
    window_start  TIMESTAMP NOT NULL,
    checked       INTEGER NOT NULL,
    missed        INTEGER NOT NULL,
    run_id        VARCHAR,
    PRIMARY KEY (run_at, source, entity_type)
);

-- Each version of a record the reconciliation found that no webhook had brought (and landed).
CREATE TABLE reconciliation_findings (
    source       VARCHAR NOT NULL,
    entity_type  VARCHAR NOT NULL,
    entity_id    VARCHAR NOT NULL,
    version      VARCHAR NOT NULL,              -- updated_at or status that was missing
    topic        VARCHAR NOT NULL,
    found_at     TIMESTAMP NOT NULL,
    landing_id   VARCHAR,
    PRIMARY KEY (source, entity_type, entity_id, version)
);
