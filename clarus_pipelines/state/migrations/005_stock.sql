-- Stock: Clarus balances -> available to sell -> Shopify inventory levels, as deltas.

-- 001's hourly snapshots also keep what Clarus says is physically there.
ALTER TABLE stock_snapshots ADD COLUMN on_hand INTEGER;
ALTER TABLE stock_snapshots ADD COLUMN run_id VARCHAR;

-- The newest balance per product, warehouse and account from any snapshot (hourly, a
-- backfill or a webhook-triggered refresh of some SKUs): what available-to-sell reads.
CREATE TABLE stock_balances_current (
    clarus_product_id VARCHAR NOT NULL,
    sku               VARCHAR NOT NULL,        -- cleaned
    warehouse_id      VARCHAR NOT NULL,
    account_id        VARCHAR NOT NULL,
    available         INTEGER NOT NULL,
    allocated         INTEGER NOT NULL,
    on_hold           INTEGER NOT NULL,
    on_hand           INTEGER,
    taken_at          TIMESTAMP NOT NULL,
    PRIMARY KEY (clarus_product_id, warehouse_id, account_id)
);

-- Shopify variants with a SKU and inventory item, as last read by the stock flow.
CREATE TABLE stock_inventory_items (
    variant_id        VARCHAR PRIMARY KEY,
    inventory_item_id VARCHAR,
    sku               VARCHAR,                 -- cleaned; NULL when the variant has none
    sku_raw           VARCHAR,
    price             DECIMAL(18, 2),
    read_at           TIMESTAMP NOT NULL
);

-- Last known unit value per SKU (kept after its variant disappears): values stranded stock.
CREATE TABLE stock_sku_values (
    sku         VARCHAR PRIMARY KEY,
    unit_value  DECIMAL(18, 2) NOT NULL,
    source      VARCHAR NOT NULL,              -- shopify_variant_price
    seen_at     TIMESTAMP NOT NULL
);

-- What each Shopify location may sell of each SKU, as last computed.
CREATE TABLE available_to_sell (
    sku               VARCHAR NOT NULL,
    location_id       VARCHAR NOT NULL,
    clarus_available  INTEGER NOT NULL,
    buffer            INTEGER NOT NULL,
    unsent            INTEGER NOT NULL,        -- on orders accepted by Shopify, not yet in Clarus
    quantity          INTEGER NOT NULL,
    computed_at       TIMESTAMP NOT NULL,
    PRIMARY KEY (sku, location_id)
);

-- The last quantity we set per Shopify inventory item and location: the delta baseline.
CREATE TABLE stock_pushes (
    inventory_item_id VARCHAR NOT NULL,
    location_id       VARCHAR NOT NULL,
    sku               VARCHAR,
    quantity          INTEGER NOT NULL,
    pushed_at         TIMESTAMP NOT NULL,
    run_id            VARCHAR,
    PRIMARY KEY (inventory_item_id, location_id)
);

-- Every set sent, for the audit trail and the dashboard.
CREATE TABLE stock_push_log (
    pushed_at         TIMESTAMP NOT NULL,
    inventory_item_id VARCHAR NOT NULL,
    location_id       VARCHAR NOT NULL,
    sku               VARCHAR,
    quantity          INTEGER NOT NULL,
    previous          INTEGER,                 -- baseline it replaced; NULL when first set
    run_id            VARCHAR
);

-- Shopify's inventory levels as last read back (for STOCK_MISMATCH).
CREATE TABLE stock_shopify_levels (
    inventory_item_id VARCHAR NOT NULL,
    location_id       VARCHAR NOT NULL,
    available         INTEGER,
    read_at           TIMESTAMP NOT NULL,
    PRIMARY KEY (inventory_item_id, location_id)
);
