"""Replay: landed and quarantined webhooks re-submitted through the receiver path, idempotently."""

import argparse
import json
from datetime import datetime, timezone

import pytest

from clarus_pipelines.commands import replay as replay_command
from clarus_pipelines.receiver import auth, replay
from clarus_pipelines.receiver.app import Intake, WebhookSecrets
from clarus_pipelines.receiver.landing import Envelope, LandingZone
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from payloads import OURS

SECRETS = WebhookSecrets(shopify="replay-shopify", clarus_token="replay-clarus", netsuite="replay-netsuite")
TENANT = load_policies(SANDBOX_POLICIES).tenant


@pytest.fixture
def intake(tmp_path) -> Intake:
    return Intake(LandingZone(tmp_path / "landing"), SECRETS, TENANT)


@pytest.fixture
def order_body() -> bytes:
    return json.dumps(OURS.order("order_python_api")).encode()


def deliver_shopify(intake: Intake, body: bytes, webhook_id: str, topic: str = "orders/create"):
    return intake.accept("shopify", body, auth.shopify_headers(body, SECRETS.shopify, topic=topic, webhook_id=webhook_id))


def replays(zone: LandingZone) -> list[Envelope]:
    return [e for e in (zone.read(r) for r in zone.list_landings()) if e.via == "replay"]


def test_replay_by_id_lands_once_per_tag(intake, order_body):
    original = deliver_shopify(intake, order_body, "wh-1")
    refs, unknown = replay.select(intake.zone, ids=[original.landing_id])
    assert unknown == [] and [r.landing_id for r in refs] == [original.landing_id]

    first = replay.replay(intake, refs, quarantined=False)
    assert first["counts"] == {"landed": 1}
    [again] = replays(intake.zone)
    assert again.body == order_body and again.replay_of == original.landing_id and again.webhook_id == "wh-1"

    assert replay.replay(intake, refs, quarantined=False)["counts"] == {"duplicate": 1}
    assert len(replays(intake.zone)) == 1
    assert replay.replay(intake, refs, quarantined=False, tag="2")["counts"] == {"landed": 1}
    assert len(replays(intake.zone)) == 2


