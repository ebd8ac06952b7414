"""Clarus pipelines health dashboard (Streamlit).

Run with `streamlit run dashboards/app.py --server.address 127.0.0.1` (the demo starts it).
It reads a snapshot copy of the pipelines' state DuckDB (CLARUS_PIPELINES_STATE_DB, or
state.duckdb under CLARUS_PIPELINES_HOME) and never blocks the pipelines' writes. Off
localhost, or whenever DASHBOARD_PASSWORD is set, it asks for that shared secret.
"""

from __future__ import annotations

import streamlit as st

from clarus_pipelines.dashboards import auth, queries

st.set_page_config(page_title="Clarus pipelines health", page_icon=":material/local_shipping:", layout="wide")

if auth.gate():
    pages = [
        st.Page("app_pages/health.py", title="Health overview", icon=":material/monitor_heart:", url_path="health", default=True),
        st.Page("app_pages/exceptions.py", title="Exception queue", icon=":material/report:", url_path="exceptions"),
        st.Page("app_pages/journey.py", title="Order journey", icon=":material/route:", url_path="journey"),
        st.Page("app_pages/stock.py", title="Stock", icon=":material/inventory_2:", url_path="stock"),
        st.Page("app_pages/reconciliation.py", title="Reconciliation", icon=":material/balance:", url_path="reconciliation"),
        st.Page("app_pages/audit.py", title="Integration audit", icon=":material/fact_check:", url_path="audit"),
    ]
    page = st.navigation(pages)

    with st.sidebar:
        if auth.is_authenticated():
            st.toggle(
                "Show personal data", key="show_personal_data",
                help="Names, emails, phone numbers and addresses are masked unless you switch this on.",
            )
            if st.button("Sign out", icon=":material/logout:"):
                auth.sign_out()
                st.rerun()
        else:
            st.caption("Personal data is masked. Revealing it needs a signed-in session (set DASHBOARD_PASSWORD).")
        if st.button("Refresh now", icon=":material/refresh:", help="Take a fresh copy of the state database now."):
            queries.current_snapshot(force=True)
        st.caption(f"State: `{queries.state_path()}`")

    page.run()
