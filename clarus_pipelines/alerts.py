"""Alerts: tell each exception's owner, on the owner's channels, without repeating.

What is alerted, from the exception queue:

- **new**: an exception is open that nobody was told about yet;
- **sla_breach**: an exception is still `open` (not acknowledged) longer than its SLA
  (`catalogue.sla_minutes`, or `policies.exception_overrides[code].sla_minutes`).

- **escalation:N**: an exception still `open` past its SLA goes to its owner role's
  escalation contact (`policies.owners[owner].escalation.channels`), and again every
  `renotify_minutes` until someone acknowledges or resolves it (N counts the
  notifications: 1 at the breach, 2 one interval later...). Owners without an escalation
  contact get only the SLA alert.

All are counted per *episode*: from the exception's latest raise or reopen. The
`alerts` table records each (code, entity, reason, episode) once, so a re-run or a
second dispatcher never repeats an alert, while a problem that comes back after it was
resolved is news again. An exception first seen already past its SLA gets only the SLA
alert.

Where alerts go: `policies.owners[owner].channels` (Slack incoming webhook, e-mail over
SMTP, a generic HTTP webhook, or the log). A channel `target` may be `env:NAME` to read
the URL or address from the environment (Slack webhook URLs are secrets). An owner with
no channels configured is alerted in the log. With `digest_minutes > 0` an owner's
alerts are batched into one message per window of that many minutes (windows aligned
on the clock); without it each alert is its own message, except that a burst of more
than `burst_limit` alerts for one channel goes out as one combined message.

Delivery: every (alert, channel) pair is a row of `alert_deliveries`. A dispatch claims
the due rows (with a lease, so two dispatchers never send the same row), sends without
holding the state lock, then records the outcome. Each send is retried with backoff
(HTTP: `connectors.http.send_with_retries`, honouring Retry-After; SMTP: tenacity on
transient errors). A channel whose send still fails raises CONNECTOR_FAILING with entity
`alerts:<channel>` (e.g. `alerts:slack:ops`); its alerts stay pending and are sent on a
later dispatch, and the exception clears itself when a send to the channel succeeds
again. A failing channel with nothing left to send is probed with a short notice, so it
clears even when its alerts were dropped. Deliveries of alerts whose exception was
resolved (or moved to a new episode) before they went out are dropped, not sent late.

Alert text carries the exception's message masked by `logs.mask_pii` (the entity id
itself is kept: ids are not personal data); the exception details are never sent.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import socket
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, get_args

import duckdb
import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from clarus_pipelines.state.alert_history import prune_alert_history
from clarus_pipelines import catalogue
from clarus_pipelines.connectors.http import RETRYABLE_STATUS, RetryAfterWait, RetryableStatus, RetryPolicy
from clarus_pipelines.exception_queue import Finding, sync_exceptions, utcnow
from clarus_pipelines.logs import mask_pii
from clarus_pipelines.settings import Settings
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)

NEW = "new"
SLA_BREACH = "sla_breach"
ESCALATION = "escalation"  # reasons are escalation:1, escalation:2, ... (one per re-notification)
CONNECTOR_CODE = "CONNECTOR_FAILING"
LEASE = timedelta(minutes=10)  # a claimed delivery not recorded within this is sent again
RETENTION = timedelta(days=90)  # default alert history kept (policies.retention.alerts_days; open exceptions' alerts stay)
SOURCE = "clarus-pipelines"


# ------------------------------------------------------------------------------ channels


@dataclass(frozen=True)
class Channel:
    """One alert destination of one owner, e.g. `slack:ops` or `email:finance:2`."""

    id: str
    owner: str
    kind: str  # slack, email, webhook, log
    target: str = ""
    digest_minutes: int = 0
    escalation: bool = False  # the owner role's escalation contact, not the owner's own channel

    @property
    def entity_id(self) -> str:
        """The CONNECTOR_FAILING entity of this channel."""
        return f"alerts:{self.id}"

    def resolved_target(self) -> str:
        """The URL or address to send to; `env:NAME` reads it from the environment."""
        if self.target.startswith("env:"):
            name = self.target[4:]
            value = os.environ.get(name, "").strip()
            if not value:
                raise DeliveryError(f"environment variable {name} (target of {self.id}) is not set")
            return value
        return self.target


def owner_channels(policies: Policies) -> list[Channel]:
    """Every configured channel, plus a log channel for each owner that has none."""
    channels: list[Channel] = []
    for owner in get_args(catalogue.Owner):
        policy = policies.owners.get(owner)
        configured = policy.channels if policy else []
        digest = policy.digest_minutes if policy else 0
        seen: Counter = Counter()
        for spec in configured:
            seen[spec.kind] += 1
            suffix = f":{seen[spec.kind]}" if seen[spec.kind] > 1 else ""
            channels.append(Channel(f"{spec.kind}:{owner}{suffix}", owner, spec.kind, spec.target, digest))
        if not configured:
            channels.append(Channel(f"log:{owner}", owner, "log", "", digest))
        escalation = policy.escalation if policy else None
        seen = Counter()
        for spec in escalation.channels if escalation else []:
            seen[spec.kind] += 1
            suffix = f":{seen[spec.kind]}" if seen[spec.kind] > 1 else ""
            channels.append(Channel(f"escalation:{spec.kind}:{owner}{suffix}", owner, spec.kind, spec.target, 0, True))
    return channels


def is_escalation(reason: str) -> bool:
    return reason.startswith(ESCALATION + ":")


def escalation_number(breached_for: timedelta, renotify_minutes: int) -> int:
    """Which notification is due `breached_for` after the SLA breach: 1 at once, then one per interval."""
    if renotify_minutes <= 0:
        return 1
    return 1 + int(breached_for.total_seconds() // (renotify_minutes * 60))


def sla_minutes(code: str, policies: Policies | None) -> int:
    override = policies.exception_overrides.get(code) if policies else None
    if override is not None and override.sla_minutes:
        return override.sla_minutes
    return catalogue.get(code).sla_minutes


# -------------------------------------------------------------------------------- alerts


@dataclass(frozen=True)
class Alert:
    code: str
    entity_id: str
    reason: str
    episode_started_at: datetime
    owner: str
    severity: str
    title: str
    text: str
    sla_minutes: int
    due_at: datetime


# Open exceptions with the start of their current episode (latest raise or reopen).
_OPEN_EPISODES = (
    "WITH episodes AS (SELECT code, entity_id, max(occurred_at) AS started FROM exception_events"
    "   WHERE action IN ('raised', 'reopened') GROUP BY code, entity_id),"
    " open AS (SELECT e.code, e.entity_id, e.entity_type, e.owner, e.severity, e.status, e.message,"
    "   e.details::VARCHAR AS details, e.first_seen, e.occurrences,"
    "   greatest(coalesce(p.started, e.first_seen), e.first_seen) AS episode_started_at"
    "   FROM exceptions e LEFT JOIN episodes p USING (code, entity_id) WHERE e.status <> 'resolved')"
)
_ALERTED = (
    " EXISTS (SELECT 1 FROM alerts a WHERE a.code = o.code AND a.entity_id = o.entity_id"
    "   AND a.episode_started_at = o.episode_started_at AND a.reason = ?)"
)
# detail fields whose values are ids: kept verbatim in alert text (see `mask_keeping`)
ID_FIELDS = ("order_id", "order_name", "shipment_id", "goods_out_id", "refund_id", "reference", "tracking_number",
             "clarus_goods_out_id", "sku")


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(query, list(params or []))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _age(minutes: float) -> str:
    minutes = max(int(minutes), 0)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest:02d} min" if hours < 48 else f"{hours // 24} days {hours % 24} h"


def mask_keeping(text: str, keep: Iterable[str | None]) -> str:
    """`mask_pii(text)`, leaving the given ids intact (long digit ids look like phone numbers)."""
    kept = sorted({k for k in keep if k}, key=len, reverse=True)
    placeholders = {}
    for index, value in enumerate(kept):
        token = f"\x00{index}\x00"
        if value in text:
            text = text.replace(value, token)
            placeholders[token] = value
    masked = mask_pii(text)
    for token, value in placeholders.items():
        masked = masked.replace(token, value)
    return masked


def alert_text(row: dict[str, Any], reason: str, sla: int, now: datetime) -> tuple[str, str]:
    """(title, text) of one alert; the exception message is masked."""
    kind = catalogue.get(row["code"])
    age_min = (now - row["episode_started_at"]).total_seconds() / 60
    try:
        details = json.loads(row.get("details") or "{}")
    except ValueError:
        details = {}
    ids = [str(details[k]) for k in ID_FIELDS if isinstance(details, dict) and details.get(k) not in (None, "")]
    message = mask_keeping(str(row["message"]), [row["entity_id"], *ids])
    head = f"[{row['severity'].upper()}] {row['code']}: {kind.title}"
    if reason == SLA_BREACH:
        head += f" - open {_age(age_min)}, past its {sla} min SLA"
    elif is_escalation(reason):
        number = int(reason.split(":", 1)[1])
        head = (f"ESCALATED{f' (reminder {number - 1})' if number > 1 else ''}: {head} - open {_age(age_min)}, "
                f"past its {sla} min SLA and not acknowledged by {row['owner']}")
    lines = [
        head,
        f"{row['entity_type']} {row['entity_id']}: {message}",
        f"Owner: {row['owner']}. Open {_age(age_min)} (SLA {sla} min).",
        f"What to do: {kind.resolution}",
    ]
    if is_escalation(reason):
        lines.append(f"Escalation: {kind.escalation}")
    return kind.title, "\n".join(lines)


def _escalations(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], policies: Policies,
                 now: datetime) -> list[Alert]:
    """Escalations now due: open past the SLA, owner has an escalation contact, this
    interval's notification not yet recorded (a missed interval is not sent late)."""
    sent = {
        (c, e, ep, r) for c, e, ep, r in con.execute(
            "SELECT code, entity_id, episode_started_at, reason FROM alerts WHERE reason LIKE 'escalation:%'").fetchall()
    }
    due = []
    for row in rows:
        policy = policies.owners.get(row["owner"])
        escalation = policy.escalation if policy else None
        if escalation is None or row["status"] != "open" or row["code"] not in catalogue.CATALOGUE:
            continue
        sla = sla_minutes(row["code"], policies)
        breach = row["episode_started_at"] + timedelta(minutes=sla)
        if now < breach:
            continue
        reason = f"{ESCALATION}:{escalation_number(now - breach, escalation.renotify_minutes)}"
        key = (row["code"], row["entity_id"], row["episode_started_at"], reason)
        if key in sent:
            continue
        title, text = alert_text(row, reason, sla, now)
        due.append(Alert(row["code"], row["entity_id"], reason, row["episode_started_at"], row["owner"],
                         row["severity"], title, text, sla, now))
    return due


