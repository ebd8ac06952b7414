"""Stock: Clarus's latest balances per SKU, channel mismatches and stranded stock."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from clarus_pipelines.settings import ConfigError, get_policies
from clarus_pipelines.dashboards import queries
from clarus_pipelines.dashboards.app_pages import common

STOCK_CODES = ("STOCK_MISMATCH", "STRANDED_STOCK")

st.title("Stock")
snapshot = common.snapshot_or_stop()
db = snapshot.path
common.data_caption(snapshot)
now = common.now_utc()
reveal = common.reveal_personal_data()

latest = queries.latest_stock(db)
if latest.empty:
    st.info("No stock snapshot yet: the stock flow writes one per hour from Clarus's balances.")
    st.stop()

try:
    freshness = get_policies().stock.snapshot_freshness_minutes
except (ConfigError, OSError):
    freshness = 120
newest = latest["taken_at"].max()
age = common.minutes_between(newest, now)
problems = queries.exceptions(db, codes=STOCK_CODES, statuses=("open", "acknowledged"))

cols = st.columns(5)
cols[0].metric("SKUs in Clarus", latest["sku"].nunique())
cols[1].metric("Units available", f"{int(latest['available'].sum()):,}")
cols[2].metric("Latest snapshot", common.format_age(age) + " ago",
               delta="stale" if age > freshness else None, delta_color="inverse",
               help=f"Snapshots older than {freshness} min count as stale (policies: stock.snapshot_freshness_minutes).")
cols[3].metric("Channel mismatches", int((problems["code"] == "STOCK_MISMATCH").sum()))
cols[4].metric("Stranded SKUs", int((problems["code"] == "STRANDED_STOCK").sum()))

st.subheader("Mismatches and stranded stock")
if problems.empty:
    st.success("No open stock mismatches or stranded stock.")
else:
    problems = common.add_sla_columns(problems, now)
    shown = problems.assign(
        title=problems["code"].map(common.title_of),
        details=[json.dumps(common.present(d, reveal) or {}) for d in problems["details"]],
    )
    shown["message"] = [common.present_text(m, reveal) for m in shown["message"]]
    st.dataframe(shown[["code", "entity_id", "status", "age", "sla", "breached", "message", "details"]],
                 hide_index=True, width="stretch",
                 column_config={"entity_id": st.column_config.TextColumn("SKU"),
                                "breached": st.column_config.CheckboxColumn("past SLA")})
    st.page_link("app_pages/exceptions.py", label="Work these in the exception queue", icon=":material/report:",
                 query_params={"code": list(STOCK_CODES)})

st.subheader("Latest balance per SKU")
st.dataframe(
    latest, hide_index=True, width="stretch",
    column_config={
        "sku": st.column_config.TextColumn("SKU"),
        "in_item_master": st.column_config.CheckboxColumn("in item master"),
        "to_sell": st.column_config.NumberColumn("to sell", help="Available to sell we computed (after buffers and unsent orders)."),
        "last_pushed": st.column_config.NumberColumn("last set in Shopify"),
        "shopify_shows": st.column_config.NumberColumn("Shopify shows", help="As last read back from Shopify."),
        "available_value": st.column_config.NumberColumn("value available", format="%.2f",
                                                         help="Available units × last known unit price."),
        "taken_at": st.column_config.DatetimeColumn("taken at", format="YYYY-MM-DD HH:mm"),
        "open_exceptions": st.column_config.TextColumn("open exceptions"),
    },
)
not_in_master = latest[~latest["in_item_master"].astype(bool)]
if not not_in_master.empty:
    value = not_in_master["available_value"].sum()
    st.caption("Not in the item master: " + common.md(", ".join(not_in_master["sku"]))
               + ". Nobody can buy this stock until it is mapped"
               + (f" (worth {value:,.2f} at the last known prices)." if value else "."))

st.subheader("History")
sku = st.selectbox("SKU", latest["sku"].drop_duplicates().tolist(), key="stock_sku")
history = queries.stock_history(db, sku)
long = history.melt(id_vars="snapshot_hour", value_vars=["available", "allocated", "on_hold"], var_name="measure",
                    value_name="units")
chart = alt.Chart(long).mark_line(point=True).encode(
    x=alt.X("snapshot_hour:T", title="hour (UTC)"),
    y=alt.Y("units:Q"),
    color=alt.Color("measure:N"),
    tooltip=["snapshot_hour:T", "measure", "units"],
).properties(height=240)
st.altair_chart(chart, width="stretch")
if pd.isna(history["available"]).all():
    st.caption("No history for this SKU.")
