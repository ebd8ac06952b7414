-- Dispatch back to the channel: what 001's shipments tables lack for the ERP-gated,
-- resumable sequence DISPATCHED_IN_WMS -> ERP_ORDER_CONFIRMED -> ITEM_FULFILMENT_POSTED
-- -> CHANNEL_FULFILLED -> CHANNEL_CONFIRMED, and for the tracking checks.

ALTER TABLE shipments ADD COLUMN clarus_reference VARCHAR;         -- goods out reference (#1001, #1001-R1)
ALTER TABLE shipments ADD COLUMN carrier_raw VARCHAR;              -- carrier as Clarus named it
ALTER TABLE shipments ADD COLUMN tracking_raw VARCHAR;             -- tracking number as Clarus sent it
ALTER TABLE shipments ADD COLUMN tracking_status VARCHAR;          -- ok, missing, invalid, unchecked
ALTER TABLE shipments ADD COLUMN tracking_reason VARCHAR;
ALTER TABLE shipments ADD COLUMN netsuite_sales_order_id VARCHAR;
ALTER TABLE shipments ADD COLUMN source VARCHAR;                   -- webhook or sweep: how we learned of it
ALTER TABLE shipments ADD COLUMN first_seen_at TIMESTAMP;          -- when we learned of the dispatch
ALTER TABLE shipments ADD COLUMN erp_checked_at TIMESTAMP;         -- last time NetSuite was asked
ALTER TABLE shipments ADD COLUMN erp_wait_reason VARCHAR;          -- why the dispatch is still held for the ERP
ALTER TABLE shipments ADD COLUMN erp_confirmed_at TIMESTAMP;
ALTER TABLE shipments ADD COLUMN fulfilment_posted_at TIMESTAMP;   -- NetSuite item fulfilment created
ALTER TABLE shipments ADD COLUMN channel_fulfilled_at TIMESTAMP;   -- Shopify fulfilment created
ALTER TABLE shipments ADD COLUMN channel_confirmed_at TIMESTAMP;   -- Shopify fulfilment read back
ALTER TABLE shipments ADD COLUMN attempts INTEGER DEFAULT 0;       -- failed attempts at the current step
ALTER TABLE shipments ADD COLUMN last_error VARCHAR;
ALTER TABLE shipments ADD COLUMN next_attempt_at TIMESTAMP;        -- not before (backoff after a failure)
ALTER TABLE shipments ADD COLUMN tracking_sent VARCHAR;            -- the tracking number Shopify has for it

-- The Shopify line item a shipped SKU belongs to, when Clarus carried it on the line
-- (external_system_reference1); NULL when several order lines share the SKU.
ALTER TABLE shipment_lines ADD COLUMN line_id VARCHAR;

-- Landed Clarus goods out events the dispatch flow has taken in, and with what outcome.
CREATE TABLE dispatch_landings (
    landing_id     VARCHAR PRIMARY KEY,
    goods_out_id   VARCHAR,
    outcome        VARCHAR NOT NULL,       -- recorded, duplicate, no_shipments, order_unknown, unparseable
    shipments_new  INTEGER NOT NULL DEFAULT 0,
    processed_at   TIMESTAMP NOT NULL
);

-- Dispatched goods outs we could not tie to an order yet (its Clarus binding may arrive
-- later, e.g. after an unacknowledged create is reconciled). Retried on every run.
CREATE TABLE dispatch_unmatched (
    goods_out_id   VARCHAR PRIMARY KEY,
    reference      VARCHAR,
    record         JSON NOT NULL,          -- the latest goods out record seen
    source         VARCHAR NOT NULL,       -- webhook or sweep
    first_seen_at  TIMESTAMP NOT NULL,
    last_tried_at  TIMESTAMP NOT NULL,
    tries          INTEGER NOT NULL
);

-- Each reconciliation sweep of Clarus shipments: its window and what it found.
CREATE TABLE dispatch_sweeps (
    run_at         TIMESTAMP NOT NULL PRIMARY KEY,
    window_start   TIMESTAMP NOT NULL,
    checked        INTEGER NOT NULL,       -- shipments read from Clarus
    shipments_new  INTEGER NOT NULL,       -- recorded by the sweep (no webhook had brought them)
    run_id         VARCHAR
);
