"""Health overview: is every flow and connection moving, and what is waiting on whom."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import duckdb
import pandas as pd
import streamlit as st

from clarus_pipelines import catalogue
from clarus_pipelines.domain import health
from clarus_pipelines.dashboards import queries
from clarus_pipelines.dashboards.app_pages import common

SEVERITY_ORDER = ["critical", "high", "medium", "low"]
SEVERITY_COLOURS = ["#7f1d1d", "#dc2626", "#f59e0b", "#94a3b8"]
STATUS_LABELS = {"ok": "🟢 ok", "idle": "⚪ idle", "degraded": "🟠 degraded", "failing": "🔴 failing"}
_HEALTH_COLUMNS = {
    "error rate": st.column_config.NumberColumn(format="percent"),
    "last success": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    "last webhook": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    "last authenticated read": st.column_config.DatetimeColumn(
        format="YYYY-MM-DD HH:mm", help="The last scheduled live probe (a cheap authenticated read) the system answered"),
    "last read": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
    "oldest unread": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
}


def _seconds(value: float | None) -> str:
    """A lag in words: 45 s, 12 min, 3 h 05 min."""
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.0f} s" if value < 90 else common.format_age(value / 60)


def _ratio(failed, attempts) -> str:
    return "–" if attempts is None or pd.isna(attempts) else f"{int(failed or 0)} / {int(attempts)}"


st.title("Health overview")
snapshot = common.snapshot_or_stop()
db = snapshot.path
common.data_caption(snapshot)
now = common.now_utc()
day_ago = common.minute_floor(now - timedelta(hours=24))

summary = queries.order_summary(db, day_ago)
by_code = queries.open_exceptions_by_code(db)
by_code = by_code.assign(first_seen=by_code["oldest_first_seen"], resolved_at=None)
by_code = common.add_sla_columns(by_code, now) if not by_code.empty else by_code
breached_types = int(by_code["breached"].sum()) if not by_code.empty else 0
open_total = int(by_code["open"].sum()) if not by_code.empty else 0

cols = st.columns(5)
cols[0].metric("Orders in the last 24 h", int(summary["orders_since"] or 0))
cols[1].metric("Orders held", int(summary["held"] or 0), help="Held for missing data or mappings; released when complete.")
cols[2].metric("Open exceptions", open_total)
cols[3].metric("Types past their SLA", breached_types, delta=None if not breached_types else "needs attention",
               delta_color="inverse" if breached_types else "off")
median = summary["dispatch_hours_median"]
cols[4].metric(
    "Order to dispatch (median, 24 h)", "–" if pd.isna(median) else common.format_age(median * 60),
    help="Time from the Shopify order to the first Clarus dispatch, for orders dispatched in the last 24 h."
    + ("" if pd.isna(summary["dispatch_hours_p90"]) else f" 90th percentile: {common.format_age(summary['dispatch_hours_p90'] * 60)}."),
)

# ------------------------------------------------------------------ flows and connections
# Computed by the monitoring back end (clarus_pipelines.domain.health), the same figures the
# health snapshots and alerts use.
as_of = common.minute_floor(now)
try:
    flows = queries.flow_health(db, as_of)
    connections = queries.connection_health(db, as_of)
except duckdb.Error as exc:
    st.error(f"Flow and connection health cannot be computed from this state file ({type(exc).__name__}); "
             "the pipelines may not have migrated it yet.")
    flows = connections = None

if flows is not None:
    statuses = flows["status"].tolist() + connections["status"].tolist()
    overall = max(statuses, key=lambda s: health.STATUS_RANK.get(s, 0), default="ok")
    troubled = [f"{r.title}: {r.status}" for r in flows.itertuples() if r.status in ("degraded", "failing")] + [
        f"{r.connection}: {r.status}" for r in connections.itertuples() if r.status in ("degraded", "failing")]
    if overall == "failing":
        st.error("Failing: " + "; ".join(troubled), icon=":material/error:")
    elif overall == "degraded":
        st.warning("Degraded: " + "; ".join(troubled), icon=":material/warning:")
    else:
        st.success("Every flow and connection is OK or idle.", icon=":material/check_circle:")

    reveal = common.reveal_personal_data()
    st.subheader("Flows (last 24 h)")
    st.dataframe(
        pd.DataFrame({
            "flow": flows["title"], "status": flows["status"].map(STATUS_LABELS), "why": flows["reasons"],
            "last success": flows["last_success"], "backlog": flows["backlog"],
            "oldest unread": flows["oldest_backlog_at"], "work waiting": flows["work_waiting"],
            "error rate": flows["error_rate"], "failed / attempts": [_ratio(f, a) for f, a in zip(flows["failures"], flows["attempts"])],
            "lag p50": flows["lag_p50_s"].map(_seconds), "lag p90": flows["lag_p90_s"].map(_seconds),
            "open exceptions": flows["open_exceptions"],
            "last error": [common.present_text(e, reveal) for e in flows["last_error"]],
        }),
        hide_index=True, width="stretch", column_config=_HEALTH_COLUMNS,
    )

    st.subheader("Connections (last 24 h)")
    systems = connections[connections["kind"] == "system"]
    st.dataframe(
        pd.DataFrame({
            "system": systems["connection"].map(lambda s: common.SYSTEM_LABELS.get(s, s)),
            "status": systems["status"].map(STATUS_LABELS), "why": systems["reasons"],
            "last success": systems["last_success"], "last authenticated read": systems["last_probe_ok_at"],
            "probe": [("failing: " + common.present_text(e, reveal)) if isinstance(e, str) and e else
                      ("" if pd.isna(at) else "answers") for e, at in zip(systems["probe_error"], systems["last_probe_at"])],
            "last webhook": systems["last_webhook_at"],
            "webhooks": systems["webhooks"], "rejected": systems["webhooks_rejected"],
            "missed by webhooks": systems["missed_by_webhooks"], "last read": systems["last_read_at"],
            "writes ok": systems["writes_ok"], "error rate": systems["error_rate"],
            "failed / attempts": [_ratio(f, a) for f, a in zip(systems["failures"], systems["attempts"])],
            "pending writes": systems["pending"], "open exceptions": systems["open_exceptions"],
            "last error": [common.present_text(e, reveal) for e in systems["last_error"]],
        }),
        hide_index=True, width="stretch", column_config=_HEALTH_COLUMNS,
    )

    st.subheader("Lag from landing to the target system (last 24 h)")
    lags = queries.lag_samples(db, as_of - timedelta(hours=24), as_of + timedelta(minutes=1))
    if lags.empty:
        st.info("No record has reached its target system in the last 24 h.")
    else:
        titles = dict(zip(flows["flow"], flows["title"]))
        lags = lags.assign(flow=lags["flow"].map(lambda f: titles.get(f, f)), lag_min=lags["lag_s"] / 60)
        st.altair_chart(
            alt.Chart(lags).mark_circle(size=40, opacity=0.7).encode(
                x=alt.X("reached_at:T", title="reached the target (UTC)"),
                y=alt.Y("lag_min:Q", title="lag (minutes)"),
                color=alt.Color("flow:N", title=None),
                tooltip=["flow", "entity_type", "entity_id", "landed_at:T", "reached_at:T",
                         alt.Tooltip("lag_min:Q", format=",.1f", title="lag (min)")],
            ).properties(height=240),
            width="stretch",
        )
        st.caption("Intake: webhook received to landed. Orders: first order webhook to Clarus acknowledging the goods "
                   "out. Dispatch: goods out webhook to the Shopify fulfilment. Refunds: refund webhook to its last posting.")

# ------------------------------------------------------------------ orders
left, right = st.columns([1, 2])
with left:
    st.subheader("Orders by status")
    statuses = queries.order_status_counts(db)
    if statuses.empty:
        st.info("No orders yet.")
    else:
        st.dataframe(statuses, hide_index=True, width="stretch")
with right:
    st.subheader("Orders per hour (last 48 h)")
    since, until = common.window(48)
    per_hour = queries.orders_per_hour(db, since, until)
    st.bar_chart(per_hour, x="hour", y="orders", x_label="hour (UTC)", y_label="orders", height=260)

st.subheader("Dispatch SLA: orders dispatched within 24 h of being placed (last 14 days)")
sla = queries.dispatch_sla(db, common.window(24 * 14)[0])
if sla.empty:
    st.info("No orders placed in the last 14 days.")
else:
    st.bar_chart(sla, x="day", y="orders", color="outcome", x_label="day placed (UTC)", y_label="orders", height=260)

# ------------------------------------------------------------------ exceptions
st.subheader("Open exceptions by owner and severity")
by_owner = queries.open_exceptions_by_owner_severity(db)
if by_owner.empty:
    st.success("No open exceptions.")
else:
    left, right = st.columns([1, 2])
    with left:
        pivot = by_owner.pivot_table(index="owner", columns="severity", values="open", aggfunc="sum", fill_value=0)
        pivot = pivot.reindex(columns=[s for s in SEVERITY_ORDER if s in pivot.columns])
        pivot["total"] = pivot.sum(axis=1)
        st.dataframe(pivot.reset_index(), hide_index=True, width="stretch")
    with right:
        chart = alt.Chart(by_owner).mark_bar().encode(
            x=alt.X("open:Q", title="open exceptions"),
            y=alt.Y("owner:N", title=None, sort="-x"),
            color=alt.Color("severity:N", scale=alt.Scale(domain=SEVERITY_ORDER, range=SEVERITY_COLOURS)),
            order=alt.Order("severity_rank:Q", sort="descending"),
            tooltip=["owner", "severity", "open"],
        ).transform_calculate(severity_rank=f"indexof({SEVERITY_ORDER!r}, datum.severity)").properties(height=200)
        st.altair_chart(chart, width="stretch")

st.subheader("Open exceptions by owner over time (last 7 days)")
since, until = common.window(7 * 24)
over_time = queries.open_exceptions_over_time(db, since, until)
if over_time.empty:
    st.info("No exception history yet.")
else:
    chart = alt.Chart(over_time).mark_area(interpolate="step-after").encode(
        x=alt.X("hour:T", title="hour (UTC)"),
        y=alt.Y("open_exceptions:Q", title="open at the end of the hour", stack="zero"),
        color=alt.Color("owner:N"),
        tooltip=["hour:T", "owner", "open_exceptions"],
    ).properties(height=240)
    st.altair_chart(chart, width="stretch")

st.subheader("Oldest open exception per type against its SLA")
if by_code.empty:
    st.success("Nothing open.")
else:
    table = by_code.assign(title=by_code["code"].map(common.title_of)).sort_values("sla_used", ascending=False)
    st.dataframe(
        table[["code", "title", "owner", "open", "acknowledged", "age", "sla", "sla_used", "breached"]],
        hide_index=True, width="stretch",
        column_config={
            "age": st.column_config.TextColumn("oldest age"),
            "sla_used": st.column_config.ProgressColumn("share of SLA used", format="percent", min_value=0, max_value=1),
            "breached": st.column_config.CheckboxColumn("past SLA"),
        },
    )

st.subheader("Last event per system")
events = queries.last_event_per_system(db, day_ago).set_index("system")
if events.empty:
    st.info("No order events yet.")
else:
    last = events.reset_index()
    last["system"] = last["system"].map(lambda s: common.SYSTEM_LABELS.get(s, s))
    last["ago"] = [common.format_age(common.minutes_between(t, now)) for t in last["last_event"]]
    st.dataframe(last[["system", "last_event", "ago", "last_state", "events_24h"]], hide_index=True, width="stretch",
                 column_config={"events_24h": st.column_config.NumberColumn("events (24 h)")})

# ------------------------------------------------------------------ data quality and alerts
st.subheader("Data quality")
try:
    suites = queries.data_quality_results(db)
except duckdb.Error as exc:
    st.warning(f"Data-quality results cannot be read from this state file ({type(exc).__name__}).")
    suites = []
if not suites:
    st.info("No data-quality run recorded yet: the great-expectations suites run as asset checks on the state tables.")
else:
    st.dataframe(
        pd.DataFrame([{
            "suite": r["suite"], "result": "✅ passed" if r["success"] else "❌ failed", "last run": r["run_at"],
            "rows checked": r["rows_checked"], "expectations": r["expectations"], "failed": r["failed"],
        } for r in suites]),
        hide_index=True, width="stretch",
        column_config={"last run": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")},
    )
    reveal = common.reveal_personal_data()
    for r in suites:
        error = r["results"].get("error")
        failed = [e for e in r["results"].get("expectations", []) if not e.get("success")]
        if not error and not failed:
            continue
        with st.expander(f"{r['suite']}: " + ("could not run" if error else f"{len(failed)} expectation(s) failed")):
            if error:
                st.error(common.present_text(error, reveal))
            for e in failed:
                count = e.get("unexpected_count")
                st.markdown(f"**{common.md(e.get('rule') or e.get('type'))}** · {common.md(e.get('severity', ''))} · "
                            f"{'?' if count is None else count} row(s) · columns {common.md(', '.join(e.get('columns', [])))}")
                if e.get("error"):
                    st.caption(common.present_text(e["error"], reveal))
                if e.get("sample"):
                    st.dataframe(pd.DataFrame([common.present(row, reveal) for row in e["sample"]]),
                                 hide_index=True, width="stretch")

st.subheader("Alerts (last 7 days)")
week_ago = common.minute_floor(now - timedelta(days=7))
try:
    channels = queries.alert_channels(db, day_ago)
    deliveries = queries.alert_deliveries(db, week_ago)
except duckdb.Error as exc:
    st.warning(f"Alert history cannot be read from this state file ({type(exc).__name__}).")
    channels = deliveries = pd.DataFrame()
if channels.empty and deliveries.empty:
    st.info("No alert sent or waiting yet.")
else:
    reveal = common.reveal_personal_data()
    if connections is not None:  # the channel's status, as the health back end rates it
        rated = connections[connections["kind"] == "alert_channel"].set_index("connection")
        channels["status"] = [STATUS_LABELS.get(rated["status"].get(f"alerts:{c}"), "") for c in channels["channel"]]
        channels["why"] = [rated["reasons"].get(f"alerts:{c}", "") for c in channels["channel"]]
    channels["last_error"] = [common.present_text(e, reveal) for e in channels["last_error"]]
    st.caption("Per channel: messages sent and failed in the last 24 h, and alerts waiting to go out.")
    st.dataframe(channels, hide_index=True, width="stretch",
                 column_config={"sent": st.column_config.NumberColumn("sent (24 h)"),
                                "failed": st.column_config.NumberColumn("failed (24 h)")})
    if not deliveries.empty:
        deliveries["title"] = [common.present_text(t, reveal) for t in deliveries["title"]]
        deliveries["last_error"] = [common.present_text(e, reveal) for e in deliveries["last_error"]]
        st.dataframe(deliveries, hide_index=True, width="stretch",
                     column_config={"entity_id": st.column_config.TextColumn("entity")})

st.caption(f"{len(catalogue.CATALOGUE)} exception types are watched; see the runbook for each.")
