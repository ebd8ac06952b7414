"""Intake that never stalls: one body contract at the door, ingest that sets a bad landing aside alone.

Over real HTTP on loopback (the receiver served by uvicorn) and a real DuckDB state file.
"""

import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import httpx
import pytest

from clarus_pipelines.assets.ingest import landed_events
from clarus_pipelines.assets.orders import intake_landed_orders
from clarus_pipelines.exception_queue import open_exceptions
from clarus_pipelines.receiver import auth, contract
from clarus_pipelines.receiver.app import WebhookSecrets, create_app
from clarus_pipelines.receiver.events import ingest_landings
from clarus_pipelines.receiver.landing import Envelope, LandingZone
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore
from payloads import OURS

SECRETS = WebhookSecrets(shopify="contract-shopify", clarus_token="contract-clarus", netsuite="contract-netsuite")
POLICIES = load_policies(SANDBOX_POLICIES)
TENANT = POLICIES.tenant


def order_body(order_id: int, name: str = "#1001") -> bytes:
    return json.dumps({"id": order_id, "name": name, "email": "ada@example.com", "created_at": "2026-01-01T10:00:00Z",
                       "updated_at": "2026-01-01T10:00:00Z", "cancelled_at": None, "line_items": [
                           {"sku": "SKU-1", "quantity": 1, "price": "10.00"}]}).encode()


# ---------------------------------------------------------------------------- the contract, plain


