-- Item master and orders into the warehouse: what 001 lacks.

-- Every NetSuite item as last read, before de-duplication: the item master checks run
-- over this (two raw SKUs can clean to the same SKU; `items` can only hold one of them).
CREATE TABLE item_master_source (
    netsuite_item_id  VARCHAR PRIMARY KEY,
    sku_raw           VARCHAR,                  -- NetSuite's itemId as read, never a number
    sku               VARCHAR,                  -- cleaned per policies.sku_cleaning
    description       VARCHAR,
    barcode           VARCHAR,
    is_inactive       BOOLEAN NOT NULL DEFAULT false,
    read_at           TIMESTAMP NOT NULL
);

-- Shopify variants as last read, for SKU_NOT_IN_MASTER / SKU_LEADING_ZEROS_LOST.
CREATE TABLE shopify_variants (
    variant_id        VARCHAR PRIMARY KEY,
    product_id        VARCHAR,
    sku_raw           VARCHAR,
    sku               VARCHAR,                  -- cleaned
    title             VARCHAR,
    barcode           VARCHAR,
    inventory_item_id VARCHAR,
    read_at           TIMESTAMP NOT NULL
);

-- Clarus carrier and service ids for the ship-method table's codes.
CREATE TABLE clarus_carriers (
    carrier            VARCHAR NOT NULL,        -- carrier code, as in policies.ship_methods
    service            VARCHAR NOT NULL,        -- service code
    carrier_id         VARCHAR NOT NULL,
    carrier_service_id VARCHAR,
    read_at            TIMESTAMP NOT NULL,
    PRIMARY KEY (carrier, service)
);

ALTER TABLE orders ADD COLUMN shopify_updated_at VARCHAR;     -- as Shopify wrote it (with offset)
ALTER TABLE orders ADD COLUMN shopify_cancelled_at VARCHAR;
ALTER TABLE orders ADD COLUMN held_since TIMESTAMP;
ALTER TABLE orders ADD COLUMN last_checked_at TIMESTAMP;      -- last validation against Shopify data
ALTER TABLE orders ADD COLUMN clarus_reference VARCHAR;       -- reference of the live goods out (#1001, #1001-R1)
ALTER TABLE orders ADD COLUMN replacement_count INTEGER DEFAULT 0;
ALTER TABLE orders ADD COLUMN sent_body JSON;                 -- the goods out body Clarus has (for edit diffs)
ALTER TABLE orders ADD COLUMN change_pending VARCHAR;         -- NULL, 'edit' or 'cancel': waits for the order-changes step
ALTER TABLE orders ADD COLUMN change_cause VARCHAR;

ALTER TABLE order_lines ADD COLUMN ships BOOLEAN;             -- goes to the warehouse (needs shipping, quantity > 0)
ALTER TABLE order_lines ADD COLUMN clarus_product_id VARCHAR;
ALTER TABLE order_lines ADD COLUMN clarus_line_id VARCHAR;
ALTER TABLE order_lines ADD COLUMN sent_quantity INTEGER;     -- quantity Clarus has for the line

-- Why each held order is held: every problem, not only the first.
CREATE TABLE order_holds (
    order_id    VARCHAR NOT NULL,
    code        VARCHAR NOT NULL,                -- ORDER_INCOMPLETE, SKU_UNKNOWN, SHIP_METHOD_UNMAPPED
    message     VARCHAR NOT NULL,
    held_since  TIMESTAMP NOT NULL,
    PRIMARY KEY (order_id, code, message)
);

-- Landed order webhooks (and reconciliation reads) the orders flow has taken in.
CREATE TABLE order_landings (
    landing_id    VARCHAR PRIMARY KEY,
    order_id      VARCHAR,
    topic         VARCHAR NOT NULL,
    outcome       VARCHAR NOT NULL,              -- applied, stale, duplicate, unparseable
    processed_at  TIMESTAMP NOT NULL
);

