-- Integration state. Every id from another system is VARCHAR: ids and SKUs are exact
-- strings ("000123" is not 123), and Shopify ids overflow JavaScript numbers anyway.

-- Item master: NetSuite items after SKU cleaning, with the Clarus product id once created.
CREATE TABLE items (
    sku               VARCHAR PRIMARY KEY,      -- cleaned SKU, the comparison key everywhere
    sku_raw           VARCHAR NOT NULL,         -- as NetSuite holds it
    description       VARCHAR,
    barcode           VARCHAR,
    netsuite_item_id  VARCHAR,
    clarus_product_id VARCHAR,
    content_hash      VARCHAR,                  -- of what was last sent to Clarus
    updated_at        TIMESTAMP NOT NULL
);

-- Id bindings: our id <-> Clarus id <-> NetSuite id <-> Shopify id, per entity type.
-- A write to another system is looked up here (and by reference in that system) first.
CREATE TABLE bindings (
    entity_type  VARCHAR NOT NULL,   -- product, order, shipment, refund, fulfilment...
    our_id       VARCHAR NOT NULL,
    clarus_id    VARCHAR,
    netsuite_id  VARCHAR,
    shopify_id   VARCHAR,
    created_at   TIMESTAMP NOT NULL,
    updated_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (entity_type, our_id)
);

-- Orders as received from Shopify, and where each one is in its journey.
CREATE TABLE orders (
    order_id          VARCHAR PRIMARY KEY,      -- Shopify order id
    order_name        VARCHAR NOT NULL,         -- e.g. #1001; our reference in Clarus
    status            VARCHAR NOT NULL,         -- RECEIVED, HELD, READY, SENT_TO_ERP, SENT_TO_WMS, ACKNOWLEDGED, DISPATCHED, CANCELLED...
    hold_reasons      VARCHAR[],
    financial_status  VARCHAR,
    currency          VARCHAR,
    total_price       DECIMAL(18, 2),
    shipping_country  VARCHAR,
    shipping_method   VARCHAR,
    clarus_status     INTEGER,                  -- Clarus goods out status 1..8
    payload           JSON,                     -- the latest Shopify order body
    payload_hash      VARCHAR,
    created_at        TIMESTAMP,                -- in Shopify
    received_at       TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL
);

CREATE TABLE order_lines (
    order_id     VARCHAR NOT NULL,
    line_id      VARCHAR NOT NULL,              -- Shopify line item id
    sku          VARCHAR,                       -- cleaned
    sku_raw      VARCHAR,
    quantity     INTEGER NOT NULL,
    price        DECIMAL(18, 2),
    title        VARCHAR,
    PRIMARY KEY (order_id, line_id)
);

-- Every transition an order makes, with time and cause: the order's journey.
CREATE SEQUENCE order_events_seq;
CREATE TABLE order_events (
    event_id   BIGINT PRIMARY KEY DEFAULT nextval('order_events_seq'),
    order_id   VARCHAR NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    system     VARCHAR NOT NULL,                -- shopify, clarus, netsuite, pipeline
    state      VARCHAR NOT NULL,
    cause      VARCHAR,
    details    JSON
);

-- Dispatches from Clarus and their progress back to NetSuite and Shopify.
CREATE TABLE shipments (
    shipment_id        VARCHAR PRIMARY KEY,     -- Clarus shipment id
    order_id           VARCHAR NOT NULL,
    clarus_goods_out_id VARCHAR,
    carrier            VARCHAR,
    service            VARCHAR,
    tracking_number    VARCHAR,
    tracking_url       VARCHAR,
    state              VARCHAR NOT NULL,        -- DISPATCHED_IN_WMS, ERP_ORDER_CONFIRMED, ITEM_FULFILMENT_POSTED, CHANNEL_FULFILLED, CHANNEL_CONFIRMED
    netsuite_fulfilment_id VARCHAR,
    shopify_fulfilment_id  VARCHAR,
    dispatched_at      TIMESTAMP,
    updated_at         TIMESTAMP NOT NULL
);

CREATE TABLE shipment_lines (
    shipment_id  VARCHAR NOT NULL,
    sku          VARCHAR NOT NULL,
    quantity     INTEGER NOT NULL,
    PRIMARY KEY (shipment_id, sku)
);

CREATE TABLE refunds (
    refund_id      VARCHAR PRIMARY KEY,         -- Shopify refund id
    order_id       VARCHAR NOT NULL,
    kind           VARCHAR,                     -- RETURN, CANCELLATION, GOODWILL, SHIPPING_ONLY, EXCHANGE, UNCLASSIFIED
    reasons        VARCHAR[],
    amount         DECIMAL(18, 2),
    state          VARCHAR NOT NULL,
    payload        JSON,
    received_at    TIMESTAMP NOT NULL,
    updated_at     TIMESTAMP NOT NULL
);

-- Clarus stock balances per hour partition (delete-then-insert per partition).
CREATE TABLE stock_snapshots (
    snapshot_hour   TIMESTAMP NOT NULL,
    taken_at        TIMESTAMP NOT NULL,
    clarus_product_id VARCHAR NOT NULL,
    sku             VARCHAR NOT NULL,
    warehouse_id    VARCHAR NOT NULL,
    account_id      VARCHAR NOT NULL,
    available       INTEGER NOT NULL,
    allocated       INTEGER NOT NULL,
    on_hold         INTEGER NOT NULL
);

-- The exception queue, keyed by (code, entity_id): raising twice never duplicates.
CREATE TABLE exceptions (
    code          VARCHAR NOT NULL,
    entity_id     VARCHAR NOT NULL,
    entity_type   VARCHAR NOT NULL,
    owner         VARCHAR NOT NULL,
    severity      VARCHAR NOT NULL,
    status        VARCHAR NOT NULL,             -- open, acknowledged, resolved
    message       VARCHAR NOT NULL,
    details       JSON,
    first_seen    TIMESTAMP NOT NULL,
    last_seen     TIMESTAMP NOT NULL,
    occurrences   INTEGER NOT NULL,
    resolved_at   TIMESTAMP,
    resolved_by   VARCHAR,                      -- auto or a person's name
    note          VARCHAR,
    PRIMARY KEY (code, entity_id)
);

CREATE SEQUENCE exception_events_seq;
CREATE TABLE exception_events (
    event_id   BIGINT PRIMARY KEY DEFAULT nextval('exception_events_seq'),
    code       VARCHAR NOT NULL,
    entity_id  VARCHAR NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    action     VARCHAR NOT NULL,                -- raised, reopened, acknowledged, resolved, auto_resolved
    actor      VARCHAR NOT NULL,
    note       VARCHAR
);

-- Landed webhooks already turned into state: processing a landing twice is a no-op.
CREATE TABLE processed_landings (
    landing_id    VARCHAR PRIMARY KEY,
    source        VARCHAR NOT NULL,
    topic         VARCHAR NOT NULL,
    processed_at  TIMESTAMP NOT NULL,
    run_id        VARCHAR
);

-- Outbound writes by idempotency key: a retry reuses the stored result.
CREATE TABLE outbound_writes (
    idempotency_key VARCHAR PRIMARY KEY,        -- e.g. clarus:goods_out:#1001
    system          VARCHAR NOT NULL,
    operation       VARCHAR NOT NULL,
    remote_id       VARCHAR,
    status          VARCHAR NOT NULL,           -- pending, done, failed
    attempts        INTEGER NOT NULL,
    last_error      VARCHAR,
    created_at      TIMESTAMP NOT NULL,
    updated_at      TIMESTAMP NOT NULL
);
