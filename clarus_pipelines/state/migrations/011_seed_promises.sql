-- Issue 16: the seed's promises.

-- Shopify fulfilments seen in fulfillments/create webhooks, and whether the warehouse made
-- them. Clarus decides fulfilment: one made by hand in Shopify admin or by another app is
-- FULFILLED_OUTSIDE_WMS, and the policy decides what follows for the goods out.
CREATE TABLE channel_fulfilments (
    fulfilment_id    VARCHAR PRIMARY KEY,       -- Shopify fulfilment id
    order_id         VARCHAR,                   -- Shopify order id
    tracking_number  VARCHAR,
    shopify_created_at TIMESTAMP,
    seen_at          TIMESTAMP NOT NULL,        -- when the webhook reached our state
    landing_id       VARCHAR,
    verdict          VARCHAR,                   -- NULL: not judged yet; ours; outside
    decided_at       TIMESTAMP,
    action           VARCHAR,                   -- hold, cancel (policy at the time of the verdict)
    action_status    VARCHAR,                   -- pending, done, held, too_late, refused, nothing_to_do
    action_detail    VARCHAR,
    updated_at       TIMESTAMP NOT NULL
);

-- Live health: each scheduled authenticated read of a system (a fresh token and a one-row
-- read), so the health page and CONNECTOR_FAILING know a system answers even when no
-- order is moving.
CREATE TABLE connector_probes (
    system      VARCHAR NOT NULL,               -- shopify, clarus, netsuite
    probed_at   TIMESTAMP NOT NULL,
    ok          BOOLEAN NOT NULL,
    latency_ms  DOUBLE,
    error       VARCHAR,
    PRIMARY KEY (system, probed_at)
);

-- Stock history: a backfilled past hour is rebuilt from Clarus's transaction history. Only
-- on-hand can be rebuilt (allocations and holds leave no transaction), so a rebuilt row
-- has on_hand and leaves available / allocated / on_hold unknown (NULL).
ALTER TABLE stock_snapshots ALTER COLUMN available DROP NOT NULL;
ALTER TABLE stock_snapshots ALTER COLUMN allocated DROP NOT NULL;
ALTER TABLE stock_snapshots ALTER COLUMN on_hold DROP NOT NULL;
ALTER TABLE stock_snapshots ADD COLUMN source VARCHAR DEFAULT 'read';  -- read (balances as read) or rebuilt
