"""Reconciliation for finance: the stored daily reports, a check as of now, refunds by kind.

Every figure comes from `clarus_pipelines.domain.reconciliation`, the code that writes the
daily finance report, so the page and the report can never disagree.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

import duckdb
import pandas as pd
import streamlit as st

from clarus_pipelines.dashboards import queries
from clarus_pipelines.dashboards.app_pages import common
from clarus_pipelines.domain.reconciliation import excel_path

REPORTS_SHOWN = 14  # days of stored reports listed with a download each
MONEY_COLUMNS = ("order_total", "goods_ordered", "goods_discounts", "shipping", "tax_added", "other_charges",
                 "charged_goods", "cancelled_goods", "expected_goods", "shipped_goods", "difference",
                 "refunded_goods", "received_value", "shopify_amount", "our_amount", "shopify_fee", "expected_fee",
                 "shopify_net", "expected_net")
MONEY = {c: st.column_config.NumberColumn(format="%.2f") for c in (*MONEY_COLUMNS, "amount", "shipped_value",
                                                                   "expected_value", "refunded_goods_not_back")}
SHOWN = ["order_name", "section", "status", "problems", "currency", "order_total", "expected_goods", "shipped_goods",
         "difference", "other_charges", "shipped_qty", "refund_id", "refunded_goods", "received_value",
         "last_dispatched_at", "payout_id", "transaction_kind", "shopify_amount", "our_amount", "shopify_fee",
         "expected_fee", "shopify_net", "expected_net"]


def numeric(rows: pd.DataFrame) -> pd.DataFrame:
    """Report rows (all text, as written) with the money and count columns as numbers, for display."""
    rows = rows.copy()
    for column in (*MONEY_COLUMNS, "shipped_qty", "refunded_qty", "received_qty"):
        if column in rows:
            rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows


def masked(rows: pd.DataFrame, reveal: bool) -> pd.DataFrame:
    rows = rows.copy()
    rows["problems"] = [common.present_text(p, reveal) for p in rows["problems"]]
    return rows


st.title("Reconciliation")
snapshot = common.snapshot_or_stop()
db = snapshot.path
common.data_caption(snapshot)
now = common.now_utc()
today = now.date()
reveal = common.reveal_personal_data()

# ------------------------------------------------------------------ stored daily reports
st.subheader("Daily finance reports")
st.caption("Written once a day by the reconciliation job: the CSV finance receives, as of when it ran. "
           "Each covers the orders with a dispatch, a return refund or a return receipt that UTC day.")
try:
    stored = queries.reconciliation_reports(db, REPORTS_SHOWN)
except duckdb.Error as exc:
    st.warning(f"The stored reports cannot be read from this state file ({type(exc).__name__}).")
    stored = pd.DataFrame()
if stored.empty:
    st.info("No daily report yet: the reconciliation job writes one per UTC day.", icon=":material/hourglass_empty:")
else:
    with st.container(key="daily_reports"):
        for report in stored.itertuples():
            day = pd.Timestamp(report.report_date).date()
            text, download, excel = st.columns([5, 1, 1], vertical_alignment="center")
            text.markdown(
                f"**{day}** · {report.orders} order(s) · {report.returns} return(s) · "
                + (f":red[{report.mismatches} not reconciling]" if report.mismatches else ":green[all reconcile]")
                + f" · shipped {report.shipped_value or 0:,.2f} against {report.expected_value or 0:,.2f} expected"
                + f" · as of {pd.Timestamp(report.generated_at):%Y-%m-%d %H:%M}"
            )
            content = queries.report_bytes(report.path, report.generated_at)
            if content is None:
                download.caption("file not found")
            else:
                download.download_button(
                    f"{day}.csv", content, file_name=f"reconciliation-{day}.csv", mime="text/csv",
                    icon=":material/download:", key=f"report_{day}", help=f"The report file as written: {report.path}",
                )
            workbook = queries.report_bytes(str(excel_path(report.path)), report.generated_at)
            if workbook is not None:
                excel.download_button(
                    f"{day}.xlsx", workbook, file_name=f"reconciliation-{day}.xlsx",
                    mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    icon=":material/table_view:", key=f"report_xlsx_{day}",
                    help="The same report for Excel: ids and SKUs are text, so leading zeros and long ids stay exact",
                )
    days = [pd.Timestamp(d).date() for d in stored["report_date"]]
    picked_day = st.selectbox("Report to look at", days, key="report_day")
    chosen = stored.iloc[days.index(picked_day)]
    rows = queries.report_rows(chosen["path"], chosen["generated_at"])
    if rows is None:
        st.warning(f"The report file `{chosen['path']}` is not on this machine.")
    elif rows.empty:
        st.success(f"Nothing was dispatched or returned on {picked_day}.")
    else:
        rows = masked(numeric(rows), reveal)
        flagged = rows[rows["status"] == "mismatch"]
        if flagged.empty:
            st.success(f"Every order in the {picked_day} report reconciles.")
        else:
            st.dataframe(flagged[[c for c in SHOWN if c in flagged]], hide_index=True, width="stretch",
                         column_config={**MONEY, "order_name": st.column_config.TextColumn("order")})
        with st.expander(f"All {len(rows)} rows of the {picked_day} report"):
            st.dataframe(rows, hide_index=True, width="stretch", column_config=MONEY)

# ------------------------------------------------------------------ on demand, as of now
st.subheader("Check as of now")
st.caption("The same reconciliation as the daily report, run now on the current state: figures for a day can "
           "differ from its stored report only because something happened since the report was written.")
picked = st.date_input("Orders dispatched or returned between", value=(today - timedelta(days=6), today),
                       max_value=today, key="recon_dates", help="UTC days, both included.")
if isinstance(picked, (tuple, list)):  # a range; one date while the person is still picking
    start, end = (picked[0], picked[-1]) if picked else (today, today)
else:
    start = end = picked
since = datetime.combine(start, time.min)
until = datetime.combine(end, time.min) + timedelta(days=1)

live = queries.reconcile_touched(db, since, until, common.minute_floor(now))
if live.empty:
    st.info(f"No orders dispatched or returned between {start} and {end}.")
else:
    live = masked(numeric(live), reveal)
    dispatch = live[live["section"] == "dispatch"]
    for currency, group in live.groupby(live["currency"].fillna("?")):
        sent = group[group["section"] == "dispatch"]
        cols = st.columns(5)
        cols[0].metric(f"Orders dispatched ({currency})", len(sent))
        cols[1].metric("Expected goods", f"{sent['expected_goods'].sum():,.2f}",
                       help="Goods charged, less discounts and lines cancelled before dispatch.")
        cols[2].metric("Shipped goods", f"{sent['shipped_goods'].sum():,.2f}",
                       help="Dispatched quantities at the order's unit prices, less the same share of discount.")
        cols[3].metric("Difference", f"{sent['difference'].sum():,.2f}",
                       help="Shipped minus expected: negative when less left the warehouse than was charged for.")
        cols[4].metric("Orders not reconciling", group.loc[group["status"] == "mismatch", "order_id"].nunique())

    issues = live[live["status"] == "mismatch"]
    if issues.empty:
        st.success("Every order in this period reconciles.")
    else:
        st.dataframe(issues[[c for c in SHOWN if c in issues]], hide_index=True, width="stretch",
                     column_config={**MONEY, "order_name": st.column_config.TextColumn("order")})
    partial = dispatch[dispatch["status"] == "partial"]
    if not partial.empty:
        st.caption(f"{len(partial)} order(s) still being dispatched (partial): not a mismatch until Clarus completes "
                   "them or nothing more ships for two days.")
    with st.expander(f"All {len(live)} rows"):
        st.dataframe(live, hide_index=True, width="stretch", column_config=MONEY)
    st.download_button(
        "Download CSV", live.to_csv(index=False).encode("utf-8"), file_name=f"reconciliation-now_{start}_{end}.csv",
        mime="text/csv", icon=":material/download:", key="download_live",
    )

# ------------------------------------------------------------------ refunds
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

# ------------------------------------------------------------------ Shopify Payments payouts
st.subheader("Shopify Payments payouts")
st.caption("Each payout issued in this period, matched against our orders (charges and their fees) and refunds by "
           "the `shopify_payouts` job; a payout that does not reconcile is a RECONCILIATION_MISMATCH `payout:<id>`.")
try:
    matched = queries.payout_matches(db, start, end)
except duckdb.Error as exc:
    st.warning(f"The payouts cannot be read from this state file ({type(exc).__name__}).")
    matched = pd.DataFrame()
if matched.empty:
    st.info(f"No Shopify Payments payout read for {start} to {end}.")
else:
    matched = matched.copy()
    matched["problems"] = [common.present_text(p, reveal) if isinstance(p, str) else p for p in matched["problems"]]
    summary = matched[matched["line_no"] == 0]
    bad = summary[summary["status"] == "mismatch"]
    cols = st.columns(3)
    cols[0].metric("Payouts", len(summary))
    cols[1].metric("Payouts not reconciling", len(bad))
    cols[2].metric("Items to book by hand", int((matched["status"] == "review").sum()),
                   help="Adjustments, chargebacks and reserves Shopify paid out: no record of ours to match.")
    payout_money = {c: st.column_config.NumberColumn(format="%.2f") for c in
                    ("shopify_amount", "our_amount", "shopify_fee", "expected_fee", "shopify_net", "expected_net",
                     "difference")}
    st.dataframe(summary[["payout_date", "payout_id", "payout_status", "currency", "status", "shopify_net",
                          "expected_net", "difference", "problems"]],
                 hide_index=True, width="stretch", column_config=payout_money, key="payouts")
    lines = matched[(matched["line_no"] > 0) & (matched["status"] != "ok")]
    if not lines.empty:
        st.dataframe(lines[["payout_id", "kind", "order_name", "refund_id", "status", "problems", "shopify_amount",
                            "our_amount", "shopify_fee", "expected_fee", "difference"]],
                     hide_index=True, width="stretch", column_config=payout_money, key="payout_lines")

st.subheader("Open finance exceptions")
finance = queries.exceptions(db, codes=("RECONCILIATION_MISMATCH", "RETURN_NOT_RECEIVED", "REFUND_UNCLASSIFIED"),
                             statuses=("open", "acknowledged"))
if finance.empty:
    st.success("None open.")
else:
    finance = common.add_sla_columns(finance, now)
    finance["entity"] = [n if isinstance(n, str) else e for n, e in zip(finance["order_name"], finance["entity_id"])]
    finance["message"] = [common.present_text(m, reveal) for m in finance["message"]]
    st.dataframe(finance[["code", "entity", "status", "age", "sla", "message"]], hide_index=True, width="stretch")