@pytest.mark.parametrize("body,reason", [
    (b"\xef\xbb\xbf{}", "byte-order mark"),
    (b'{"a": "\\ud83d"}', "lone UTF-16 surrogate"),
    (b'{"\\udc00": 1}', "lone UTF-16 surrogate"),
    (b'{"a": "\xff"}', "not valid UTF-8"),
    (b"[" * 2000 + b"]" * 2000, "nested deeper"),
    (b'{"a":' * 65 + b"1" + b"}" * 65, "nested deeper"),
    (b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", "nested deeper"),
    (b'{"a": ["ok", {"b": "\\uDBFF"}]}', "lone UTF-16 surrogate"),
    (b'{"a": "\\\\", "b": "\\udfff"}', "lone UTF-16 surrogate"),
    (b"[1, 2]", "must be an object"),
    (b'"text"', "must be an object"),
    (b'{"a": NaN}', "NaN is not allowed"),
    (b'{"a": 1', "malformed JSON"),
    ('{"a": 1}'.encode("utf-16"), "not valid UTF-8"),
])
def test_bodies_outside_the_contract_are_refused_with_a_reason(body, reason):
    with pytest.raises(contract.BodyRefused, match=reason):
        contract.parse_body(body)


def test_bodies_inside_the_contract_parse():
    assert contract.parse_body(b'{"a": "\\ud83d\\ude00", "b": "\\u0000", "n": 123456789012345678901234567890}')["a"] == "\U0001f600"
    assert contract.parse_body(b'{"a":' * 63 + b"1" + b"}" * 63)
    assert contract.parse_body(b'{"a":' + b"[" * 63 + b"]" * 63 + b"}")
    assert contract.parse_body(b'{"a": "\\\\ud83d", "b": "[[[[{{{{"}')["a"] == "\\ud83d"  # an escaped backslash, no escape
    for topic in ("orders/create", "goods_out/completed", "unknown", "carts/create"):
        assert contract.check_topic(topic) == topic
    for topic in ("_x/y", "%2e%2e", "../..", "Orders/Create", "orders", "a/b/c", "", "orders/create\n"):
        with pytest.raises(contract.BodyRefused):
            contract.check_topic(topic)


# ---------------------------------------------------------------------------- poison pills


@pytest.fixture
def resources(tmp_path) -> dict:
    return {
        "landing": LandingZoneResource(path=str(tmp_path / "landing")),
        "state": StateStoreResource(path=str(tmp_path / "state.duckdb")),
        "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
    }


def test_poison_pills_are_set_aside_and_the_valid_orders_reach_the_flow(resources):
    """A BOM body and a lone-surrogate body (as an older receiver acknowledged them) between valid
    orders: the run succeeds, the valid orders reach `landed_events` and the order flow, the two
    bad ones are set aside alone with their reasons and raise LANDING_SET_ASIDE."""
    zone = LandingZone(resources["landing"].path)

    def land(body: bytes, key: str, topic: str = "orders/create") -> str:
        envelope = Envelope(source="shopify", topic=topic, body=body, dedupe_key=key, headers={"x-shopify-topic": topic})
        return zone.land(envelope).relpath

    paths = [
        land(order_body(9001, "#9001"), "k1"),
        land(b"\xef\xbb\xbf" + order_body(9002), "k2"),
        land(order_body(9003, "#9003"), "k3"),
        land(order_body(9004, "\\ud83d cut emoji").replace(b"\\\\ud83d", b"\\ud83d"), "k4"),
        land(order_body(9005, "#9005"), "k5", topic="_x"),  # a folder the scanner used to skip
    ]
    assert zone.list_landings() and {r.relpath for r in zone.list_landings()} == set(paths)

    result = dg.materialize([landed_events], resources=resources,
                            run_config={"ops": {"landed_events": {"config": {"landings": paths}}}})
    assert result.success
    meta = result.asset_materializations_for_node("landed_events")[0].metadata
    assert meta["ingested"].value == 3 and meta["set_aside"].value == 2

    store = resources["state"].store()
    with store.read() as con:
        stored = {r[0] for r in con.execute("SELECT entity_id FROM landed_events").fetchall()}
        aside = dict(con.execute("SELECT landing_id, reason FROM landings_set_aside").fetchall())
        processed = con.execute("SELECT count(*) FROM processed_landings").fetchone()[0]
        raised = [e for e in open_exceptions(con) if e["code"] == "LANDING_SET_ASIDE"]
    assert stored == {"9001", "9003", "9005"}
    assert sorted(aside.values()) == ["JSON string holds a lone UTF-16 surrogate", "body starts with a byte-order mark"]
    assert processed == 5 and len(raised) == 2

    intake_landed_orders(store, POLICIES)
    with store.read() as con:
        in_flow = {r[0] for r in con.execute("SELECT order_id FROM orders").fetchall()}
    assert in_flow == {"9001", "9003"}  # 9005 came under a topic no flow handles: stored and flagged, not an order

    again = dg.materialize([landed_events], resources=resources)  # catch-up: nothing left behind, nothing twice
    assert again.asset_materializations_for_node("landed_events")[0].metadata["landings"].value == 0


# ---------------------------------------------------------------------------- seeded fuzz over HTTP


def _fuzz_cases(rng: random.Random, n: int) -> list[tuple[str, str, bytes, str, bool]]:
    """(source, topic, body, kind, is_control) for `n` deliveries across the categories of the contract."""
    cases = []
    for i in range(n):
        kind = rng.choice(["control", "control", "bom", "surrogate", "surrogate_key", "invalid_utf8", "deep",
                           "very_deep", "not_object", "nan", "truncated", "bad_topic", "utf16", "odd_but_valid",
                           "random_bytes", "clarus_surrogate", "clarus_bad_event"])
        source = rng.choice(["shopify", "netsuite"])
        topic = "orders/create" if source == "shopify" else "salesorder/update"
        body = order_body(100000 + i, f"#{i}")
        if kind == "bom":
            body = b"\xef\xbb\xbf" + body
        elif kind == "surrogate":
            body = body.replace(f'"#{i}"'.encode(), b'"\\ud83d"')
        elif kind == "surrogate_key":
            body = body[:-1] + b', "\\udc00x": 1}'
        elif kind == "invalid_utf8":
            body = body.replace(f'"#{i}"'.encode(), b'"\xc3\x28"')
        elif kind == "deep":
            depth = rng.randint(65, 900)
            body = b'{"a":' * depth + b"1" + b"}" * depth
        elif kind == "very_deep":
            depth = rng.randint(1000, 20000)
            body = b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth + b"1" + b"}" * depth
        elif kind == "not_object":
            body = rng.choice([b"[]", b"null", b"1", b'"x"', b"true", b"[{}]"])
        elif kind == "nan":
            body = body[:-1] + rng.choice([b', "x": NaN}', b', "x": -Infinity}'])
        elif kind == "truncated":
            body = body[: rng.randint(0, len(body) - 1)]
        elif kind == "bad_topic":
            topic = rng.choice(["_x/y", "%2e%2e", "../../etc", "_hidden", "ORDERS/CREATE", "a/b/c", ".", "x" * 300])
        elif kind == "utf16":
            body = body.decode().encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
        elif kind == "odd_but_valid":
            body = body[:-1] + rng.choice([b', "nul": "\\u0000"}', b', "big": 123456789012345678901234567890}',
                                           b', "emoji": "\\ud83d\\ude00"}', b', "dup": 1, "dup": 2}'])
            topic = rng.choice([topic, "carts/create"])  # a well-formed unknown topic lands flagged
        elif kind == "random_bytes":
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        elif kind.startswith("clarus"):
            source, topic = "clarus", ""
            event = "goods_out/completed" if kind == "clarus_surrogate" else rng.choice(["_x.y", "..", "a b/c"])
            record = {"id": str(i), "reference": "\\ud83d" if kind == "clarus_surrogate" else f"#{i}"}
            body = json.dumps({"event": event, "data": record}).encode().replace(b"\\\\ud83d", b"\\ud83d")
        cases.append((source, topic, body, kind, kind in ("control", "odd_but_valid")))
    return cases


def _post(client: httpx.Client, n: int, case) -> tuple[int, dict, str, bool]:
    source, topic, body, kind, is_control = case
    if source == "shopify":
        headers = auth.shopify_headers(body, SECRETS.shopify, topic=topic or "x", webhook_id=f"fz-{n}")
        if not topic:
            del headers["X-Shopify-Topic"]
        url = "/webhooks/shopify"
    elif source == "netsuite":
        headers = auth.netsuite_headers(body, SECRETS.netsuite, topic=topic, event_id=f"fz-{n}")
        url = "/webhooks/netsuite"
    else:
        headers = auth.clarus_headers(TENANT)
        url = f"/webhooks/clarus/{SECRETS.clarus_token}"
    response = client.post(url, content=body, headers=headers)
    return response.status_code, response.json(), kind, is_control


def test_seeded_fuzz_never_5xx_and_every_acknowledged_landing_is_ingested(tmp_path):
    rng = random.Random(20261203)
    cases = _fuzz_cases(rng, 2400)
    app = create_app(tmp_path / "landing", secrets=SECRETS, tenant=TENANT, fsync=False)
    zone = app.state.zone
    with serve_in_thread(app) as served, httpx.Client(base_url=served.url, timeout=30) as client:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda item: _post(client, *item), enumerate(cases)))
        assert client.get("/healthz").status_code == 200  # still alive, and keep-alive still works
    statuses = [a[0] for a in answers]
    assert not [s for s in statuses if s >= 500], "no body ever gets a 5xx"
    assert set(statuses) <= {200, 400}
    for status, doc, kind, is_control in answers:
        if is_control:
            assert status == 200, (kind, doc)
        if status == 400:
            assert doc["status"] == "malformed" and doc["reason"] and doc.get("landing_id"), doc
    refused = sum(1 for s in statuses if s == 400)
    assert len(zone.list_landings(quarantined=True)) == refused
    accepted_ids = {doc["landing_id"] for status, doc, *_ in answers if status == 200}
    control_ids = {doc["landing_id"] for status, doc, _, is_control in answers if is_control}

    store = StateStore(tmp_path / "state.duckdb")
    refs = zone.list_landings()
    assert {r.landing_id for r in refs} == accepted_ids  # every acknowledged landing is visible
    report, loaded = ingest_landings(zone, store, [r.relpath for r in refs])
    assert report.set_aside == 0 and not loaded.unreadable and not loaded.missing, loaded.set_aside[:3]
    with store.read() as con:
        ingested = {r[0] for r in con.execute("SELECT landing_id FROM landed_events").fetchall()}
        processed = {r[0] for r in con.execute("SELECT landing_id FROM processed_landings").fetchall()}
    assert control_ids <= ingested
    assert processed == accepted_ids


