"""Integration audit: the latest go-live verdict, its findings (owner, effect, fix) and the trend.

Shows the audits kept in state by `clarus-pipelines audit` and the weekly `integration_audit`
asset; the report itself comes from `clarus_pipelines.audit`, so page, CLI and Dagster agree.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from clarus_pipelines.audit.render import to_html, to_json, to_markdown
from clarus_pipelines.dashboards import queries
from clarus_pipelines.dashboards.app_pages import common

st.title("Integration audit")
snapshot = common.snapshot_or_stop()
db = snapshot.path
common.data_caption(snapshot)
reveal = common.reveal_personal_data()

audits = queries.audit_reports(db)
if not audits:
    st.info("No audit yet: run `clarus-pipelines audit`, or materialize `integration_audit` in Dagster "
            "(it also runs every Monday).", icon=":material/fact_check:")
    st.stop()

latest = audits[0]
report = latest["report"]
previous = audits[1] if len(audits) > 1 else None
if report["go_live"]:
    st.success(f"Go-live verdict: {report['verdict']}", icon=":material/verified:")
else:
    st.error(f"Go-live verdict: {report['verdict']}", icon=":material/block:")

cols = st.columns(4)
cols[0].metric("Blockers", report["blockers"], delta=None if previous is None else report["blockers"] - previous["blockers"],
               delta_color="inverse", help="Gaps already costing orders or money, or stopping a connection.")
cols[1].metric("Warnings", report["warnings"], delta=None if previous is None else report["warnings"] - previous["warnings"],
               delta_color="inverse", help="Latent flaws to fix soon.")
cols[2].metric("Orders in the period", report["orders_in_period"])
cols[3].metric("Audited", common.format_age(common.minutes_between(latest["generated_at"], common.now_utc())) + " ago",
               help=f"{common.format_time(latest['generated_at'])} UTC, from {latest['origin']}.")
trend = report.get("trend") or {}
if trend.get("previous_at"):
    parts = [f"new: {', '.join(trend['new'])}" if trend.get("new") else "",
             f"resolved: {', '.join(trend['resolved'])}" if trend.get("resolved") else ""]
    st.caption(f"Against the audit of {common.format_time(pd.Timestamp(trend['previous_at']))}. "
               + (" · ".join(p for p in parts if p) or "Same checks flagged."))

findings = pd.DataFrame(report["findings"])
if findings.empty:
    st.success("No gaps found.")
else:
    findings["examples"] = ["; ".join(common.present_text(e, reveal) for e in examples) for examples in findings["examples"]]
    with st.container(key="audit_findings"):
        st.dataframe(findings[["severity", "area", "title", "count", "owner", "effect", "fix", "examples"]],
                     hide_index=True, width="stretch",
                     column_config={"title": st.column_config.TextColumn("finding"),
                                    "count": st.column_config.NumberColumn(format="%d")})
    by_owner = findings.groupby(["owner", "severity"], as_index=False)["count"].sum()
    st.caption("Who fixes what: " + "; ".join(f"{r.owner} {r.count} ({r.severity})" for r in by_owner.itertuples()))

timings = report.get("timings") or {}
if timings:
    st.subheader("Time from order")
    st.dataframe(pd.DataFrame([{"to": key.replace("_", " "), **value} for key, value in timings.items()]),
                 hide_index=True, column_config={"p50_min": st.column_config.NumberColumn("p50 (min)", format="%.1f"),
                                                 "p95_min": st.column_config.NumberColumn("p95 (min)", format="%.1f")})

if len(audits) > 1:
    st.subheader("Trend")
    history = pd.DataFrame([{"audited": a["generated_at"], "blockers": a["blockers"], "warnings": a["warnings"]}
                            for a in audits]).melt("audited", var_name="severity", value_name="findings")
    st.altair_chart(alt.Chart(history).mark_line(point=True).encode(
        x=alt.X("audited:T", title=None), y=alt.Y("findings:Q", title="findings"),
        color=alt.Color("severity:N", scale=alt.Scale(domain=["blockers", "warnings"], range=["#d62728", "#ff7f0e"]))),
        width="stretch")

left, middle, right = st.columns(3)
stamp = pd.Timestamp(latest["generated_at"]).strftime("%Y%m%dT%H%M")
left.download_button("HTML report", to_html(report).encode("utf-8"), file_name=f"audit-{stamp}.html", mime="text/html",
                     icon=":material/download:", key="audit_html")
middle.download_button("Markdown", to_markdown(report).encode("utf-8"), file_name=f"audit-{stamp}.md",
                       mime="text/markdown", icon=":material/download:", key="audit_md")
right.download_button("JSON", to_json(report).encode("utf-8"), file_name=f"audit-{stamp}.json",
                      mime="application/json", icon=":material/download:", key="audit_json")
