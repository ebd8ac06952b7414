"""Order journey: one order's events across Shopify, NetSuite and Clarus on one timeline."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from clarus_pipelines.dashboards import queries
from clarus_pipelines.dashboards.app_pages import common

SYSTEM_ORDER = ["Shopify", "Pipeline", "NetSuite", "Clarus"]

st.title("Order journey")
snapshot = common.snapshot_or_stop()
db = snapshot.path
common.data_caption(snapshot)
reveal = common.reveal_personal_data()

term = st.text_input(
    "Find an order", value=st.query_params.get("q", ""), key="journey_search",
    placeholder="#1001, Shopify order id, Clarus goods out id, NetSuite id or tracking number",
)
if not term.strip():
    st.info("Search by Shopify order name (#1001), Shopify order id, Clarus or NetSuite id, shipment id or tracking number.")
    st.stop()

matches = queries.find_orders(db, term)
if matches.empty:
    st.warning(f"No order matches “{common.md(term.strip())}”.")
    st.stop()
if len(matches) > 1:
    choice = st.selectbox(
        f"{len(matches)} orders match", matches["order_id"].tolist(),
        format_func=lambda oid: "{order_name} ({status}, matched on {matched_on})".format(
            **matches.set_index("order_id").loc[oid].to_dict()),
    )
else:
    choice = matches["order_id"].iloc[0]
order = queries.order(db, choice)
matched_on = matches.set_index("order_id").loc[choice, "matched_on"]

st.subheader(f"Order {common.md(order['order_name'])}")
st.caption(f"Matched on {matched_on} · Shopify order id {common.md(order['order_id'])}")
clarus_status = order.get("clarus_status")
cols = st.columns(3)
cols[0].metric("Status", order["status"])
cols[1].metric("Clarus status", "–" if clarus_status is None or pd.isna(clarus_status)
               else f"{int(clarus_status)} {common.CLARUS_STATUS.get(int(clarus_status), '')}")
total = order.get("total_price")
cols[2].metric("Order total", "–" if total is None or pd.isna(total) else f"{total:,.2f} {order.get('currency') or ''}")
st.caption(f"Placed {common.format_time(order.get('created_at'))} UTC · ship method "
           f"{common.md(order.get('shipping_method') or 'none')} · to {common.md(order.get('shipping_country') or '?')}")
holds = queries.order_holds(db, order["order_id"])
if order["status"] == "HELD" or not holds.empty:
    reasons = [f"{code}: {common.present_text(message, reveal)}" for code, message in zip(holds["code"], holds["message"])]
    legacy = order.get("hold_reasons")
    if not reasons and (isinstance(legacy, (list, tuple)) or hasattr(legacy, "tolist")):
        reasons = [str(r) for r in list(legacy)]  # written before order_holds existed
    st.warning("Held: " + common.md("; ".join(reasons) or "no reason recorded"), icon=":material/pause_circle:")
ids = {"Clarus goods out": order.get("clarus_id"), "NetSuite sales order": order.get("netsuite_id")}
st.caption(" · ".join(f"{k}: {common.md(v)}" for k, v in ids.items() if isinstance(v, str) and v)
           or "Not yet in Clarus or NetSuite.")

timeline = queries.order_timeline(db, order["order_id"], order["order_name"])
timeline = timeline.assign(
    system=timeline["system"].map(lambda s: common.SYSTEM_LABELS.get(s, s)),
    cause=[common.present_text(c, reveal) for c in timeline["cause"]],
)
st.markdown("#### Timeline")
if timeline.empty:
    st.info("No events recorded for this order yet.")
else:
    chart = alt.Chart(timeline).mark_circle(size=140).encode(
        x=alt.X("occurred_at:T", title="time (UTC)"),
        y=alt.Y("system:N", sort=SYSTEM_ORDER, title=None),
        color=alt.Color("system:N", sort=SYSTEM_ORDER, legend=None),
        tooltip=[alt.Tooltip("occurred_at:T", format="%Y-%m-%d %H:%M:%S"), "system", "event", "cause"],
    ).properties(height=200)
    rule = alt.Chart(timeline).mark_line(color="#cbd5e1").encode(x="occurred_at:T", y=alt.Y("system:N", sort=SYSTEM_ORDER))
    st.altair_chart(rule + chart, width="stretch")
    with st.container(border=True, key="journey_steps"):
        for item in timeline.itertuples():
            when = pd.Timestamp(item.occurred_at).strftime("%Y-%m-%d %H:%M:%S")
            cause = f" — {common.md(item.cause)}" if item.cause else ""
            st.markdown(f"`{when}` **{common.md(item.system)}** · {common.md(item.event)}{cause}")
    with st.expander("Event details"):
        for item in timeline.itertuples():
            details = common.present(item.details, reveal)
            if details:
                st.markdown(f"**{common.md(item.event)}** · {common.md(item.system)} · {common.format_time(item.occurred_at)}")
                st.json(details, expanded=False)

left, right = st.columns(2)
with left:
    st.markdown("#### Lines")
    st.dataframe(queries.order_lines(db, order["order_id"]), hide_index=True, width="stretch")
    st.markdown("#### Shipments")
    shipments = queries.order_shipments(db, order["order_id"])
    if shipments.empty:
        st.caption("Not dispatched yet.")
    else:
        st.dataframe(shipments, hide_index=True, width="stretch")
with right:
    st.markdown("#### Exceptions")
    related = queries.exceptions(db, entity_ids=tuple([order["order_id"], order["order_name"], *shipments["shipment_id"]]))
    if related.empty:
        st.caption("None raised for this order.")
    else:
        related = common.add_sla_columns(related, common.now_utc())
        related["message"] = [common.present_text(m, reveal) for m in related["message"]]
        st.dataframe(related[["code", "status", "age", "sla", "message"]], hide_index=True, width="stretch")
    st.markdown("#### Ship to")
    payload = common.present(order.get("payload"), reveal) or {}
    address = payload.get("shipping_address") if isinstance(payload, dict) else None
    if address:
        st.json({k: address.get(k) for k in ("name", "address1", "address2", "city", "zip", "country_code", "phone")})
        if not reveal:
            st.caption("Personal data masked.")
    else:
        st.caption("No shipping address on the order.")