def escalated(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Open exceptions escalated in their current episode: how many times, when last (for the dashboard)."""
    return _rows(
        con,
        _OPEN_EPISODES + " SELECT o.code, o.entity_id, count(*)::INTEGER AS escalations, max(a.due_at) AS last_escalated_at"
        " FROM open o JOIN alerts a ON a.code = o.code AND a.entity_id = o.entity_id"
        "  AND a.episode_started_at = o.episode_started_at AND a.reason LIKE 'escalation:%'"
        " GROUP BY o.code, o.entity_id ORDER BY last_escalated_at DESC",
    )


def plan_alerts(con: duckdb.DuckDBPyConnection, policies: Policies, channels: Sequence[Channel], now: datetime) -> list[Alert]:
    """Record the alerts now due (new and SLA breaches) with a pending delivery per channel.

    Returns the alerts recorded by this call (none on a re-run).
    """
    due: list[Alert] = []
    silent: list[tuple] = []  # 'new' alerts superseded by an SLA alert: recorded, not sent
    rows = _rows(
        con,
        _OPEN_EPISODES + f" SELECT o.*, {_ALERTED} AS new_sent, {_ALERTED} AS sla_sent FROM open o"
        " ORDER BY o.first_seen, o.code, o.entity_id",
        [NEW, SLA_BREACH],
    )
    for row in rows:
        if row["code"] not in catalogue.CATALOGUE:
            continue
        episode = row["episode_started_at"]
        sla = sla_minutes(row["code"], policies)
        breached = row["status"] == "open" and now - episode >= timedelta(minutes=sla)
        key = (row["code"], row["entity_id"])
        wants_new = not row["new_sent"] and row["status"] == "open"
        wants_sla = breached and not row["sla_sent"]
        if wants_sla:
            title, text = alert_text(row, SLA_BREACH, sla, now)
            due.append(Alert(*key, SLA_BREACH, episode, row["owner"], row["severity"], title, text, sla, now))
            if wants_new:
                silent.append((*key, NEW, episode, row["owner"], row["severity"], title, text, sla, now))
        elif wants_new:
            title, text = alert_text(row, NEW, sla, now)
            due.append(Alert(*key, NEW, episode, row["owner"], row["severity"], title, text, sla, now))
    due += _escalations(con, rows, policies, now)
    rows = [
        (a.code, a.entity_id, a.reason, a.episode_started_at, a.owner, a.severity, a.title, a.text, a.sla_minutes, a.due_at)
        for a in due
    ] + silent
    if rows:
        con.executemany(
            "INSERT INTO alerts (code, entity_id, reason, episode_started_at, owner, severity, title, text, sla_minutes,"
            " due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )
    by_owner: dict[str, list[Channel]] = defaultdict(list)
    for channel in channels:
        by_owner[channel.owner].append(channel)
    deliveries = [
        (a.code, a.entity_id, a.reason, a.episode_started_at, channel.id, now)
        for a in due
        for channel in by_owner.get(a.owner, [])
        if channel.escalation == is_escalation(a.reason)
    ]
    if deliveries:
        con.executemany(
            "INSERT INTO alert_deliveries (code, entity_id, reason, episode_started_at, channel, status, attempts, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?) ON CONFLICT DO NOTHING",
            deliveries,
        )
    return due


# ------------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One message to one channel: the alerts it carries (none for a recovery probe)."""

    channel: Channel
    message_id: str
    alerts: list[dict[str, Any]]
    digest: bool = False
    probe_since: datetime | None = None  # set for a probe of a failing channel

    @property
    def keys(self) -> list[tuple]:
        return [(a["code"], a["entity_id"], a["reason"], a["episode_started_at"]) for a in self.alerts]


def _window_end(moment: datetime, minutes: int) -> datetime:
    epoch_min = int((moment - datetime(1970, 1, 1)).total_seconds() // 60)
    return datetime(1970, 1, 1) + timedelta(minutes=(epoch_min // minutes + 1) * minutes)


def drop_stale(con: duckdb.DuckDBPyConnection, channels: Sequence[Channel], now: datetime) -> int:
    """Drop undelivered alerts that are no longer true or have no channel any more."""
    current = {
        (r["code"], r["entity_id"], r["episode_started_at"]): r["status"]
        for r in _rows(con, _OPEN_EPISODES + " SELECT code, entity_id, episode_started_at, status FROM open")
    }
    pending = _rows(
        con,
        "SELECT code, entity_id, reason, episode_started_at, channel FROM alert_deliveries"
        " WHERE status = 'pending' OR (status = 'sending' AND claimed_at < ?)",
        [now - LEASE],
    )
    configured = {c.id for c in channels}
    drops = []
    for d in pending:
        status = current.get((d["code"], d["entity_id"], d["episode_started_at"]))
        if d["channel"] not in configured:
            why = "channel no longer configured"
        elif status is None:
            why = "exception resolved before the alert was delivered"
        elif (d["reason"] == SLA_BREACH or is_escalation(d["reason"])) and status != "open":
            why = "exception acknowledged before the alert was delivered"
        else:
            continue
        drops.append((why, now, d["code"], d["entity_id"], d["reason"], d["episode_started_at"], d["channel"]))
    if drops:
        con.executemany(
            "UPDATE alert_deliveries SET status = 'dropped', last_error = ?, claimed_at = NULL, updated_at = ?"
            " WHERE code = ? AND entity_id = ? AND reason = ? AND episode_started_at = ? AND channel = ?",
            drops,
        )
    return len(drops)


def claim_batches(
    con: duckdb.DuckDBPyConnection, channels: Sequence[Channel], now: datetime, *, burst_limit: int = 5
) -> list[Batch]:
    """Claim the deliveries due now, grouped into messages; probes for failing idle channels."""
    by_id = {c.id: c for c in channels}
    rows = _rows(
        con,
        "SELECT d.channel, a.code, a.entity_id, a.reason, a.episode_started_at, a.owner, a.severity, a.title, a.text,"
        " a.sla_minutes, a.due_at, e.entity_type, e.first_seen"
        " FROM alert_deliveries d JOIN alerts a USING (code, entity_id, reason, episode_started_at)"
        " LEFT JOIN exceptions e ON e.code = a.code AND e.entity_id = a.entity_id"
        " WHERE d.status = 'pending' OR (d.status = 'sending' AND d.claimed_at < ?)"
        " ORDER BY d.channel, a.due_at, a.code, a.entity_id",
        [now - LEASE],
    )
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["channel"] in by_id:
            grouped[row["channel"]].append(row)
    batches: list[Batch] = []
    for channel_id, alerts in grouped.items():
        channel = by_id[channel_id]
        if channel.digest_minutes > 0:
            oldest = min(a["due_at"] for a in alerts)
            if _window_end(oldest, channel.digest_minutes) > now:
                continue  # the window is still open
            batches.append(Batch(channel, uuid.uuid4().hex, alerts, digest=True))
        elif len(alerts) > burst_limit:
            batches.append(Batch(channel, uuid.uuid4().hex, alerts, digest=True))
        else:
            batches += [Batch(channel, uuid.uuid4().hex, [a]) for a in alerts]
    claims = [(now, b.message_id, now, b.channel.id, *key) for b in batches for key in b.keys]
    if claims:
        con.executemany(
            "UPDATE alert_deliveries SET status = 'sending', claimed_at = ?, message_id = ?, updated_at = ?"
            " WHERE channel = ? AND code = ? AND entity_id = ? AND reason = ? AND episode_started_at = ?",
            claims,
        )
    busy = {b.channel.id for b in batches} | set(grouped)
    failing = con.execute(
        "SELECT entity_id, first_seen FROM exceptions WHERE code = ? AND status <> 'resolved' AND entity_id LIKE 'alerts:%'",
        [CONNECTOR_CODE],
    ).fetchall()
    for entity_id, since in failing:
        channel = by_id.get(entity_id.removeprefix("alerts:"))
        if channel is not None and channel.id not in busy:
            batches.append(Batch(channel, uuid.uuid4().hex, [], probe_since=since))
    return batches


# ------------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    payload: dict[str, Any]


def _alert_json(alert: dict[str, Any]) -> dict[str, Any]:
    kind = catalogue.get(alert["code"])
    return {
        "code": alert["code"],
        "title": alert["title"],
        "reason": alert["reason"],
        "owner": alert["owner"],
        "severity": alert["severity"],
        "entity_type": alert.get("entity_type") or kind.entity,
        "entity_id": alert["entity_id"],
        "opened_at": alert["episode_started_at"].isoformat(),
        "sla_minutes": alert["sla_minutes"],
        "text": alert["text"],
        "resolution": kind.resolution,
        "escalation": kind.escalation,
    }


def render(batch: Batch) -> Message:
    """The message for a batch: one alert's text, a digest, or a recovery probe."""
    channel = batch.channel
    if batch.probe_since is not None:
        text = (
            f"Clarus pipelines: alert delivery to {channel.id} works again. It was failing since "
            f"{batch.probe_since:%Y-%m-%d %H:%M} UTC; check the exception queue for alerts you may have missed."
        )
        return Message(f"[{SOURCE}] alert channel {channel.id} working again", text,
                       {"source": SOURCE, "owner": channel.owner, "kind": "channel_recovered", "text": text, "alerts": []})
    alerts = batch.alerts
    if len(alerts) == 1 and not batch.digest:
        alert = alerts[0]
        subject = f"[{SOURCE}] {alert['severity'].upper()} {alert['code']} {alert['entity_id']}"
        if alert["reason"] == SLA_BREACH:
            subject += " (past SLA)"
        elif is_escalation(alert["reason"]):
            subject = f"[{SOURCE}] ESCALATED {alert['severity'].upper()} {alert['code']} {alert['entity_id']} (past SLA, not acknowledged)"
        text = alert["text"]
    else:
        reasons = Counter(a["reason"] for a in alerts)
        parts = [f"{reasons[NEW]} new"] if reasons[NEW] else []
        if reasons[SLA_BREACH]:
            parts.append(f"{reasons[SLA_BREACH]} past SLA")
        escalations = sum(n for r, n in reasons.items() if is_escalation(r))
        if escalations:
            parts.append(f"{escalations} escalated")
        subject = f"[{SOURCE}] {len(alerts)} alerts for {channel.owner} ({', '.join(parts)})"
        order = sorted(alerts, key=lambda a: (-catalogue.SEVERITY_RANK.get(a["severity"], 0), a["due_at"]))
        text = "\n\n".join([f"Clarus pipelines: {len(alerts)} alerts for {channel.owner} ({', '.join(parts)})"]
                           + [a["text"] for a in order])
    payload = {"source": SOURCE, "owner": channel.owner, "kind": "digest" if batch.digest else "alert",
               "text": text, "alerts": [_alert_json(a) for a in alerts]}
    return Message(subject, text, payload)


# ------------------------------------------------------------------------------ delivery


class DeliveryError(RuntimeError):
    """A channel's configuration cannot be used (e.g. its target's variable is not set)."""


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, RetryableStatus):
        return f"HTTP {exc.response.status_code}"  # never the URL: a Slack webhook URL is a credential
    return type(exc).__name__ if exc is not None else "failed"


@dataclass(frozen=True)
class SmtpConfig:
    host: str | None
    port: int = 25
    sender: str | None = None
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "SmtpConfig":
        return cls(
            host=settings.alert_smtp_host, port=settings.alert_smtp_port, sender=settings.alert_smtp_from,
            starttls=settings.alert_smtp_starttls, username=settings.alert_smtp_username,
            password=settings.alert_smtp_password.get_secret_value() if settings.alert_smtp_password else None,
        )


@dataclass
class Delivery:
    ok: bool
    tries: int
    error: str | None = None


def _smtp_transient(exc: BaseException) -> bool:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError, socket.timeout))


class AlertSender:
    """Sends rendered messages to channels, with retries and backoff."""

    def __init__(self, smtp: SmtpConfig | None = None, retry: RetryPolicy | None = None, timeout_s: float = 10.0):
        self.smtp = smtp or SmtpConfig(host=None)
        self.retry = retry or RetryPolicy(attempts=4, max_elapsed_s=20.0, initial_s=0.5, max_backoff_s=5.0,
                                          jitter_s=0.2, max_retry_after_s=10.0)
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> "AlertSender":
        return cls(SmtpConfig.from_settings(settings or Settings()), **kwargs)

    def deliver(self, channel: Channel, message: Message) -> Delivery:
        """Send one message; never raises for a delivery problem (the Delivery says what failed)."""
        if channel.kind == "log":
            log.warning("alert for %s via %s:\n%s", channel.owner, channel.id, message.text)
            return Delivery(True, 1)
        try:
            target = channel.resolved_target()
        except DeliveryError as exc:
            return Delivery(False, 0, str(exc))
        if not target:
            return Delivery(False, 0, f"no target configured for {channel.id}")
        if channel.kind == "email":
            return self._email(channel, target, message)
        return self._post(channel, target, {"text": message.text} if channel.kind == "slack" else message.payload)

    def _post(self, channel: Channel, url: str, body: dict[str, Any]) -> Delivery:
        """POST JSON with retries on transport errors, 429 and 5xx (Retry-After honoured).

        The URL is never logged or reported: a Slack webhook URL is a credential.
        """
        tries = 0

        def post_once(client: httpx.Client) -> httpx.Response:
            nonlocal tries
            tries += 1
            response = client.post(url, json=body, headers={"User-Agent": f"{SOURCE}/alerts"})
            if response.status_code in RETRYABLE_STATUS:
                raise RetryableStatus(response)
            return response

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, (RetryableStatus, httpx.TransportError))),
            wait=RetryAfterWait(self.retry),
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.max_elapsed_s),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "alert channel %s: %s; retry %d", channel.id, _describe(state.outcome.exception()), state.attempt_number
            ),
        )
        try:
            with httpx.Client(timeout=self.timeout_s) as client:
                response = retrying(post_once, client)
        except (RetryableStatus, httpx.TransportError) as exc:
            return Delivery(False, tries, f"{_describe(exc)} after {tries} tries")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return Delivery(False, tries, f"target of {channel.id} is not a usable URL ({type(exc).__name__})")
        if response.status_code >= 300:
            return Delivery(False, tries, f"HTTP {response.status_code}: {mask_pii(response.text[:200])}")
        return Delivery(True, tries)

    def _email(self, channel: Channel, to: str, message: Message) -> Delivery:
        if not self.smtp.host or not self.smtp.sender:
            return Delivery(False, 0, "e-mail alerts need ALERT_SMTP_HOST and ALERT_SMTP_FROM in the environment")
        email = EmailMessage()
        email["Subject"] = message.subject
        email["From"] = self.smtp.sender
        email["To"] = to
        email["X-Clarus-Pipelines-Alert"] = message.payload.get("kind", "alert")
        email.set_content(message.text)
        tries = 0

        def send_once() -> None:
            nonlocal tries
            tries += 1
            with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=self.smtp.timeout_s) as smtp:
                if self.smtp.starttls:
                    smtp.starttls()
                if self.smtp.username and self.smtp.password:
                    smtp.login(self.smtp.username, self.smtp.password)
                smtp.send_message(email)

        retrying = Retrying(
            retry=retry_if_exception(_smtp_transient),
            wait=wait_exponential_jitter(initial=self.retry.initial_s, max=self.retry.max_backoff_s, jitter=self.retry.jitter_s),
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.max_elapsed_s),
            reraise=True,
        )
        try:
            retrying(send_once)
        except (smtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "smtp_code", None)
            detail = f"SMTP {code}" if code else type(exc).__name__
            return Delivery(False, tries, f"{detail} after {tries} tries")
        return Delivery(True, tries)