# ---------------------------------------------------------------------------- topic and body agree


def test_a_shopify_cancellation_is_what_the_body_says_not_the_topic_alone(tmp_path):
    """Shopify signs the body, not the topic header: `orders/cancelled` without `cancelled_at`
    is not a cancellation (it is handled as an update), and one with it is."""
    import polars as pl

    from clarus_pipelines.domain.order_flow import order_states, plan_intake
    from clarus_pipelines.domain.orders import parse_orders

    order = OURS.order("order_python_api")
    claimed = {**order, "id": 7001, "cancelled_at": None}
    real = {**order, "id": 7002, "cancelled_at": "2026-01-01T11:00:00Z"}
    landed = pl.DataFrame({
        "landing_id": ["20260101T110000.000001Z", "20260101T110000.000002Z"],
        "topic": ["orders/cancelled", "orders/cancelled"],
        "received_at": [None, None],
        "payload": [json.dumps(claimed), json.dumps(real)],
    }, schema={"landing_id": pl.Utf8, "topic": pl.Utf8, "received_at": pl.Datetime, "payload": pl.Utf8})
    with StateStore(tmp_path / "state.duckdb").read() as con:
        states = order_states(con, ["7001", "7002"])
    plan = plan_intake(landed, parse_orders(landed["payload"]), states)
    assert plan.cancel_now == ["7002"] and plan.cancel_pending == []
    assert plan.validate_ids == ["7001"]


