"""Alerts against real local receivers: an HTTP server (Slack / webhook) and an SMTP server.

Exceptions are raised through the real exception queue in a DuckDB file under tmp_path or a fresh
PostgreSQL database (STATE_BACKENDS);
times are passed explicitly so SLA and digest windows are deterministic.
"""

from __future__ import annotations

import email
import json
import logging
import socket
import threading
from datetime import datetime, timedelta
from email import policy as email_policy

import dagster as dg
import pytest
import yaml
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from clarus_pipelines import exception_queue
from clarus_pipelines.alerts import AlertSender, SmtpConfig, claim_batches, dispatch_alerts, owner_channels, plan_alerts
from clarus_pipelines.connectors.http import RetryPolicy
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore
from world import make_store

T0 = datetime(2026, 3, 2, 10, 5)
FAST = RetryPolicy(attempts=3, max_elapsed_s=5.0, initial_s=0.01, max_backoff_s=0.02, jitter_s=0.0, max_retry_after_s=0.05)
PII = "customer jane.doe@example.com rang from +44 7700 900123"
STATE_BACKENDS = ("duckdb", "postgres")  # every test that uses the state once per state backend


# --------------------------------------------------------------------------- receivers


class HttpReceiver:
    """Records every POST per path; a path can be told to answer an error status."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.failing: dict[str, int] = {}
        self.fail_next: dict[str, list[int]] = {}  # statuses answered once each, then normal service
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._post, methods=["POST"])])

    async def _post(self, request: Request):
        body = json.loads(await request.body())
        path = request.url.path
        with self._lock:
            self.posts.append({"path": path, "body": body})
            queued = self.fail_next.get(path)
            status = queued.pop(0) if queued else self.failing.get(path)
        if status:
            return PlainTextResponse("slow down", status_code=status, headers={"Retry-After": "0"})
        return JSONResponse({"ok": True}) if not path.startswith("/slack") else PlainTextResponse("ok")

    def to(self, path: str) -> list[dict]:
        with self._lock:
            return [p["body"] for p in self.posts if p["path"] == path]


class SmtpRecorder:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.answer = "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.answer.startswith("250"):
            self.messages.append(email.message_from_bytes(envelope.content, policy=email_policy.default))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return self.answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http():
    receiver = HttpReceiver()
    served = serve_in_thread(receiver.app)
    receiver.url = served.url
    try:
        yield receiver
    finally:
        served.stop()


@pytest.fixture
def smtp():
    recorder = SmtpRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    recorder.port = controller.port
    try:
        yield recorder
    finally:
        controller.stop()


@pytest.fixture
def store(state) -> StateStore:
    return make_store(state)


def policies_with(owners: dict, **extra) -> Policies:
    base = load_policies(SANDBOX_POLICIES).model_dump(mode="python")
    return Policies.model_validate({**base, "owners": owners, **extra})


def sender(smtp: SmtpRecorder | None = None) -> AlertSender:
    config = SmtpConfig(host="127.0.0.1", port=smtp.port, sender="alerts@clarus.test", timeout_s=5.0) if smtp else None
    return AlertSender(config, retry=FAST, timeout_s=5.0)


def raise_(store: StateStore, code: str, entity: str, message: str, policies: Policies, at: datetime) -> None:
    with store.write() as con:
        exception_queue.raise_exception(con, code, entity, message, policies=policies, now=at)


def open_connector_failures(store: StateStore) -> dict[str, str]:
    with store.read() as con:
        return dict(con.execute(
            "SELECT entity_id, message FROM exceptions WHERE code = 'CONNECTOR_FAILING' AND status <> 'resolved'"
        ).fetchall())


# ------------------------------------------------------------------------------- tests


def test_new_exceptions_reach_every_channel_once_and_masked(store, http, smtp, caplog):
    policies = policies_with({
        "ops": {"channels": [{"kind": "slack", "target": f"{http.url}/slack/ops"},
                             {"kind": "webhook", "target": f"{http.url}/hook/ops"}]},
        "finance": {"channels": [{"kind": "email", "target": "finance@brand.test"}]},
        "cx": {"channels": [{"kind": "log"}]},
        "integration": {"channels": [{"kind": "log"}]},
    })
    raise_(store, "ORPHAN_ORDER", "5870000038037", f"Shopify order 5870000038037 (#1001) not in Clarus; {PII}", policies, T0)
    raise_(store, "RECONCILIATION_MISMATCH", "5870000038185", f"order #1002 shipped 24.00 against 60.00; {PII}", policies, T0)
    raise_(store, "TRACKING_MISSING", "SHP-1", "shipment SHP-1 dispatched without tracking", policies, T0)

    with caplog.at_level(logging.WARNING, logger="clarus_pipelines.alerts"):
        report = dispatch_alerts(store, policies, sender(smtp), now=T0 + timedelta(minutes=1))
    assert report.created["new"] == 3 and report.messages_sent == 4 and not report.failing_channels

    [slack] = http.to("/slack/ops")
    assert set(slack) == {"text"}
    assert "ORPHAN_ORDER" in slack["text"] and "Shopify order 5870000038037 (#1001)" in slack["text"]  # ids kept
    assert "jane.doe@example.com" not in slack["text"] and "7700 900123" not in slack["text"]
    [hook] = http.to("/hook/ops")
    assert hook["kind"] == "alert" and hook["owner"] == "ops"
    assert [(a["code"], a["entity_id"], a["reason"], a["severity"]) for a in hook["alerts"]] == [
        ("ORPHAN_ORDER", "5870000038037", "new", "high")]
    assert "jane.doe" not in json.dumps(hook)

    [(mail_from, rcpt)] = smtp.envelopes
    assert mail_from == "alerts@clarus.test" and rcpt == ["finance@brand.test"]
    [message] = smtp.messages
    assert "RECONCILIATION_MISMATCH" in message["Subject"] and "5870000038185" in message["Subject"]
    body = message.get_content()
    assert "shipped 24.00 against 60.00" in body and "jane.doe" not in body and "What to do:" in body
    assert any("TRACKING_MISSING" in r.getMessage() for r in caplog.records)

    again = dispatch_alerts(store, policies, sender(smtp), now=T0 + timedelta(minutes=2))
    assert not again.created and again.messages_sent == 0
    assert len(http.posts) == 2 and len(smtp.messages) == 1
    assert again.summary() == "No new or SLA-breaching exceptions; nothing to send."


def test_sla_breach_alerts_once_per_episode_and_reopen_is_news(store, http):
    policies = policies_with(
        {"ops": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/ops"}]}},
        exception_overrides={"ORDER_INCOMPLETE": {"sla_minutes": 30}},
    )
    raise_(store, "ORDER_INCOMPLETE", "1001", "order #1001 held: no postcode", policies, T0)
    raise_(store, "SHIP_METHOD_UNMAPPED", "1002", "order #1002 held: shipping line 'Drone' not mapped", policies, T0)
    send = sender()
    dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=1))
    assert [a["reason"] for m in http.to("/hook/ops") for a in m["alerts"]] == ["new", "new"]

    # ORDER_INCOMPLETE is past its overridden 30 min; SHIP_METHOD_UNMAPPED (120 min) is not, and is acknowledged
    with store.write() as con:
        exception_queue.acknowledge(con, "SHIP_METHOD_UNMAPPED", "1002", "Sam", now=T0 + timedelta(minutes=5))
    report = dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=31))
    assert report.created == {"sla_breach": 1}
    last = http.to("/hook/ops")[-1]["alerts"]
    assert [(a["code"], a["reason"], a["sla_minutes"]) for a in last] == [("ORDER_INCOMPLETE", "sla_breach", 30)]
    assert "past its 30 min SLA" in last[0]["text"]
    assert not dispatch_alerts(store, policies, send, now=T0 + timedelta(hours=5)).created  # acknowledged: no SLA alert

    # resolved, then the problem comes back: a new episode is news again
    with store.write() as con:
        exception_queue.sync_exceptions(con, "ORDER_INCOMPLETE", [], policies=policies, now=T0 + timedelta(hours=6))
    raise_(store, "ORDER_INCOMPLETE", "1001", "order #1001 held again: no postcode", policies, T0 + timedelta(hours=7))
    report = dispatch_alerts(store, policies, send, now=T0 + timedelta(hours=7, minutes=1))
    assert report.created == {"new": 1}
    assert "held again" in http.to("/hook/ops")[-1]["alerts"][0]["text"]


def test_exception_first_seen_past_its_sla_gets_one_alert(store, http):
    policies = policies_with({"cx": {"channels": [{"kind": "slack", "target": f"{http.url}/slack/cx"}]}})
    raise_(store, "TRACKING_NOT_POSTED", "SHP-9", "shipment SHP-9: Shopify fulfilment not created", policies, T0)
    report = dispatch_alerts(store, policies, sender(), now=T0 + timedelta(hours=3))
    assert report.created == {"sla_breach": 1} and report.messages_sent == 1
    assert "past its 60 min SLA" in http.to("/slack/cx")[0]["text"]
    assert dispatch_alerts(store, policies, sender(), now=T0 + timedelta(hours=4)).messages_sent == 0


def test_digest_batches_an_owners_alerts_into_one_message_per_window(store, smtp):
    policies = policies_with({"finance": {"channels": [{"kind": "email", "target": "finance@brand.test"}], "digest_minutes": 60}})
    send = sender(smtp)
    raise_(store, "REFUND_UNCLASSIFIED", "R1", "refund R1 fits no kind", policies, T0)
    dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=1))
    raise_(store, "RETURN_NOT_RECEIVED", "R2", "return R2 not received", policies, T0 + timedelta(minutes=20))
    raise_(store, "RECONCILIATION_MISMATCH", "1003", "order #1003 does not reconcile", policies, T0 + timedelta(minutes=30))
    report = dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=40))
    assert report.created == {"new": 2} and report.messages_sent == 0 and report.waiting == 3  # window 10:00-11:00 open
    assert smtp.messages == []

    report = dispatch_alerts(store, policies, send, now=datetime(2026, 3, 2, 11, 0, 30))
    assert report.messages_sent == 1 and report.alerts_delivered == 3
    [digest] = smtp.messages
    assert "3 alerts for finance" in digest["Subject"]
    body = digest.get_content()
    assert all(code in body for code in ("REFUND_UNCLASSIFIED", "RETURN_NOT_RECEIVED", "RECONCILIATION_MISMATCH"))
    assert dispatch_alerts(store, policies, send, now=datetime(2026, 3, 2, 12, 1)).messages_sent == 0


def test_failing_webhook_is_retried_raises_connector_failing_then_clears(store, http):
    policies = policies_with({
        "ops": {"channels": [{"kind": "slack", "target": f"{http.url}/slack/ops"}]},
        "integration": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/integration"}]},
    })
    http.failing["/slack/ops"] = 503
    raise_(store, "NOT_DISPATCHED_BY_CUTOFF", "1004", "order #1004 not dispatched by 15:00", policies, T0)

    report = dispatch_alerts(store, policies, sender(), now=T0 + timedelta(minutes=1))
    assert report.failing_channels.keys() == {"slack:ops"}
    assert len(http.to("/slack/ops")) == FAST.attempts  # retried with backoff, then given up for this round
    failures = open_connector_failures(store)
    assert list(failures) == ["alerts:slack:ops"] and "HTTP 503" in failures["alerts:slack:ops"]

    # the failure is itself alerted to the integration owner, while ops' alert waits
    report = dispatch_alerts(store, policies, sender(), now=T0 + timedelta(minutes=2))
    assert [a["code"] for m in http.to("/hook/integration") for a in m["alerts"]] == ["CONNECTOR_FAILING"]
    assert report.waiting == 1

    http.failing.clear()
    report = dispatch_alerts(store, policies, sender(), now=T0 + timedelta(minutes=3))
    assert report.alerts_delivered == 1 and report.recovered_channels == ["slack:ops"]
    assert "NOT_DISPATCHED_BY_CUTOFF" in http.to("/slack/ops")[-1]["text"]
    assert open_connector_failures(store) == {}
    with store.read() as con:
        assert con.execute("SELECT resolved_by FROM exceptions WHERE entity_id = 'alerts:slack:ops'").fetchone() == ("auto",)


def test_smtp_outage_then_recovery_probe_clears_a_channel_with_nothing_left(store, smtp):
    policies = policies_with({"finance": {"channels": [{"kind": "email", "target": "finance@brand.test"}]}})
    smtp.answer = "451 4.3.0 try again later"  # transient: retried, then CONNECTOR_FAILING
    raise_(store, "REFUND_UNCLASSIFIED", "R7", "refund R7 fits no kind", policies, T0)
    report = dispatch_alerts(store, policies, sender(smtp), now=T0 + timedelta(minutes=1))
    assert "SMTP 451 after 3 tries" in report.failing_channels["email:finance"]
    assert list(open_connector_failures(store)) == ["alerts:email:finance"]

    # the refund gets classified meanwhile: its alert is dropped, not sent late
    with store.write() as con:
        exception_queue.clear_exception(con, "REFUND_UNCLASSIFIED", "R7", now=T0 + timedelta(minutes=5))
    smtp.answer = "250 OK"
    report = dispatch_alerts(store, policies, sender(smtp), now=T0 + timedelta(minutes=6))
    assert report.dropped == 1 and report.recovered_channels == ["email:finance"]
    [probe] = smtp.messages  # only the "works again" notice
    assert "working again" in probe["Subject"] and "REFUND_UNCLASSIFIED" not in probe.get_content()
    assert open_connector_failures(store) == {}


def test_email_without_smtp_settings_fails_and_says_why(store):
    policies = policies_with({"finance": {"channels": [{"kind": "email", "target": "finance@brand.test"}]}})
    raise_(store, "REFUND_UNCLASSIFIED", "R8", "refund R8 fits no kind", policies, T0)
    report = dispatch_alerts(store, policies, AlertSender(SmtpConfig(host=None), retry=FAST), now=T0)
    assert "ALERT_SMTP_HOST" in report.failing_channels["email:finance"]


def test_target_from_environment_and_channel_ids(store, http, monkeypatch):
    monkeypatch.setenv("OPS_SLACK_WEBHOOK_URL", f"{http.url}/slack/secret-path")
    policies = policies_with({"ops": {"channels": [{"kind": "slack", "target": "env:OPS_SLACK_WEBHOOK_URL"},
                                                    {"kind": "slack", "target": f"{http.url}/slack/second"}]}})
    channels = {c.id: c for c in owner_channels(policies)}
    assert {"slack:ops", "slack:ops:2", "log:finance", "log:cx"} <= set(channels)
    raise_(store, "ORDER_EDIT_NEEDS_REVIEW", "1005", "order #1005 edited after pick started", policies, T0)
    dispatch_alerts(store, policies, sender(), now=T0)
    assert len(http.to("/slack/secret-path")) == 1 and len(http.to("/slack/second")) == 1


def test_burst_of_alerts_goes_out_as_one_message(store, http):
    policies = policies_with({"merchandising": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/merch"}]}})
    for n in range(7):
        raise_(store, "BARCODE_INVALID", f"SKU-{n}", f"barcode of SKU-{n} has a wrong check digit", policies, T0)
    report = dispatch_alerts(store, policies, sender(), now=T0, burst_limit=5)
    assert report.messages_sent == 1 and report.alerts_delivered == 7
    [message] = http.to("/hook/merch")
    assert message["kind"] == "digest" and len(message["alerts"]) == 7


def test_alerts_job_reports_in_words_in_its_run_log(store, state, http, tmp_path):
    """Moved from the alerts sensor (issue 13/16): sending is now a scheduled job with a run log."""
    from clarus_pipelines.sensors.alerts import defs as alert_defs

    config = tmp_path / "policies.yaml"
    base = load_policies(SANDBOX_POLICIES).model_dump(mode="json")
    base["owners"] = {"ops": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/ops"}]}}
    config.write_text(yaml.safe_dump(base))
    policies = load_policies(config)
    raise_(store, "ORPHAN_ORDER", "1006", "order #1006 is in Shopify, not in Clarus", policies, exception_queue.utcnow())
    resources = {"state": StateStoreResource(path=str(state)), "policies": PoliciesResource(path=str(config))}
    defs = dg.Definitions.merge(alert_defs, dg.Definitions(resources=resources))
    assert [s.name for s in defs.schedules] == ["alerts"]
    instance = dg.DagsterInstance.ephemeral()

    result = defs.resolve_job_def("alerts_job").execute_in_process(instance=instance)
    assert result.success
    sent = result.output_for_node("send_alerts")
    assert sent["summary"].startswith("New alerts: 1 new; sent 1 alert(s) in 1 message(s)")
    assert sent["waiting"] == 0 and sent["failing_channels"] == []

    again = defs.resolve_job_def("alerts_job").execute_in_process(instance=instance).output_for_node("send_alerts")
    assert again["summary"] == "No new or SLA-breaching exceptions; nothing to send."
    assert len(http.to("/hook/ops")) == 1


def test_alerts_job_retries_while_a_channel_fails_then_leaves_it_to_connector_failing(store, state, http, tmp_path, monkeypatch):
    import clarus_pipelines.sensors.alerts as alert_job

    monkeypatch.setattr(alert_job, "RETRY_WAIT_S", 0)
    config = tmp_path / "policies.yaml"
    base = load_policies(SANDBOX_POLICIES).model_dump(mode="json")
    base["owners"] = {"ops": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/ops"}]}}
    config.write_text(yaml.safe_dump(base))
    http.failing["/hook/ops"] = 503
    raise_(store, "ORPHAN_ORDER", "1008", "order #1008 is in Shopify, not in Clarus", load_policies(config),
           exception_queue.utcnow())
    resources = {"state": StateStoreResource(path=str(state)), "policies": PoliciesResource(path=str(config))}
    defs = dg.Definitions.merge(alert_job.defs, dg.Definitions(resources=resources))
    result = defs.resolve_job_def("alerts_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success  # the alert waits as a pending delivery; CONNECTOR_FAILING tells the integrator
    retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retries) == alert_job.RETRIES
    assert "alerts:webhook:ops" in open_connector_failures(store)
    http.failing.clear()
    after = defs.resolve_job_def("alerts_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert after.output_for_node("send_alerts")["messages_sent"] == 1
    assert open_connector_failures(store) == {}


# ------------------------------------------------------------------------------ escalation


def test_past_its_sla_an_exception_is_escalated_and_renotified_until_acknowledged(store, http):
    policies = policies_with(
        {"ops": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/ops"}],
                 "escalation": {"channels": [{"kind": "slack", "target": f"{http.url}/slack/ops-lead"}],
                                "renotify_minutes": 30}},
         "finance": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/finance"}]}},
        exception_overrides={"ORDER_INCOMPLETE": {"sla_minutes": 60}, "REFUND_UNCLASSIFIED": {"sla_minutes": 60}},
    )
    raise_(store, "ORDER_INCOMPLETE", "1001", "order #1001 held: no postcode", policies, T0)
    raise_(store, "REFUND_UNCLASSIFIED", "R9", "refund R9 fits two kinds", policies, T0)  # finance: no escalation contact
    send = sender()
    dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=1))
    assert http.to("/slack/ops-lead") == []  # within its SLA: the owner only

    report = dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=61))
    assert report.created == {"sla_breach": 2, "escalation": 1}
    (first,) = http.to("/slack/ops-lead")
    assert first["text"].startswith("ESCALATED: [MEDIUM] ORDER_INCOMPLETE")
    assert "not acknowledged by ops" in first["text"] and "Escalation: Escalate to CX" in first["text"]
    # the owner's own channel got the SLA alert, not the escalation
    assert [a["reason"] for m in http.to("/hook/ops") for a in m["alerts"]] == ["new", "sla_breach"]

    assert not dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=80)).created  # same interval
    report = dispatch_alerts(store, policies, send, now=T0 + timedelta(minutes=92))
    assert report.created == {"escalation": 1}
    assert "reminder 1" in http.to("/slack/ops-lead")[-1]["text"]
    with store.read() as con:
        from clarus_pipelines.alerts import escalated

        assert [(e["code"], e["entity_id"], e["escalations"]) for e in escalated(con)] == [("ORDER_INCOMPLETE", "1001", 2)]

    with store.write() as con:
        exception_queue.acknowledge(con, "ORDER_INCOMPLETE", "1001", "Sam", now=T0 + timedelta(minutes=95))
    assert not dispatch_alerts(store, policies, send, now=T0 + timedelta(hours=5)).created
    assert len(http.to("/slack/ops-lead")) == 2


def test_escalation_policy_needs_a_contact():
    with pytest.raises(Exception, match="escalation"):
        policies_with({"ops": {"channels": [], "escalation": {"channels": []}}})


def test_a_claimed_delivery_is_not_sent_twice_until_its_lease_expires(store, http):
    policies = policies_with({"ops": {"channels": [{"kind": "webhook", "target": f"{http.url}/hook/ops"}]}})
    raise_(store, "ORPHAN_ORDER", "1007", "order #1007 not in Clarus", policies, T0)
    channels = owner_channels(policies)
    with store.write() as con:  # another dispatcher planned and claimed it, then died before sending
        plan_alerts(con, policies, channels, T0)
        assert len(claim_batches(con, channels, T0)) == 1
    assert dispatch_alerts(store, policies, sender(), now=T0 + timedelta(minutes=5)).messages_sent == 0
    report = dispatch_alerts(store, policies, sender(), now=T0 + timedelta(minutes=11))
    assert report.messages_sent == 1 and len(http.to("/hook/ops")) == 1


def test_a_429_is_retried_after_the_wait_asked_for_without_raising_anything(store, http):
    policies = policies_with({"ops": {"channels": [{"kind": "slack", "target": f"{http.url}/slack/ops"}]}})
    http.fail_next["/slack/ops"] = [429, 502]
    raise_(store, "ORPHAN_ORDER", "1008", "order #1008 not in Clarus", policies, T0)
    report = dispatch_alerts(store, policies, sender(), now=T0)
    assert report.messages_sent == 1 and not report.failing_channels
    assert len(http.to("/slack/ops")) == 3 and open_connector_failures(store) == {}
    with store.read() as con:
        assert con.execute("SELECT status, tries FROM alert_messages").fetchall() == [("sent", 3)]