# ------------------------------------------------------------------------------ dispatch


@dataclass
class DispatchReport:
    created: Counter = field(default_factory=Counter)  # reason -> alerts recorded
    messages_sent: int = 0
    alerts_delivered: int = 0
    dropped: int = 0
    waiting: int = 0  # deliveries still pending (digest windows, failing channels)
    failing_channels: dict[str, str] = field(default_factory=dict)  # channel -> error
    recovered_channels: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.created:
            parts.append("new alerts: " + ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(self.created.items())))
        if self.messages_sent:
            parts.append(f"sent {self.alerts_delivered} alert(s) in {self.messages_sent} message(s)")
        if self.failing_channels:
            parts.append("failing: " + ", ".join(f"{c} ({e})" for c, e in sorted(self.failing_channels.items())))
        if self.recovered_channels:
            parts.append("working again: " + ", ".join(sorted(self.recovered_channels)))
        if self.dropped:
            parts.append(f"dropped {self.dropped} alert(s) no longer true")
        if self.waiting:
            parts.append(f"{self.waiting} waiting (digest windows or failing channels)")
        if not parts:
            return "No new or SLA-breaching exceptions; nothing to send."
        text = "; ".join(parts)
        return text[0].upper() + text[1:] + "."

    def as_metadata(self) -> dict[str, Any]:
        return {
            "alerts_new": self.created.get(NEW, 0),
            "alerts_sla_breach": self.created.get(SLA_BREACH, 0),
            "alerts_escalation": self.created.get(ESCALATION, 0),
            "messages_sent": self.messages_sent,
            "alerts_delivered": self.alerts_delivered,
            "dropped": self.dropped,
            "waiting": self.waiting,
            "failing_channels": sorted(self.failing_channels),
        }