# ---------------------------------------------------------------------------- operator commands


def test_ingest_and_intake_status_commands(tmp_path):
    """`intake-status` sees a stalled landing (even under a folder the scanner used to skip) and
    the set-aside one; `ingest` takes everything in with the ingest run's code and exits 0."""
    import os
    import subprocess
    import sys
    from datetime import timedelta
    from pathlib import Path

    from clarus_pipelines.exception_queue import utcnow
    from clarus_pipelines.receiver.landing import landing_id_at

    home = tmp_path / "home"
    zone = LandingZone(home / "landing")  # where the receiver lands with CLARUS_PIPELINES_HOME=home
    zone.land(Envelope(source="shopify", topic="orders/create", body=order_body(1), dedupe_key="a")).relpath
    zone.land(Envelope(source="netsuite", topic="salesorder/update", body=b"\xef\xbb\xbf{}", dedupe_key="b"))
    old_id = landing_id_at(utcnow() - timedelta(minutes=30))  # an older receiver's landing in `_hidden`
    folder = zone.root / "shopify" / "_hidden" / f"{old_id[0:4]}-{old_id[4:6]}-{old_id[6:8]}"
    folder.mkdir(parents=True)
    (folder / f"{old_id}.json").write_bytes(
        Envelope(source="shopify", topic="_hidden", body=order_body(2), dedupe_key="c").to_json())

    cli = [str(Path(sys.executable).parent / "clarus-pipelines")]
    env = {**os.environ, "CLARUS_PIPELINES_HOME": str(home)}
    env.pop("CLARUS_PIPELINES_LANDING_DIR", None)
    env.pop("CLARUS_PIPELINES_STATE_DB", None)

    before = subprocess.run(cli + ["intake-status", "--json"], capture_output=True, text=True, env=env)
    assert before.returncode == 1, before.stderr
    status = json.loads(before.stdout)
    assert status["shopify"]["acknowledged"] == 2 and status["shopify"]["stalled"] is True
    assert status["shopify"]["oldest_unread"] == old_id and status["netsuite"]["stalled"] is False

    ingest = subprocess.run(cli + ["ingest", "--landing-dir", str(home / "landing"), "--state",
                                   str(home / "state.duckdb")], capture_output=True, text=True, env=env)
    assert ingest.returncode == 0, ingest.stderr
    doc = json.loads(ingest.stdout)
    assert doc["report"]["ingested"] == 2 and doc["report"]["set_aside"] == 1 and doc["stalled"] == []
    assert list(doc["set_aside"].values()) == ["body starts with a byte-order mark"]

    after = subprocess.run(cli + ["intake-status", "--json"], capture_output=True, text=True, env=env)
    assert after.returncode == 0, after.stderr
    status = json.loads(after.stdout)
    shopify = status["shopify"]
    assert (shopify["acknowledged"], shopify["ingested"], shopify["unread"]) == (2, 2, 0)
    assert shopify["stalled"] is False and shopify["oldest_unread"] is None
    assert status["netsuite"]["set_aside"] == 1
    assert status["netsuite"]["set_aside_reasons"] == {"body starts with a byte-order mark": 1}

    again = subprocess.run(cli + ["ingest"], capture_output=True, text=True, env=env)  # same settings as the receiver
    assert again.returncode == 0 and json.loads(again.stdout)["report"]["ingested"] == 0