def test_replay_selects_by_source_topic_and_time(intake, order_body):
    deliver_shopify(intake, order_body, "a", topic="orders/create")
    middle = deliver_shopify(intake, order_body, "b", topic="orders/updated")
    deliver_shopify(intake, order_body, "c", topic="orders/create")
    refund_doc = OURS.json("refund_legacy_restock")
    refund = json.dumps(refund_doc["refund"]).encode()
    deliver_shopify(intake, refund, "d", topic="refunds/create")

    refs, _ = replay.select(intake.zone, source="shopify", topic="orders/create")
    assert [intake.zone.read(r).webhook_id for r in refs] == ["a", "c"]
    since = datetime.strptime(middle.landing_id, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    refs, _ = replay.select(intake.zone, since=since)
    assert [intake.zone.read(r).webhook_id for r in refs] == ["b", "c", "d"]
    refs, _ = replay.select(intake.zone, until=since)
    assert [intake.zone.read(r).webhook_id for r in refs] == ["a"]
    refs, _ = replay.select(intake.zone, source="clarus")
    assert refs == []
    assert replay.select(intake.zone, ids=["20000101T000000.000000Z"])[1] == ["20000101T000000.000000Z"]


def test_replay_verifies_the_signature_again(tmp_path, order_body):
    zone = LandingZone(tmp_path / "landing")
    deliver_shopify(Intake(zone, SECRETS, TENANT), order_body, "wh-rot")
    rotated = Intake(zone, WebhookSecrets(shopify="rotated", clarus_token="x", netsuite="y"), TENANT)
    refs, _ = replay.select(zone, source="shopify")
    summary = replay.replay(rotated, refs, quarantined=False)
    assert summary["counts"] == {"rejected": 1}
    assert summary["results"][0]["reason"] == "bad_signature"
    assert replays(zone) == []
    assert zone.read_rejections({})[0] == []  # a refused replay is not a refusal at the door


def test_replay_of_clarus_and_old_netsuite_events(intake):
    clarus_body = json.dumps({"resource_name": "goods_out", "event": "completed", "data": {"id": "77"}}).encode()
    assert intake.accept("clarus", clarus_body, auth.clarus_headers(TENANT), token=SECRETS.clarus_token).result == "landed"
    ns_body = b'{"id": "18", "tranId": "SO1"}'
    ns_headers = auth.netsuite_headers(ns_body, SECRETS.netsuite, topic="salesorder/update", event_id="ns-1")
    assert intake.accept("netsuite", ns_body, ns_headers).result == "landed"
    refs, _ = replay.select(intake.zone)
    # a day later the NetSuite timestamp is stale for live posts, but replay checks only the signature
    stale_intake = Intake(intake.zone, SECRETS, TENANT, netsuite_tolerance_s=-1)
    summary = replay.replay(stale_intake, refs, quarantined=False, clarus_token=SECRETS.clarus_token)
    assert summary["counts"] == {"landed": 2}
    assert {e.source for e in replays(intake.zone)} == {"clarus", "netsuite"}
    # without our token, a Clarus replay is refused like any other post
    assert replay.replay(intake, refs[:1], quarantined=False, tag="3")["counts"] == {"rejected": 1}


def test_quarantined_body_replays_once_and_malformed_stays_put(intake, order_body):
    broken = deliver_shopify(intake, b'{"id": 1,', "wh-broken")
    assert broken.status_code == 400
    # a body quarantined by an older, stricter receiver that is fine today
    headers = auth.shopify_headers(order_body, SECRETS.shopify, topic="orders/create", webhook_id="wh-q")
    intake.zone.quarantine(Envelope(source="shopify", topic="orders/create", body=order_body, dedupe_key="",
                                    headers={k.lower(): v for k, v in headers.items()}, quarantine_reason="old rule"))
    refs, _ = replay.select(intake.zone, source="shopify", quarantined=True)
    assert len(refs) == 2

    summary = replay.replay(intake, refs, quarantined=True)
    assert summary["counts"] == {"landed": 1, "malformed": 1}
    assert len(intake.zone.list_landings(quarantined=True)) == 2  # nothing re-quarantined
    assert replay.replay(intake, refs, quarantined=True)["counts"] == {"duplicate": 1, "malformed": 1}
    # the original delivery of that webhook id arriving now is a duplicate too
    assert deliver_shopify(intake, order_body, "wh-q").result == "duplicate"


def test_cli_prints_json_and_is_idempotent(tmp_path, order_body, monkeypatch, capsys):
    monkeypatch.setenv("SHOPIFY_WEBHOOK_SECRET", SECRETS.shopify)
    zone = LandingZone(tmp_path / "landing")
    landed = deliver_shopify(Intake(zone, SECRETS, TENANT), order_body, "wh-cli")
    parser = argparse.ArgumentParser()
    replay_command.add_arguments(parser)

    errors: list[str] = []

    def run(*argv: str) -> tuple[int, dict]:
        code = replay_command.run(parser.parse_args(["--landing-dir", str(zone.root), *argv]))
        captured = capsys.readouterr()
        errors.append(captured.err)
        return code, json.loads(captured.out)

    code, dry = run("--source", "shopify", "--dry-run")
    assert code == 0 and dry["counts"] == {"would_replay": 1} and replays(zone) == [] and dry["ok"] is True
    code, first = run("--id", landed.landing_id)
    assert code == 0 and first["counts"] == {"landed": 1}
    code, second = run("--id", landed.landing_id)
    assert code == 0 and second["counts"] == {"duplicate": 1}
    code, missing = run("--id", "20000101T000000.000000Z")
    assert code == 1 and missing["not_found"] == ["20000101T000000.000000Z"] and missing["ok"] is False
    code, refused = run()
    assert code == 2 and "say what to replay" in refused["error"] and refused["ok"] is False
    assert "replay: say what to replay" in errors[-1]  # the reason on stderr too
