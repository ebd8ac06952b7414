"""Health overview: is every flow and connection moving, and what is waiting on whom."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from clarus_pipelines import catalogue
from clarus_pipelines.settings import ConfigError, get_policies
from dashboards import queries
from dashboards.app_pages import common

SEVERITY_ORDER = ["critical", "high", "medium", "low"]
SEVERITY_COLOURS = ["#7f1d1d", "#dc2626", "#f59e0b", "#94a3b8"]

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
st.subheader("Flows")
activity = queries.flow_activity(db, day_ago).set_index("flow")
open_codes = by_code.set_index("code") if not by_code.empty else pd.DataFrame(columns=["open", "breached"])
try:
    stock_fresh_minutes = get_policies().stock.snapshot_freshness_minutes
except (ConfigError, OSError):
    stock_fresh_minutes = 120
claimed = {code for codes in common.FLOW_CODES.values() for code in codes} | set(common.CONNECTION_CODES)
unclaimed = tuple(sorted(set(open_codes.index) - claimed))
flow_rows = []
for flow, codes in {**common.FLOW_CODES, **({common.OTHER_FLOW: unclaimed} if unclaimed else {})}.items():
    mine = open_codes[open_codes.index.isin(codes)]
    last = activity["last_activity"].get(flow) if flow in activity.index else None
    open_count = int(mine["open"].sum()) if not mine.empty else 0
    breached = bool(mine["breached"].any()) if not mine.empty else False
    stale = flow == "Stock" and (last is None or pd.isna(last) or common.minutes_between(last, now) > stock_fresh_minutes)
    status = "Failing" if breached else "Attention" if open_count or stale else "OK"
    if last is None or pd.isna(last):
        status = "No activity yet" if not open_count else status
    flow_rows.append({
        "flow": flow, "status": status, "last activity": common.format_time(last),
        "records (24 h)": int(activity["records_24h"].get(flow, 0)) if flow in activity.index else 0,
        "open exceptions": open_count, "past SLA": breached,
        "waiting on": ", ".join(sorted(set(mine["owner"]))) if not mine.empty else "",
    })
st.dataframe(pd.DataFrame(flow_rows), hide_index=True, width="stretch")

st.subheader("Connections")
events = queries.last_event_per_system(db, day_ago).set_index("system")
writes = queries.outbound_by_system(db, day_ago).set_index("system")
intake = queries.webhook_intake(db, day_ago).set_index("source")
conn_exc = queries.exceptions(db, codes=common.CONNECTION_CODES, statuses=("open", "acknowledged"))
reveal = common.reveal_personal_data()
conn_rows = []
systems = {"shopify", "clarus", "netsuite"} | set(writes.index) | set(intake.index) | (set(events.index) - {"pipeline"})
for system in sorted(systems):
    w = writes.loc[system] if system in writes.index else None
    e = events.loc[system] if system in events.index else None
    hooks = intake.loc[system] if system in intake.index else None
    problems = conn_exc[[str(entity).lower().startswith(system) for entity in conn_exc["entity_id"]]]
    done, failed = (int(w["succeeded"]), int(w["failed"])) if w is not None else (0, 0)
    error_rate = failed / (done + failed) if done + failed else None
    refused, missed = (int(hooks["rejected_24h"]), int(hooks["missed_24h"])) if hooks is not None else (0, 0)
    status = "Failing" if not problems.empty and (problems["severity"] == "critical").any() else \
        "Attention" if not problems.empty or (error_rate or 0) > 0.05 or refused or missed else "OK"
    conn_rows.append({
        "system": common.SYSTEM_LABELS.get(system, system), "status": status,
        "last event seen": common.format_time(e["last_event"]) if e is not None else "never",
        "last webhook": common.format_time(hooks["last_webhook"]) if hooks is not None else "never",
        "webhooks (24 h)": int(hooks["webhooks_24h"]) if hooks is not None else 0,
        "refused (24 h)": refused,
        "missed by webhooks (24 h)": missed,
        "writes ok (24 h)": done, "writes failed (24 h)": failed,
        "error rate (24 h)": "–" if error_rate is None else f"{error_rate:.0%}",
        "pending writes": int(w["pending"]) if w is not None else 0,
        "last successful write": common.format_time(w["last_success"]) if w is not None else "never",
        "open problems": "; ".join(f"{r.code}: {common.present_text(r.message, reveal)}" for r in problems.itertuples()),
        "last error": common.present_text(w["last_error"], reveal) if w is not None else "",
    })
st.dataframe(pd.DataFrame(conn_rows), hide_index=True, width="stretch")

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
if events.empty:
    st.info("No order events yet.")
else:
    last = events.reset_index()
    last["system"] = last["system"].map(lambda s: common.SYSTEM_LABELS.get(s, s))
    last["ago"] = [common.format_age(common.minutes_between(t, now)) for t in last["last_event"]]
    st.dataframe(last[["system", "last_event", "ago", "last_state", "events_24h"]], hide_index=True, width="stretch",
                 column_config={"events_24h": st.column_config.NumberColumn("events (24 h)")})

st.caption(f"{len(catalogue.CATALOGUE)} exception types are watched; see the runbook for each.")
