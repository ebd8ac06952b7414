"""What every dashboard page shares: the snapshot to read, masking, SLAs and formatting."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from clarus_pipelines import catalogue, runbook
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.logs import PII_KEYS, mask_value
from clarus_pipelines.catalogue import SOURCE_NAMES
from clarus_pipelines.connectors.clarus_model import GoodsOutStatus
from clarus_pipelines.settings import ConfigError, get_policies
from clarus_pipelines.dashboards import auth, queries

log = logging.getLogger(__name__)

CLARUS_STATUS = {int(s): s.name for s in GoodsOutStatus}
SYSTEM_LABELS = {**SOURCE_NAMES, "pipeline": "Pipeline"}

def snapshot_or_stop() -> queries.Snapshot:
    """The snapshot to read; shows the empty state and stops the page when there is no state file yet."""
    try:
        snapshot = queries.current_snapshot()
    except Exception as exc:  # noqa: BLE001 - a page must explain, not show a traceback
        log.warning("state snapshot failed: %s", exc)
        st.error(
            f"The state database at `{queries.state_path()}` cannot be read right now ({type(exc).__name__}). "
            "The pipelines may be busy migrating it; this page retries on the next refresh."
        )
        st.stop()
    if snapshot is None:
        st.info(
            f"No pipeline state yet: `{queries.state_path()}` does not exist. It appears once the pipelines "
            "have processed their first webhook or sync (start everything with `clarus-pipelines demo`). "
            "Point the dashboard at another file with CLARUS_PIPELINES_STATE_DB or CLARUS_PIPELINES_HOME.",
            icon=":material/hourglass_empty:",
        )
        st.stop()
    if snapshot.error:
        st.warning(
            f"Showing data as of {snapshot.taken_at:%H:%M:%S} UTC: the latest refresh failed ({snapshot.error}).",
            icon=":material/sync_problem:",
        )
    return snapshot


def reveal_personal_data() -> bool:
    """True only when a signed-in person switched on 'Show personal data' for this session."""
    return auth.is_authenticated() and bool(st.session_state.get("show_personal_data", False))


# Unlike log masking, a run of bare digits is left alone here: on these pages it is a barcode,
# a tracking number or an id that people need to read, not a phone number (phone fields are
# masked by their key; phone numbers written with + or separators in free text are masked).
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"(?<![\w.])\+?\d[\d ()-]{8,}\d(?![\w.])")


def mask_text(text: str) -> str:
    """Emails and written-out phone numbers in free text replaced by placeholders."""
    text = _EMAIL.sub("<email>", text)
    return _PHONE.sub(lambda m: m.group(0) if m.group(0).isdigit() else "<phone>", text)


def mask(value: Any) -> Any:
    """A copy of a JSON-like value with personal fields (by key) and emails/phones (in text) masked."""
    if isinstance(value, dict):
        return {
            k: mask_value(v) if k.lower() in PII_KEYS and not isinstance(v, (dict, list)) else mask(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def present(value: Any, reveal: bool) -> Any:
    """A JSON value (or JSON text) as it may be shown: personal data masked unless revealed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value if reveal else mask_text(value)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return value if reveal else mask(value)


def present_text(text: Any, reveal: bool) -> str:
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    return str(text) if reveal else mask_text(str(text))


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text: Any) -> str:
    """Text from the data made safe to put inside st.markdown: no links, images or formatting from it."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", "" if text is None else str(text))


def sla_minutes(code: str) -> int | None:
    """The SLA in force for a type: the policies' override, else the catalogue's; None for unknown types."""
    kind = catalogue.CATALOGUE.get(code)
    if kind is None:
        return None
    try:
        override = get_policies().exception_overrides.get(code)
    except (ConfigError, OSError) as exc:
        log.warning("policies unreadable, using catalogue SLAs: %s", exc)
        override = None
    return override.sla_minutes if override and override.sla_minutes else kind.sla_minutes


def title_of(code: str) -> str:
    kind = catalogue.CATALOGUE.get(code)
    return kind.title if kind else code


def minutes_between(start: Any, end: datetime) -> float:
    if start is None or pd.isna(start):
        return float("nan")
    return (end - pd.Timestamp(start).to_pydatetime()).total_seconds() / 60


def format_age(minutes: float | None) -> str:
    """12 min, 3 h 05 min, 2 d 4 h."""
    if minutes is None or pd.isna(minutes):
        return "–"
    minutes = max(int(minutes), 0)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes // 1440} d {minutes % 1440 // 60} h"


def format_time(value: Any) -> str:
    if value is None or pd.isna(value):
        return "never"
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


def add_sla_columns(frame: pd.DataFrame, now: datetime, since_column: str = "first_seen") -> pd.DataFrame:
    """Age, SLA and share of SLA used for exception rows; resolved rows are aged until their resolution."""
    frame = frame.copy()
    ends = frame["resolved_at"] if "resolved_at" in frame else pd.Series([None] * len(frame), index=frame.index)
    frame["age_minutes"] = [
        minutes_between(start, pd.Timestamp(end).to_pydatetime() if end is not None and not pd.isna(end) else now)
        for start, end in zip(frame[since_column], ends)
    ]
    frame["sla_minutes"] = [sla_minutes(code) for code in frame["code"]]
    frame["sla_used"] = [
        (age / sla if sla else float("nan")) for age, sla in zip(frame["age_minutes"], frame["sla_minutes"])
    ]
    frame["breached"] = frame["sla_used"] > 1
    frame["age"] = frame["age_minutes"].map(format_age)
    frame["sla"] = frame["sla_minutes"].map(lambda m: runbook.format_minutes(int(m)) if m and not pd.isna(m) else "–")
    return frame


def now_utc() -> datetime:
    return utcnow()


def hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def window(hours: int) -> tuple[datetime, datetime]:
    """The last `hours` whole hours up to and including the current one (stable within the hour, for caching)."""
    until = hour_floor(now_utc())
    return until - timedelta(hours=hours - 1), until


def minute_floor(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def data_caption(snapshot: queries.Snapshot) -> None:
    st.caption(f"Data as of {snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC · all times UTC")