def test_a_landing_left_behind_by_a_failed_run_is_requested_again(resources):
    """The landing sensor's cursor has moved past it, its run failed: `stalled_landings` asks for
    it again (by its ids) until it is stored or set aside."""
    from datetime import timedelta

    from clarus_pipelines.exception_queue import utcnow
    from clarus_pipelines.receiver.landing import landing_id_at
    from clarus_pipelines.sensors.webhooks import stalled_landings_sensor

    zone = LandingZone(resources["landing"].path)
    old_id = landing_id_at(utcnow() - timedelta(minutes=30))
    folder = zone.root / "shopify" / "orders.create" / f"{old_id[0:4]}-{old_id[4:6]}-{old_id[6:8]}"
    folder.mkdir(parents=True)
    (folder / f"{old_id}.json").write_bytes(
        Envelope(source="shopify", topic="orders/create", body=order_body(3), dedupe_key="left-behind").to_json())
    zone.land(Envelope(source="shopify", topic="orders/create", body=order_body(4), dedupe_key="fresh"))

    def tick():
        with dg.build_sensor_context(resources={"landing": resources["landing"], "state": resources["state"]}) as ctx:
            return stalled_landings_sensor(ctx)

    result = tick()
    [request] = result.run_requests
    [path] = request.run_config["ops"]["landed_events"]["config"]["landings"]
    assert path.endswith(f"{old_id}.json")  # only the stalled one, not the fresh one
    assert tick().run_requests[0].run_key == request.run_key  # the same ask within the window

    dg.materialize([landed_events], resources=resources,
                   run_config={"ops": {"landed_events": {"config": {"landings": [path]}}}})
    assert isinstance(tick(), dg.SkipReason)


def test_store_events_sets_aside_what_arrow_or_duckdb_refuses_and_stores_the_rest(tmp_path):
    """Defence in depth behind the contract: a row Arrow cannot encode or DuckDB's JSON type
    refuses is set aside alone, with its first cause, inside the same transaction."""
    from datetime import datetime

    from clarus_pipelines.receiver.events import LoadedLandings, store_events

    def row(n: int, payload: str, entity_id: str = "1") -> dict:
        return {"landing_id": f"20260101T000000.00000{n}Z", "source": "shopify", "topic": "orders/create",
                "known_topic": True, "entity_type": "order", "entity_id": entity_id, "parent_id": None,
                "entity_updated_at": None, "received_at": datetime(2026, 1, 1), "webhook_id": f"w{n}", "dedupe_key": f"k{n}",
                "payload": payload, "via": "webhook", "replay_of": None}

    loaded = LoadedLandings(rows=[row(1, '{"id": 1}'), row(2, '\ufeff{"id": 2}', "2"), row(3, '{"id": 3}', "\ud83d"),
                                  row(4, '{"id": 4}', "4")])
    store = StateStore(tmp_path / "state.duckdb")
    with store.write() as con:
        report = store_events(con, loaded, run_id="t")
    assert report.ingested == 2 and report.set_aside == 2
    with store.read() as con:
        assert {r[0] for r in con.execute("SELECT entity_id FROM landed_events").fetchall()} == {"1", "4"}
        reasons = dict(con.execute("SELECT landing_id, reason FROM landings_set_aside").fetchall())
    assert reasons["20260101T000000.000002Z"] == "payload refused by DuckDB's JSON type"
    assert reasons["20260101T000000.000003Z"].startswith("cannot stage: UnicodeEncodeError")