def _executemany(con: duckdb.DuckDBPyConnection, query: str, rows: list) -> None:
    if rows:  # DuckDB refuses an empty parameter list (a probe carries no alerts)
        con.executemany(query, rows)


def record_results(
    con: duckdb.DuckDBPyConnection,
    results: Sequence[tuple[Batch, Delivery | None, datetime, datetime]],
    channels: Sequence[Channel],
    policies: Policies,
    now: datetime,
) -> dict[str, str]:
    """Store each batch's outcome and sync CONNECTOR_FAILING for the channels tried.

    `results` holds (batch, delivery or None when not attempted, started, finished).
    Returns the CONNECTOR_FAILING outcome per entity.
    """
    findings: dict[str, Finding] = {}
    tried: set[str] = set()
    for batch, delivery, started, finished in results:
        keys = batch.keys
        if delivery is None:  # skipped: the channel already failed this round
            _executemany(con, 
                "UPDATE alert_deliveries SET status = 'pending', claimed_at = NULL, message_id = NULL, updated_at = ?"
                " WHERE channel = ? AND code = ? AND entity_id = ? AND reason = ? AND episode_started_at = ?",
                [(now, batch.channel.id, *key) for key in keys],
            )
            continue
        tried.add(batch.channel.entity_id)
        con.execute(
            "INSERT INTO alert_messages (message_id, channel, owner, kind, alerts, digest, status, tries, error,"
            " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [batch.message_id, batch.channel.id, batch.channel.owner, batch.channel.kind, len(batch.alerts), batch.digest,
             "sent" if delivery.ok else "failed", delivery.tries, delivery.error, started, finished],
        )
        if delivery.ok:
            _executemany(con, 
                "UPDATE alert_deliveries SET status = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL,"
                " claimed_at = NULL, updated_at = ? WHERE channel = ? AND code = ? AND entity_id = ? AND reason = ?"
                " AND episode_started_at = ?",
                [(finished, now, batch.channel.id, *key) for key in keys],
            )
            findings.pop(batch.channel.entity_id, None)
        else:
            _executemany(con, 
                "UPDATE alert_deliveries SET status = 'pending', attempts = attempts + 1, last_error = ?, claimed_at = NULL,"
                " message_id = NULL, updated_at = ? WHERE channel = ? AND code = ? AND entity_id = ? AND reason = ?"
                " AND episode_started_at = ?",
                [(delivery.error, now, batch.channel.id, *key) for key in keys],
            )
            waiting = con.execute(
                "SELECT count(*) FROM alert_deliveries WHERE channel = ? AND status IN ('pending', 'sending')",
                [batch.channel.id],
            ).fetchall()[0][0]
            findings[batch.channel.entity_id] = Finding(
                batch.channel.entity_id,
                f"alert channel {batch.channel.id} ({batch.channel.kind}) keeps failing: {delivery.error};"
                f" {waiting} alert(s) for {batch.channel.owner} waiting",
                {"channel": batch.channel.id, "kind": batch.channel.kind, "owner": batch.channel.owner,
                 "error": delivery.error, "tries": delivery.tries},
            )
    configured = {c.entity_id for c in channels}
    open_alert_channels = [
        r[0] for r in con.execute(
            "SELECT entity_id FROM exceptions WHERE code = ? AND status <> 'resolved' AND entity_id LIKE 'alerts:%'",
            [CONNECTOR_CODE],
        ).fetchall()
    ]
    # a channel removed from the policies cannot recover by itself: clear it too
    scope = sorted(tried | {e for e in open_alert_channels if e not in configured})
    if not scope:
        return {}
    return sync_exceptions(con, CONNECTOR_CODE, list(findings.values()), scope=scope, policies=policies, now=now)


