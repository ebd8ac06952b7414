-- Refunds and returns: how each Shopify refund was classified, why, what follows, and how
-- far each follow-up got (001 created `refunds` with kind, reasons, amount, state).

ALTER TABLE refunds ADD COLUMN order_name VARCHAR;
ALTER TABLE refunds ADD COLUMN candidates VARCHAR[];           -- kinds it fitted (two or more: UNCLASSIFIED)
ALTER TABLE refunds ADD COLUMN actions JSON;                   -- planned actions, as explain-refund prints them
ALTER TABLE refunds ADD COLUMN currency VARCHAR;
ALTER TABLE refunds ADD COLUMN shipping_amount DECIMAL(18, 2);
ALTER TABLE refunds ADD COLUMN processed_at TIMESTAMP;         -- in Shopify (UTC)
ALTER TABLE refunds ADD COLUMN via VARCHAR;                    -- webhook, reconciliation, replay, order (embedded in an order body)
ALTER TABLE refunds ADD COLUMN landing_id VARCHAR;             -- the landed event it was first read from
ALTER TABLE refunds ADD COLUMN classified_at TIMESTAMP;
ALTER TABLE refunds ADD COLUMN return_reference VARCHAR;       -- Clarus goods-in receipt reference (returns)
ALTER TABLE refunds ADD COLUMN clarus_receipt_id VARCHAR;
ALTER TABLE refunds ADD COLUMN return_due_at TIMESTAMP;        -- receipt expected by (RETURN_NOT_RECEIVED after)
ALTER TABLE refunds ADD COLUMN return_received_at TIMESTAMP;
ALTER TABLE refunds ADD COLUMN last_error VARCHAR;

CREATE TABLE refund_lines (
    refund_id          VARCHAR NOT NULL,
    line_id            VARCHAR NOT NULL,       -- Shopify line item id
    sku                VARCHAR,                -- cleaned
    quantity           INTEGER NOT NULL,       -- refunded
    ordered_quantity   INTEGER,                -- on the order line, before any refund
    restock_type       VARCHAR,
    dispatch           VARCHAR,                -- dispatched, not_dispatched, partial, unknown (when classified)
    physical           BOOLEAN NOT NULL,
    kind               VARCHAR,
    amount             DECIMAL(18, 2),
    received_quantity  INTEGER NOT NULL DEFAULT 0,   -- returns: received in Clarus so far
    PRIMARY KEY (refund_id, line_id)
);

-- One row per planned action of a refund and how far it got. Remote writes are also keyed
-- in outbound_writes (refund:<action>:<refund id>), so a retry never posts twice.
CREATE TABLE refund_steps (
    refund_id   VARCHAR NOT NULL,
    seq         INTEGER NOT NULL,              -- order of execution
    action      VARCHAR NOT NULL,              -- CLARUS_EXPECT_GOODS_IN, NETSUITE_CREDIT_MEMO...
    system      VARCHAR NOT NULL,              -- clarus, netsuite, shopify, pipeline
    status      VARCHAR NOT NULL,              -- pending, done, skipped, blocked, rejected, exception
    remote_id   VARCHAR,
    detail      VARCHAR,                       -- what happened, in words
    attempts    INTEGER NOT NULL DEFAULT 0,
    updated_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (refund_id, action)
);