def test_a_batch_that_fails_anyway_is_stored_one_by_one_and_only_the_culprit_set_aside(tmp_path, monkeypatch):
    """Fault injection: DuckDB refuses one landing for a reason no check foresaw. The batch is
    retried landing by landing; the culprit is set aside with DuckDB's first cause."""

    from clarus_pipelines.receiver import events

    zone = LandingZone(tmp_path / "landing")
    paths = [zone.land(Envelope(source="shopify", topic="orders/create", body=order_body(n), dedupe_key=f"k{n}")).relpath
             for n in (1, 2, 3)]
    culprit = LandingZone(tmp_path / "landing").resolve(paths[1]).stem
    real_store_events = events.store_events

    def refusing(con, loaded, **kw):
        if any(r["landing_id"] == culprit for r in loaded.rows):
            con.execute("SELECT 'not json'::JSON")  # a real DuckDB error, aborting the transaction
        return real_store_events(con, loaded, **kw)

    monkeypatch.setattr(events, "store_events", refusing)
    store = StateStore(tmp_path / "state.duckdb")
    report, loaded = events.ingest_landings(zone, store, paths)
    assert report.ingested == 2 and report.set_aside == 1
    [item] = loaded.set_aside
    assert item.landing_id == culprit and item.reason.startswith("cannot store: ConversionException")
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM processed_landings").fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM landed_events").fetchone()[0] == 2


@pytest.mark.parametrize("body", [
    b"\xef\xbb\xbf{}", b'{"a": "\\ud83d"}', b'{"a": "\\ud83d\\ude00"}', b'{"a": "\xff"}', b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 65 + b"1" + b"}" * 65, b'{"a":' * 63 + b"1" + b"}" * 63, b'{"a":' + b"[" * 64 + b"]" * 64 + b"}",
    b"[1, 2]", b'"text"', b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e999}', b'{"a": 123456789012345678901234567890}',
    b'{"a": 1', b'{"a": "x\x01y"}', b'{"a": "\\u0000"}', b'{"a": 1} x', b' {"a": [1, {"b": null}]} ', b"{}",
    '{"a": 1}'.encode("utf-16"), b'{"a": "\\\\ud83d"}', b"", b"null",
])
def test_the_fast_body_check_gives_exactly_the_verdict_and_reason_of_the_full_parse(body):
    def verdict(check):
        try:
            check(body)
        except contract.BodyRefused as exc:
            return exc.reason
        return "accepted"

    assert verdict(contract.check_body) == verdict(contract.parse_body)


def test_seeded_mutations_get_the_same_verdict_and_reason_from_the_fast_check_and_the_full_parse():
    """The fast check (simdjson or orjson) and `parse_body` agree on bodies near the edges:
    valid JSON objects mutated by inserting, deleting and replacing brackets, escapes, bad
    UTF-8, control characters, constants and numbers beyond 64 bits."""
    rnd = random.Random(20261203)
    seeds = [json.dumps({"a": [1, 2.5, -3e10, "x\\y", None, True, {"b": "ü€😀"}], "c": {}}).encode(),
             b'{"a":"\\u00e9\\n","b":[{},[]]}',
             b'{"n": 18446744073709551615, "m": -9223372036854775808, "f": 1.7976931348623157e308}',
             b'{"a":' * 60 + b"1" + b"}" * 60, b'[{"a": 1}]', b'"{}"', b'  {"a": [] }  ', b'{"a": 1}{"b": 2}', b"1"]
    pieces = [b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b" ", b"\t", b"\x00", b"\x01", b"\x7f", b"\xc3", b"\xa9",
              b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"NaN", b"Infinity", b"1e999", b"-0", b"01", b"1.",
              b"\\u0000", b"\\ud800", b"\\udc00", b"\\u12", b"true", b"nul", b"99999999999999999999999"]

    def verdict(check, body: bytes) -> str:
        try:
            check(body)
        except contract.BodyRefused as exc:
            return exc.reason
        return "accepted"

    verdicts = Counter()
    for _ in range(20_000):
        body = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(0, 4)):
            at = rnd.randrange(len(body) + 1)
            roll = rnd.random()
            if roll < 0.4:
                body[at:at] = rnd.choice(pieces)
            elif roll < 0.7:
                del body[at:at + rnd.randint(1, 3)]
            else:
                body[at:at + 1] = rnd.choice(pieces)
        fast, full = verdict(contract.check_body, bytes(body)), verdict(contract.parse_body, bytes(body))
        assert fast == full, bytes(body)
        verdicts[fast == "accepted"] += 1
    assert verdicts[True] > 500 and verdicts[False] > 5_000  # both sides of the contract were exercised