def dispatch_alerts(
    store: StateStore,
    policies: Policies,
    sender: AlertSender,
    *,
    now: datetime | None = None,
    burst_limit: int = 5,
) -> DispatchReport:
    """Record due alerts, send what is due on each channel, record the outcome.

    The state lock is never held while sending.
    """
    now = now or utcnow()
    channels = owner_channels(policies)
    report = DispatchReport()
    with store.write() as con:
        prune_alert_history(con, now, keep=timedelta(days=policies.retention.alerts_days))
        created = plan_alerts(con, policies, channels, now)
        report.created.update(ESCALATION if is_escalation(a.reason) else a.reason for a in created)
        report.dropped = drop_stale(con, channels, now)
        batches = claim_batches(con, channels, now, burst_limit=burst_limit)

    by_channel: dict[str, list[Batch]] = defaultdict(list)
    for batch in batches:
        by_channel[batch.channel.id].append(batch)

    def send_channel(channel_batches: list[Batch]) -> list[tuple[Batch, Delivery | None, datetime, datetime]]:
        out: list[tuple[Batch, Delivery | None, datetime, datetime]] = []
        failed = False
        for batch in channel_batches:
            if failed:  # do not hammer a channel that just failed; its alerts wait for the next dispatch
                out.append((batch, None, now, now))
                continue
            started = utcnow()
            delivery = sender.deliver(batch.channel, render(batch))
            out.append((batch, delivery, started, utcnow()))
            failed = not delivery.ok
        return out

    results: list[tuple[Batch, Delivery | None, datetime, datetime]] = []
    if by_channel:
        # channels are independent: one slow or failing channel does not delay the others
        with ThreadPoolExecutor(max_workers=min(8, len(by_channel)), thread_name_prefix="alerts") as pool:
            for channel_results in pool.map(send_channel, by_channel.values()):
                results += channel_results
    for batch, delivery, _, _ in results:
        if delivery is None:
            continue
        if delivery.ok:
            report.messages_sent += 1
            report.alerts_delivered += len(batch.alerts)
        else:
            report.failing_channels[batch.channel.id] = delivery.error or "failed"
            log.warning("alert channel %s failed: %s", batch.channel.id, delivery.error)

    with store.write() as con:
        outcome = record_results(con, results, channels, policies, now)
        report.waiting = con.execute(
            "SELECT count(*) FROM alert_deliveries WHERE status IN ('pending', 'sending')"
        ).fetchall()[0][0]
    report.recovered_channels = [e.removeprefix("alerts:") for e, action in outcome.items() if action == "auto_resolved"]
    return report


# --------------------------------------------------------------------------- read side


def alert_history(con: duckdb.DuckDBPyConnection, since: datetime) -> list[dict[str, Any]]:
    """Alerts due since a time with their delivery state per channel (for the dashboard)."""
    return _rows(
        con,
        "SELECT a.due_at, a.code, a.entity_id, a.reason, a.owner, a.severity, a.title, d.channel, d.status,"
        " d.attempts, d.last_error, d.sent_at FROM alerts a"
        " JOIN alert_deliveries d USING (code, entity_id, reason, episode_started_at)"
        " WHERE a.due_at >= ? ORDER BY a.due_at DESC, a.code, a.entity_id, d.channel",
        [since],
    )


def to_json(report: DispatchReport) -> str:
    return json.dumps({"summary": report.summary(), **report.as_metadata()}, sort_keys=True)
