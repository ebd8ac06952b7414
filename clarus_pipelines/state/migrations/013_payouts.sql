-- Shopify Payments payouts and their balance transactions, read per UTC day of issue, and how
-- each matched our records (`domain.payouts`). Every table is replaced per payout_date
-- (delete-then-insert), so a backfill of a day writes the same rows again.

CREATE TABLE shopify_payouts (
    payout_id         VARCHAR PRIMARY KEY,      -- Shopify's legacyResourceId (numeric, as text)
    payout_gid        VARCHAR NOT NULL,         -- gid://shopify/ShopifyPaymentsPayout/...
    payout_date       DATE NOT NULL,            -- UTC day it was issued (the partition)
    issued_at         TIMESTAMP NOT NULL,       -- UTC
    status            VARCHAR NOT NULL,         -- SCHEDULED, IN_TRANSIT, PAID, FAILED, CANCELED
    transaction_type  VARCHAR,                  -- DEPOSIT or WITHDRAWAL
    currency          VARCHAR NOT NULL,
    net               DECIMAL(18, 2) NOT NULL,  -- what reaches (or leaves) the bank
    summary           JSON,                     -- Shopify's gross and fee per kind (charges, refunds, adjustments...)
    read_at           TIMESTAMP NOT NULL
);

CREATE TABLE shopify_balance_transactions (
    transaction_id               VARCHAR PRIMARY KEY,  -- gid://shopify/ShopifyPaymentsBalanceTransaction/...
    payout_id                    VARCHAR NOT NULL,
    payout_date                  DATE NOT NULL,
    type                         VARCHAR NOT NULL,     -- CHARGE, REFUND, ADJUSTMENT, CHARGEBACK_FEE...
    source_type                  VARCHAR,
    source_id                    VARCHAR,
    source_order_transaction_id  VARCHAR,              -- the order transaction (sale or refund) behind it
    order_id                     VARCHAR,              -- associatedOrder, numeric as text
    order_name                   VARCHAR,
    transaction_date             TIMESTAMP NOT NULL,   -- UTC
    currency                     VARCHAR NOT NULL,
    amount                       DECIMAL(18, 2) NOT NULL,
    fee                          DECIMAL(18, 2) NOT NULL,
    net                          DECIMAL(18, 2) NOT NULL,
    test                         BOOLEAN,
    read_at                      TIMESTAMP NOT NULL
);
CREATE INDEX shopify_balance_transactions_payout ON shopify_balance_transactions (payout_id);

-- One row per payout (line_no 0) and per transaction matched or missing (line_no 1..).
CREATE TABLE payout_matches (
    payout_date     DATE NOT NULL,
    payout_id       VARCHAR NOT NULL,
    line_no         INTEGER NOT NULL,
    kind            VARCHAR NOT NULL,          -- payout, charge, refund, other
    transaction_id  VARCHAR,                   -- NULL for the payout row and for what Shopify is missing
    order_id        VARCHAR,
    order_name      VARCHAR,
    refund_id       VARCHAR,
    currency        VARCHAR,
    status          VARCHAR NOT NULL,          -- ok, mismatch, review (a type we cannot match, booked by hand)
    problems        VARCHAR,
    shopify_amount  DECIMAL(18, 2),
    our_amount      DECIMAL(18, 2),
    shopify_fee     DECIMAL(18, 2),
    expected_fee    DECIMAL(18, 2),
    shopify_net     DECIMAL(18, 2),
    expected_net    DECIMAL(18, 2),
    difference      DECIMAL(18, 2),            -- Shopify's net less the net expected from our records
    matched_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (payout_id, line_no)
);
CREATE INDEX payout_matches_date ON payout_matches (payout_date);
