"""Exception queue: filter by owner, type, status and age; read the runbook; acknowledge or resolve."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from clarus_pipelines import catalogue, runbook
from clarus_pipelines.state.store import LockTimeout
from clarus_pipelines.dashboards import queries
from clarus_pipelines.dashboards.app_pages import common

AGE_FILTERS = {"any age": 0, "older than 15 min": 15, "older than 1 h": 60, "older than 4 h": 240, "older than 1 day": 1440}
STATUS_ICONS = {"open": ":red[open]", "acknowledged": ":orange[acknowledged]", "resolved": ":green[resolved]"}

st.title("Exception queue")
snapshot = common.snapshot_or_stop()
db = snapshot.path
common.data_caption(snapshot)
now = common.now_utc()
reveal = common.reveal_personal_data()

flash = st.session_state.pop("exception_flash", None)
if flash:
    st.success(common.md(flash), icon=":material/check_circle:")

options = queries.exception_filter_options(db)
params = st.query_params
owner_default = [o for o in params.get_all("owner") if o in options["owner"]]
code_default = [c for c in params.get_all("code") if c in options["code"]]

f1, f2, f3, f4 = st.columns([1, 2, 1, 1])
owners = f1.multiselect("Owner", options["owner"], default=owner_default, placeholder="all owners")
codes = f2.multiselect("Type", options["code"], default=code_default, placeholder="all types",
                       format_func=lambda c: f"{c} · {common.title_of(c)}")
statuses = f3.multiselect("Status", options["status"], default=[s for s in ("open", "acknowledged") if s in options["status"]],
                          placeholder="any status")
age_label = f4.selectbox("Age", list(AGE_FILTERS))
past_sla_only = st.toggle("Only past their SLA", value=False)

rows = queries.exceptions(db, tuple(owners), tuple(codes), tuple(statuses),
                          tuple(params.get_all("entity")))
if rows.empty:
    st.info("No exceptions match these filters." if (owners or codes or statuses) else "The exception queue is empty.")
    st.stop()

rows = common.add_sla_columns(rows, now)
rows = rows[rows["age_minutes"] >= AGE_FILTERS[age_label]]
if past_sla_only:
    rows = rows[rows["breached"]]
rows = rows.assign(
    severity_rank=rows["severity"].map(catalogue.SEVERITY_RANK).fillna(0),
    entity=[name if isinstance(name, str) and name else entity for name, entity in zip(rows["order_name"], rows["entity_id"])],
    title=rows["code"].map(common.title_of),
    message=[common.present_text(m, reveal) for m in rows["message"]],
).sort_values(["breached", "severity_rank", "age_minutes"], ascending=[False, False, False])

st.caption(f"{len(rows)} exception(s); past SLA first, then by severity and age.")
if rows.empty:
    st.info("No exceptions match these filters.")
    st.stop()

st.dataframe(
    rows[["code", "entity", "owner", "severity", "status", "age", "sla", "sla_used", "breached", "escalations",
          "occurrences", "last_seen", "message"]],
    hide_index=True, width="stretch",
    column_config={
        "sla_used": st.column_config.ProgressColumn("share of SLA used", format="percent", min_value=0, max_value=1),
        "breached": st.column_config.CheckboxColumn("past SLA"),
        "escalations": st.column_config.NumberColumn(
            "escalated", help="Times sent to the owner role's escalation contact since it passed its SLA unacknowledged"),
        "last_seen": st.column_config.DatetimeColumn("last seen", format="YYYY-MM-DD HH:mm"),
        "message": st.column_config.TextColumn("message", width="large"),
    },
)

# options are "CODE|entity_id" strings (codes never contain "|"), shown as readable labels
labels = {f"{code}|{entity_id}": f"{code} · {entity} · {status}" for code, entity_id, entity, status in
          zip(rows["code"], rows["entity_id"], rows["entity"], rows["status"])}
selected = st.selectbox("Work on", list(labels), format_func=labels.get, key="selected_exception")
selected_code, selected_entity = selected.split("|", 1)
row = rows[(rows["code"] == selected_code) & (rows["entity_id"] == selected_entity)].iloc[0]
kind = catalogue.CATALOGUE.get(row["code"])

st.divider()
st.subheader(f"{row['code']} · {common.md(row['entity'])}")
st.markdown(
    f"**{row['title']}** · status {STATUS_ICONS.get(row['status'], row['status'])} · owner **{row['owner']}**"
    f" · severity **{row['severity']}**"
)
m = st.columns(4)
m[0].metric("Age", row["age"])
m[1].metric("SLA", row["sla"], delta="past SLA" if row["breached"] else None, delta_color="inverse")
m[2].metric("Seen", f"{int(row['occurrences'])}×",
            help=f"first {common.format_time(row['first_seen'])}, last {common.format_time(row['last_seen'])}")
m[3].metric("Last seen", common.format_time(row["last_seen"])[-5:],
            help=f"{common.format_time(row['last_seen'])} UTC")

if row["escalations"]:
    st.error(f"Escalated {int(row['escalations'])}× to the {row['owner']} escalation contact, last "
             f"{common.format_time(row['last_escalated_at'])} UTC: past its SLA and not acknowledged. "
             "Acknowledge it to stop the reminders.", icon=":material/campaign:")

left, right = st.columns([3, 2])
with left:
    st.markdown(f"**What was found:** {common.md(row['message'])}")
    details = common.present(row["details"], reveal)
    if details:
        st.json(details, expanded=True)
    if row["entity_type"] == "order":
        st.page_link("app_pages/journey.py", label="Open this order's journey", icon=":material/route:",
                     query_params={"q": row["order_name"] if isinstance(row["order_name"], str) else row["entity_id"]})
    if row["status"] == "resolved":
        st.markdown(f"Resolved {common.format_time(row['resolved_at'])} by **{common.md(row['resolved_by'])}**"
                    + (f": {common.md(common.present_text(row['note'], reveal))}" if isinstance(row["note"], str) else ""))
    elif isinstance(row["note"], str) and row["note"]:
        st.markdown(f"**Note:** {common.md(common.present_text(row['note'], reveal))}")

    st.markdown("**History**")
    history = queries.exception_history(db, row["code"], row["entity_id"])
    history["note"] = [common.present_text(n, reveal) for n in history["note"]]
    st.dataframe(history, hide_index=True, width="stretch")

    with st.form("decision", clear_on_submit=True):
        st.markdown("**Acknowledge or resolve**")
        actor = st.text_input("Your name", value=st.session_state.get("remembered_actor", ""), key="actor_name")
        note = st.text_area("Note", placeholder="What you found or did (optional for acknowledge)", key="decision_note")
        b1, b2 = st.columns(2)
        acknowledge = b1.form_submit_button("Acknowledge", key="acknowledge", disabled=row["status"] != "open")
        resolve = b2.form_submit_button("Resolve", key="resolve", type="primary", disabled=row["status"] == "resolved")
    if acknowledge or resolve:
        action = "acknowledge" if acknowledge else "resolve"
        try:
            queries.record_decision(action, row["code"], row["entity_id"], actor or "", note or None)
        except ValueError as exc:
            st.error(str(exc))
        except LockTimeout:
            st.error("The pipelines are busy writing the state database; nothing was changed. Try again in a moment.")
        else:
            st.session_state["remembered_actor"] = (actor or "").strip()
            st.session_state["exception_flash"] = (
                f"{row['code']} for {row['entity']} {'acknowledged' if acknowledge else 'resolved'} by {actor.strip()}."
            )
            st.rerun()

with right:
    with st.container(border=True):
        if kind:
            st.markdown(runbook.render_type(kind, heading_level=4))
            if common.sla_minutes(kind.code) != kind.sla_minutes:
                st.caption(f"SLA in force: {row['sla']} (overridden in the policies file).")
        else:
            st.warning(f"{row['code']} is not in this version's exception catalogue, so there is no runbook entry.")

if pd.isna(row["sla_minutes"]):
    st.caption("No SLA known for this type.")
