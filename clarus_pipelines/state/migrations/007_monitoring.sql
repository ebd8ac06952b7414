-- Monitoring: alerts sent to owners, health history, finance reconciliation reports,
-- orphan-order checks and data-quality results.

-- One alert per exception episode and reason: what was (or is to be) told to the owner.
-- An episode starts when the exception is raised or reopened, so a re-run never repeats
-- an alert, while a problem that comes back is news again.
CREATE TABLE alerts (
    code               VARCHAR NOT NULL,
    entity_id          VARCHAR NOT NULL,
    reason             VARCHAR NOT NULL,        -- new, sla_breach
    episode_started_at TIMESTAMP NOT NULL,      -- the raise/reopen the alert is about
    owner              VARCHAR NOT NULL,
    severity           VARCHAR NOT NULL,
    title              VARCHAR NOT NULL,
    text               VARCHAR NOT NULL,        -- masked: safe to send and to show
    sla_minutes        INTEGER NOT NULL,
    due_at             TIMESTAMP NOT NULL,      -- when the alert became due
    PRIMARY KEY (code, entity_id, reason, episode_started_at)
);

-- Each alert's delivery on each of its owner's channels.
CREATE TABLE alert_deliveries (
    code               VARCHAR NOT NULL,
    entity_id          VARCHAR NOT NULL,
    reason             VARCHAR NOT NULL,
    episode_started_at TIMESTAMP NOT NULL,
    channel            VARCHAR NOT NULL,        -- e.g. slack:ops, email:finance, webhook:integration:2
    status             VARCHAR NOT NULL,        -- pending, sending, sent, dropped
    attempts           INTEGER NOT NULL DEFAULT 0,  -- delivery rounds tried (each with its own retries)
    last_error         VARCHAR,
    claimed_at         TIMESTAMP,               -- a dispatcher is sending it (lease)
    sent_at            TIMESTAMP,
    message_id         VARCHAR,                 -- the message it went out in (one per digest)
    updated_at         TIMESTAMP NOT NULL,
    PRIMARY KEY (code, entity_id, reason, episode_started_at, channel)
);

-- Every message sent or attempted per channel: the channel's delivery history.
CREATE TABLE alert_messages (
    message_id    VARCHAR PRIMARY KEY,
    channel       VARCHAR NOT NULL,
    owner         VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL,            -- slack, email, webhook, log
    alerts        INTEGER NOT NULL,
    digest        BOOLEAN NOT NULL,
    status        VARCHAR NOT NULL,            -- sent, failed
    tries         INTEGER NOT NULL,            -- HTTP / SMTP tries within this delivery
    error         VARCHAR,
    started_at    TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP NOT NULL
);

-- Health of each flow and connection, as snapshotted by the health_snapshot asset.
CREATE TABLE health_snapshots (
    taken_at        TIMESTAMP NOT NULL,
    kind            VARCHAR NOT NULL,           -- flow, connection
    name            VARCHAR NOT NULL,
    status          VARCHAR NOT NULL,           -- ok, idle, degraded, failing
    last_success    TIMESTAMP,
    backlog         BIGINT,
    error_rate      DOUBLE,
    lag_p50_s       DOUBLE,
    lag_p90_s       DOUBLE,
    open_exceptions INTEGER NOT NULL,
    details         JSON,
    PRIMARY KEY (taken_at, kind, name)
);

-- Finance reconciliation reports, one per day (re-runs replace the row and the file).
CREATE TABLE reconciliation_reports (
    report_date   DATE PRIMARY KEY,
    generated_at  TIMESTAMP NOT NULL,
    path          VARCHAR NOT NULL,
    orders        INTEGER NOT NULL,
    returns       INTEGER NOT NULL,
    mismatches    INTEGER NOT NULL,
    shipped_value DECIMAL(18, 2),
    expected_value DECIMAL(18, 2),
    run_id        VARCHAR
);

-- Each orphan-order comparison: what it looked at and what it found.
CREATE TABLE orphan_checks (
    run_at             TIMESTAMP PRIMARY KEY,
    orders_checked     INTEGER NOT NULL,
    goods_outs_read    INTEGER,                -- NULL when the Clarus read failed
    not_in_clarus      INTEGER NOT NULL,
    not_in_shopify     INTEGER,
    clarus_error       VARCHAR,
    run_id             VARCHAR
);

-- Each data-quality suite run: outcome and a sample of failing rows per expectation.
CREATE TABLE data_quality_results (
    run_at         TIMESTAMP NOT NULL,
    suite          VARCHAR NOT NULL,
    success        BOOLEAN NOT NULL,
    rows_checked   BIGINT NOT NULL,
    expectations   INTEGER NOT NULL,
    failed         INTEGER NOT NULL,
    results        JSON NOT NULL,               -- per expectation: type, column, unexpected count, sample
    run_id         VARCHAR,
    PRIMARY KEY (run_at, suite)
);
