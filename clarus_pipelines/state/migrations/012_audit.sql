-- Integration audits (`clarus-pipelines audit`, the weekly `integration_audit` asset): one row per
-- audit kept, so each report can show its trend against the previous one.
CREATE TABLE audit_reports (
    audit_id      VARCHAR PRIMARY KEY,         -- generated_at as text plus the origin, e.g. 2026-12-03T13:00:00/cli
    generated_at  TIMESTAMP NOT NULL,          -- UTC
    since         TIMESTAMP NOT NULL,          -- start of the period the audit looked at
    origin        VARCHAR NOT NULL,            -- cli or dagster
    blockers      INTEGER NOT NULL,
    warnings      INTEGER NOT NULL,
    go_live       BOOLEAN NOT NULL,            -- no blockers
    report        JSON NOT NULL,               -- the JSON report (findings, timings, trend)
    markdown      VARCHAR NOT NULL,
    run_id        VARCHAR
);
