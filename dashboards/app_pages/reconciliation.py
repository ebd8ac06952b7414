"""Reconciliation: shipped value against order totals, and refunds by kind, for finance."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import queries
from dashboards.app_pages import common

THIN_DATA_ORDERS = 20  # below this many dispatched orders the figures are labelled preliminary
CENT = 0.005
MONEY = {c: st.column_config.NumberColumn(format="%.2f") for c in (
    "order_total", "expected_total", "ordered_goods", "discounts", "shipping", "tax_added", "shipped_goods",
    "shipped_value", "amount")}

st.title("Reconciliation")
snapshot = common.snapshot_or_stop()
db = snapshot.path
common.data_caption(snapshot)
today = common.now_utc().date()

picked = st.date_input("Dispatched between", value=(today - timedelta(days=6), today), max_value=today,
                       key="recon_dates", help="UTC days, both included.")
if isinstance(picked, (tuple, list)):  # a range; one date while the person is still picking
    start, end = (picked[0], picked[-1]) if picked else (today, today)
else:
    start = end = picked
since = datetime.combine(start, time.min)
until = datetime.combine(end, time.min) + timedelta(days=1)

rows = queries.reconciliation(db, since, until)
if rows.empty:
    st.info(f"No orders dispatched between {start} and {end}.")
    st.stop()


def shipped_value(r: pd.Series) -> float:
    """Goods shipped at their order price, less their share of discounts, plus shipping and any added tax."""
    if r.shipped_qty <= 0 or r.ordered_goods <= 0:
        return 0.0
    share = r.shipped_goods / r.ordered_goods
    return r.shipped_goods - r.discounts * share + r.shipping + r.tax_added * share


def verdict(r: pd.Series) -> str:
    if abs(r.total_check) >= CENT:
        return "Order total differs"
    if r.unexpected_skus:
        return "Unexpected SKU shipped"
    if r.shipped_qty <= 0:
        return "Not shipped"
    if r.shipped_qty < r.ordered_qty:
        return "Part shipped"
    if r.shipped_qty > r.ordered_qty:
        return "Over shipped"
    return "Reconciles"


rows = rows.astype({c: float for c in ("order_total", "ordered_goods", "discounts", "shipping", "tax_added",
                                      "ordered_qty", "shipped_qty", "shipped_goods")})
rows["expected_total"] = rows["ordered_goods"] - rows["discounts"] + rows["shipping"] + rows["tax_added"]
rows["total_check"] = (rows["order_total"] - rows["expected_total"]).round(2)
rows["shipped_value"] = rows.apply(shipped_value, axis=1).round(2)
rows["difference"] = (rows["shipped_value"] - rows["order_total"]).round(2)
rows["result"] = rows.apply(verdict, axis=1)

thin = len(rows) < THIN_DATA_ORDERS or bool(rows["money_detail_missing"].any())
if thin:
    st.warning(
        f"Preliminary: {len(rows)} dispatched order(s) in this period"
        + (" and some orders lack Shopify money details" if rows["money_detail_missing"].any() else "")
        + ". Computed by the dashboard from the integration's state (order lines × prices, discounts, shipping and "
        "tax from the Shopify order, quantities from Clarus shipments); it is not yet checked against NetSuite.",
        icon=":material/science:",
    )
else:
    st.caption("Computed from the integration's state: order lines × prices, discounts, shipping and tax from the "
               "Shopify order, quantities from Clarus shipments. Not yet checked against NetSuite.")

for currency, group in rows.groupby(rows["currency"].fillna("?")):
    not_ok = group[group["result"] != "Reconciles"]
    cols = st.columns(5)
    cols[0].metric(f"Orders dispatched ({currency})", len(group))
    cols[1].metric("Order totals", f"{group['order_total'].sum():,.2f}")
    cols[2].metric("Shipped value", f"{group['shipped_value'].sum():,.2f}")
    cols[3].metric("Difference", f"{group['difference'].sum():,.2f}",
                   help="Shipped value minus order totals: negative when less left the warehouse than was sold.")
    cols[4].metric("Orders not reconciling", len(not_ok))

st.subheader("Orders that do not reconcile")
issues = rows[rows["result"] != "Reconciles"]
if issues.empty:
    st.success("Every dispatched order in this period reconciles.")
else:
    st.dataframe(
        issues[["order_name", "result", "currency", "order_total", "expected_total", "total_check", "ordered_qty",
                "shipped_qty", "shipped_value", "difference"]],
        hide_index=True, width="stretch",
        column_config={
            **MONEY,
            "order_name": st.column_config.TextColumn("order"),
            "total_check": st.column_config.NumberColumn("total − expected", format="%.2f",
                                                         help="Order total minus lines − discounts + shipping + tax."),
            "difference": st.column_config.NumberColumn("shipped − total", format="%.2f"),
        },
    )

by_result = rows.groupby("result", as_index=False).agg(orders=("order_id", "count"), difference=("difference", "sum"))
st.altair_chart(
    alt.Chart(by_result).mark_bar().encode(
        x=alt.X("orders:Q"), y=alt.Y("result:N", sort="-x", title=None),
        color=alt.condition(alt.datum.result == "Reconciles", alt.value("#16a34a"), alt.value("#dc2626")),
        tooltip=["result", "orders", alt.Tooltip("difference:Q", format=",.2f")],
    ).properties(height=160),
    width="stretch",
)

with st.expander(f"All {len(rows)} dispatched orders"):
    st.dataframe(rows.drop(columns=["order_id", "money_detail_missing"]), hide_index=True, width="stretch",
                 column_config={**MONEY, "total_check": st.column_config.NumberColumn(format="%.2f"),
                                "difference": st.column_config.NumberColumn(format="%.2f")})
st.download_button(
    "Download CSV", rows.drop(columns=["money_detail_missing"]).to_csv(index=False).encode("utf-8"),
    file_name=f"reconciliation_{start}_{end}.csv", mime="text/csv", icon=":material/download:",
)

st.subheader("Refunds by kind")
refunds = queries.refunds_by_kind(db, since, until)
if refunds.empty:
    st.caption("No refunds in this period.")
else:
    st.dataframe(refunds, hide_index=True, width="stretch",
                 column_config={**MONEY, "refunded_goods_not_back": st.column_config.NumberColumn(
                     "refunded, goods not back", format="%.2f",
                     help="Returns refunded whose goods-in receipt has not arrived in Clarus yet.")})
    st.caption("Returns count as back when Clarus confirmed the goods-in receipt; overdue ones are "
               "RETURN_NOT_RECEIVED exceptions below.")

st.subheader("Open finance exceptions")
finance = queries.exceptions(db, codes=("RECONCILIATION_MISMATCH", "RETURN_NOT_RECEIVED", "REFUND_UNCLASSIFIED"),
                             statuses=("open", "acknowledged"))
if finance.empty:
    st.success("None open.")
else:
    finance = common.add_sla_columns(finance, common.now_utc())
    finance["entity"] = [n if isinstance(n, str) else e for n, e in zip(finance["order_name"], finance["entity_id"])]
    finance["message"] = [common.present_text(m, common.reveal_personal_data()) for m in finance["message"]]
    st.dataframe(finance[["code", "entity", "status", "age", "sla", "message"]], hide_index=True, width="stretch")
