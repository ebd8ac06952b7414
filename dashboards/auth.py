"""Access to the dashboard: a shared secret when it can be reached from other machines.

Bound to a loopback address (the demo's default) the dashboard is open, because only
people on the machine can reach it. Bound to anything else, or whenever
DASHBOARD_PASSWORD is set, every session must sign in with that shared secret. If the
dashboard is exposed and no secret is configured it refuses to show anything (fail
closed). A signed-in session may reveal personal data; nobody else can.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import time

import streamlit as st

log = logging.getLogger(__name__)

PASSWORD_ENV = "DASHBOARD_PASSWORD"
FAILED_LOGIN_DELAY_S = 1.0  # slows down guessing; a person barely notices
_SESSION_KEY = "dashboard_auth_digest"


def is_loopback(address: str | None) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    if not address:
        return False  # Streamlit binds every interface when no address is given
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def login_required(address: str | None, password: str | None) -> bool:
    return bool(password) or not is_loopback(address)


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of the entered secret with the configured one."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _digest(password: str) -> str:
    # Stored in the session instead of a flag, so changing the secret signs everyone out.
    return hashlib.sha256(b"clarus-dashboard:" + password.encode("utf-8")).hexdigest()


def configured_password() -> str | None:
    return os.environ.get(PASSWORD_ENV) or None


def server_address() -> str | None:
    return st.get_option("server.address")


def is_authenticated() -> bool:
    """True when this session signed in with the current shared secret."""
    password = configured_password()
    stored = st.session_state.get(_SESSION_KEY)
    return bool(password and stored and hmac.compare_digest(stored, _digest(password)))


def sign_out() -> None:
    st.session_state.pop(_SESSION_KEY, None)
    st.session_state.pop("show_personal_data", None)


def _login_page() -> None:
    st.title("Clarus pipelines health")
    st.write("This dashboard shows order and customer data. Sign in with the shared dashboard password.")
    with st.form("login", clear_on_submit=True):
        entered = st.text_input("Dashboard password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        password = configured_password()
        if password and password_matches(entered or "", password):
            st.session_state[_SESSION_KEY] = _digest(password)
            log.info("dashboard sign-in succeeded")
            st.rerun()
        time.sleep(FAILED_LOGIN_DELAY_S)
        log.warning("dashboard sign-in failed")
        st.error("Wrong password.")


def _locked_page() -> None:
    st.title("Clarus pipelines health")
    st.error(
        f"This dashboard is listening on `{server_address() or 'every network interface'}`, so other machines can "
        f"reach it, but no {PASSWORD_ENV} is set. Set {PASSWORD_ENV} to a shared secret, or bind the server to "
        "127.0.0.1 (`--server.address 127.0.0.1`)."
    )


def gate() -> bool:
    """Let the session through, or render the sign-in (or locked) page and return False."""
    password = configured_password()
    if not login_required(server_address(), password):
        return True
    if password and is_authenticated():
        return True
    page = _login_page if password else _locked_page
    st.navigation([st.Page(page, title="Sign in", url_path="sign-in")], position="hidden").run()
    return False
