"""Sensors turn landings into ingest runs; ingest fills `landed_events` once; refusals raise exceptions."""

import functools
import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from clarus_pipelines.assets.ingest import defs as ingest_defs
from clarus_pipelines.assets.ingest import landed_events, landings_not_stalled, webhook_rejections
from clarus_pipelines.exception_queue import open_exceptions, utcnow
from clarus_pipelines.receiver import auth
from clarus_pipelines.receiver.app import Intake, WebhookSecrets
from clarus_pipelines.receiver.events import REJECTION_WINDOW, ingest_rejections
from clarus_pipelines.state.event_log import advance_consumer, new_events
from clarus_pipelines.receiver.landing import Envelope, LandingZone, landing_id_at
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.sensors.maintenance import defs as maintenance_defs
from clarus_pipelines.sensors.webhooks import build_landing_sensor, webhook_rejections_sensor
from clarus_pipelines.sensors.webhooks import defs as sensor_defs
from payloads import OURS, Payloads

SECRETS = WebhookSecrets(shopify="ingest-shopify", clarus_token="ingest-clarus", netsuite="ingest-netsuite")
TENANT = load_policies(SANDBOX_POLICIES).tenant


@pytest.fixture
def zone(tmp_path) -> LandingZone:
    return LandingZone(tmp_path / "landing")


@pytest.fixture
def resources(tmp_path, zone) -> dict:
    return {
        "landing": LandingZoneResource(path=str(zone.root)),
        "state": StateStoreResource(path=str(tmp_path / "state.duckdb")),
        "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
    }


@pytest.fixture
def intake(zone) -> Intake:
    return Intake(zone, SECRETS, TENANT)


@pytest.fixture
def fixtures() -> dict[str, bytes]:
    return bodies(OURS)


def bodies(payloads: Payloads) -> dict[str, bytes]:
    """A Shopify order and refund in the shapes of the python_api examples, as webhook bodies."""
    return {
        "order": json.dumps(payloads.order("order_python_api")).encode(),
        "refund": json.dumps(payloads.json("refund_legacy_restock")["refund"]).encode(),
    }


def shopify(intake: Intake, body: bytes, webhook_id: str, topic: str = "orders/create"):
    outcome = intake.accept("shopify", body, auth.shopify_headers(body, SECRETS.shopify, topic=topic, webhook_id=webhook_id))
    assert outcome.accepted, outcome
    return outcome


def clarus(intake: Intake, goods_out_id: str, event: str = "completed"):
    body = json.dumps({"resource_name": "goods_out", "event": event,
                       "data": {"id": goods_out_id, "reference": "#1001", "updated_at": "2025-05-01T10:00:00Z"}}).encode()
    outcome = intake.accept("clarus", body, auth.clarus_headers(TENANT), token=SECRETS.clarus_token)
    assert outcome.accepted, outcome
    return outcome


@functools.cache
def shared_instance() -> dg.DagsterInstance:
    """One ephemeral instance for the module's runs and ticks (creating one per run is slow)."""
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return shared_instance()


@pytest.fixture
def tick(instance, resources):
    def evaluate(sensor, _resources=None, cursor=None):
        with dg.build_sensor_context(cursor=cursor, instance=instance,
                                     resources={"landing": resources["landing"], "state": resources["state"]}) as context:
            return sensor(context)

    return evaluate


def ingest(resources, landings: list[str]) -> dg.ExecuteInProcessResult:
    return dg.materialize([landed_events], resources=resources, instance=shared_instance(),
                          run_config={"ops": {"landed_events": {"config": {"landings": landings}}}})


def rows(resources, query: str, params=None):
    with resources["state"].store().read() as con:
        return con.execute(query, params or []).fetchall()


# ---------------------------------------------------------------------------- sensors


def test_sensor_batches_landings_and_advances_its_cursor(tick, intake, fixtures, resources):
    ids = [shopify(intake, fixtures["order"], f"w{i}").landing_id for i in range(5)]
    clarus(intake, "9001")
    sensor = build_landing_sensor("shopify", batch_size=2, wait_for_ingest=False)  # the gate: see the test below

    result = tick(sensor, resources)
    assert isinstance(result, dg.SensorResult)
    batches = [r.run_config["ops"]["landed_events"]["config"]["landings"] for r in result.run_requests]
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [p.rsplit("/", 1)[1][:-5] for b in batches for p in b] == ids  # Shopify only, oldest first
    assert all(r.job_name in (None, "ingest_landings") and r.tags["intake/source"] == "shopify" for r in result.run_requests)
    assert json.loads(result.cursor)["after"] == ids[-1]

    # a daemon restarted before saving the cursor asks for the very same runs
    again = tick(sensor, resources)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in result.run_requests]
    assert len({r.run_key for r in result.run_requests}) == 3

    skip = tick(sensor, resources, cursor=result.cursor)
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message == f"no new Shopify landings since {ids[-1]}"

    newer = shopify(intake, fixtures["order"], "w-late").landing_id
    later = tick(sensor, resources, cursor=result.cursor)
    assert [r.run_config["ops"]["landed_events"]["config"]["landings"][0].endswith(f"{newer}.json")
            for r in later.run_requests] == [True]
    assert json.loads(later.cursor)["after"] == newer


def test_sensor_limits_runs_per_tick_and_continues_next_tick(tick, intake, fixtures, resources):
    ids = [shopify(intake, fixtures["order"], f"w{i}").landing_id for i in range(7)]
    sensor = build_landing_sensor("shopify", batch_size=2, max_runs_per_tick=2, wait_for_ingest=False)
    first = tick(sensor, resources)
    assert len(first.run_requests) == 2 and json.loads(first.cursor)["after"] == ids[3]
    second = tick(sensor, resources, cursor=first.cursor)
    assert len(second.run_requests) == 2 and json.loads(second.cursor)["after"] == ids[6]


def test_a_landing_committed_late_is_not_skipped(tick, intake, fixtures, resources, zone):
    """A webhook received before the cursor moved but committed after (its writer was
    killed mid-commit and the landing finished later) still reaches ingest."""
    received_early = Envelope(source="shopify", topic="orders/create", body=fixtures["order"],
                              dedupe_key="shopify:webhook:slow", webhook_id="slow",
                              received_at=(datetime.utcnow() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    (zone.tmp_dir / "slow.tmp").write_bytes(received_early.to_json())
    fast = shopify(intake, fixtures["order"], "fast").landing_id
    sensor = build_landing_sensor("shopify", wait_for_ingest=False)
    first = tick(sensor, resources)
    assert json.loads(first.cursor)["after"] == fast

    assert zone.finish_interrupted(min_age_s=0) == 1  # e.g. at the receiver's next start
    second = tick(sensor, resources, cursor=first.cursor)
    [request] = second.run_requests
    [relpath] = request.run_config["ops"]["landed_events"]["config"]["landings"]
    assert zone.read(relpath).webhook_id == "slow"


def test_one_sensor_takes_every_source_in_one_run_per_tick(tick, intake, fixtures, resources):
    """Issue 13: the code location ingests all sources' landings of a tick in one run (it had
    one sensor per source, so one order's webhooks made several small runs). A one-source
    sensor still sees only its source."""
    first = shopify(intake, fixtures["order"], "s1").landing_id
    clarus(intake, "1")
    last = clarus(intake, "2").landing_id
    by_name = {s.name: s for s in sensor_defs.sensors}
    assert set(by_name) == {"webhook_landings", "webhook_rejection_log", "stalled_landings"}
    result = tick(by_name["webhook_landings"], resources)
    [request] = result.run_requests
    landings = request.run_config["ops"]["landed_events"]["config"]["landings"]
    assert [p.split("/", 1)[0] for p in landings] == ["shopify", "clarus", "clarus"]
    assert request.tags["intake/first"] == first and request.tags["intake/last"] == last
    assert json.loads(result.cursor)["after"] == last
    assert len(tick(build_landing_sensor("clarus"), resources).run_requests) == 1
    skip = tick(build_landing_sensor("netsuite"), resources)
    assert skip.skip_message == "no new NetSuite landings since the landing zone was created"


def test_landings_wait_for_the_running_ingest_then_go_in_one_run(tick, intake, fixtures, resources):
    """Issue 13: while the last requested ingest is queued or running, new landings wait and then
    all go in one run (no queue of small runs behind a busy run queue)."""
    sensor = build_landing_sensor()
    first = tick(sensor, resources)
    assert isinstance(first, dg.SkipReason)
    one = shopify(intake, fixtures["order"], "g1").landing_id
    requested = tick(sensor, resources)
    [request] = requested.run_requests
    more = [clarus(intake, str(n)).landing_id for n in range(3)]
    waiting = tick(sensor, resources, cursor=requested.cursor)
    assert isinstance(waiting, dg.SkipReason) and "3 new webhook landing(s) wait for the ingest" in waiting.skip_message

    assert ingest(resources, request.run_config["ops"]["landed_events"]["config"]["landings"]).success
    assert request.tags["intake/last"] == one
    [together] = tick(sensor, resources, cursor=requested.cursor).run_requests
    assert [p.rsplit("/", 1)[1][:-5] for p in together.run_config["ops"]["landed_events"]["config"]["landings"]] == more

    # a request never ingested (a lost run) is given up on after a while: asked again
    stale = {**json.loads(requested.cursor), "requested_at": "2000-01-01T00:00:00+00:00", "waiting_for": "20000101T000000.000000Z"}
    assert len(tick(sensor, resources, cursor=json.dumps(stale)).run_requests) == 1


# ---------------------------------------------------------------------------- ingest


def test_ingest_fills_landed_events_and_is_idempotent(intake, payloads, resources, zone):
    fixtures = bodies(payloads)
    order = shopify(intake, fixtures["order"], "o1")
    refund = shopify(intake, fixtures["refund"], "r1", topic="refunds/create")
    odd = shopify(intake, fixtures["order"], "x1", topic="carts/create")
    goods_out = clarus(intake, "2001")
    paths = [r.relpath for r in zone.list_landings()]

    result = ingest(resources, paths)
    assert result.success
    meta = result.asset_materializations_for_node("landed_events")[0].metadata
    assert meta["ingested"].value == 4 and meta["unknown_topics"].value == 1
    assert meta["dagster/row_count"].value == 4  # the table's rows, as Dagster's UI shows them

    events = {r[0]: r[1:] for r in rows(resources, "SELECT landing_id, source, topic, entity_type, entity_id, parent_id,"
                                        " known_topic, via, payload->>'$.name' FROM landed_events")}
    order_id, name = payloads["order_id"], payloads["order_name"]
    assert events[order.landing_id] == ("shopify", "orders/create", "order", order_id, None, True, "webhook", name)
    assert events[refund.landing_id][:5] == ("shopify", "refunds/create", "refund", payloads["refund_id"], order_id)
    assert events[odd.landing_id][5] is False
    assert events[goods_out.landing_id][:5] == ("clarus", "goods_out/completed", "goods_out", "2001", "#1001")
    assert rows(resources, "SELECT count(*) FROM processed_landings")[0][0] == 4

    again = ingest(resources, paths)
    meta = again.asset_materializations_for_node("landed_events")[0].metadata
    assert meta["ingested"].value == 0 and meta["already_processed"].value == 4
    assert rows(resources, "SELECT count(*) FROM landed_events")[0][0] == 4


def test_second_landing_of_the_same_event_is_not_a_second_event(intake, fixtures, resources, zone):
    """E.g. a power cut lost the dedupe marker but not the landing: the event is ingested once."""
    shopify(intake, fixtures["order"], "o1")
    for marker in (zone.root / "_dedupe").rglob("*"):
        if marker.is_symlink():
            marker.unlink()
    shopify(intake, fixtures["order"], "o1")
    paths = [r.relpath for r in zone.list_landings()]
    assert len(paths) == 2
    meta = ingest(resources, paths).asset_materializations_for_node("landed_events")[0].metadata
    assert meta["ingested"].value == 1 and meta["duplicate_events"].value == 1
    assert rows(resources, "SELECT count(*) FROM processed_landings")[0][0] == 2


def test_ingest_without_landings_catches_up_on_unprocessed(intake, fixtures, resources, zone):
    first = shopify(intake, fixtures["order"], "o1")
    ingest(resources, [zone.find(first.landing_id).relpath])
    shopify(intake, fixtures["order"], "o2")
    clarus(intake, "5")
    meta = ingest(resources, []).asset_materializations_for_node("landed_events")[0].metadata
    assert meta["landings"].value == 2 and meta["ingested"].value == 2


def test_pruned_landing_is_reported_missing_not_fatal(intake, fixtures, resources, zone):
    gone = shopify(intake, fixtures["order"], "o1")
    path = zone.find(gone.landing_id).relpath
    (zone.root / path).unlink()
    meta = ingest(resources, [path]).asset_materializations_for_node("landed_events")[0].metadata
    assert meta["missing"].value == 1 and meta["ingested"].value == 0


def test_flows_read_new_events_by_topic_with_a_consumer_offset(intake, fixtures, resources, zone):
    shopify(intake, fixtures["order"], "o1")
    shopify(intake, fixtures["refund"], "r1", topic="refunds/create")
    ingest(resources, [r.relpath for r in zone.list_landings()])
    with resources["state"].store().write() as con:
        got = new_events(con, "refunds", topics=["refunds/create"])
        assert [e["entity_id"] for e in got] == [OURS["refund_id"]]
        advance_consumer(con, "refunds", got[-1]["seq"])
        assert new_events(con, "refunds", topics=["refunds/create"]) == []
        assert [e["topic"] for e in new_events(con, "orders", source="shopify")] == ["orders/create", "refunds/create"]


def test_stalled_landing_fails_the_check_until_ingested(intake, fixtures, resources, zone):
    old_id = landing_id_at(utcnow() - timedelta(minutes=30))
    folder = zone.root / "shopify" / "orders.create" / f"{old_id[0:4]}-{old_id[4:6]}-{old_id[6:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    stale = Envelope(source="shopify", topic="orders/create", body=fixtures["order"], dedupe_key="old")
    (folder / f"{old_id}.json").write_bytes(stale.to_json())
    shopify(intake, fixtures["order"], "fresh")  # too new to count as stalled

    check = dg.materialize([landed_events, landings_not_stalled], resources=resources, instance=shared_instance(),
                           selection=dg.AssetSelection.checks(landings_not_stalled))
    [evaluation] = check.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["stalled"].value == 1

    ingest(resources, [])
    check = dg.materialize([landed_events, landings_not_stalled], resources=resources, instance=shared_instance(),
                           selection=dg.AssetSelection.checks(landings_not_stalled))
    assert check.get_asset_check_evaluations()[0].passed


# ---------------------------------------------------------------------------- rejections


def test_repeated_rejections_raise_webhook_rejected_and_clear(intake, fixtures, resources, zone):
    body = fixtures["order"]
    for i in range(3):
        bad = auth.shopify_headers(body, "leaked-or-rotated", topic="orders/create", webhook_id=f"bad{i}")
        assert intake.accept("shopify", body, bad).status_code == 401
    intake.accept("clarus", b"{}", auth.clarus_headers(TENANT), token="guess")

    result = dg.materialize([webhook_rejections], resources=resources, instance=shared_instance())
    meta = result.asset_materializations_for_node("webhook_rejections")[0].metadata
    assert meta["new_rejections"].value == 4
    with resources["state"].store().read() as con:
        open_ = open_exceptions(con)
    assert [(e["code"], e["entity_id"], e["owner"]) for e in open_] == [("WEBHOOK_REJECTED", "shopify", "integration")]
    assert json.loads(open_[0]["details"])["reasons"] == {"bad_signature": 3}

    # counted once: a second run adds nothing
    meta = dg.materialize([webhook_rejections], resources=resources, instance=shared_instance()).asset_materializations_for_node(
        "webhook_rejections")[0].metadata
    assert meta["new_rejections"].value == 0
    assert rows(resources, "SELECT sum(count) FROM webhook_rejections")[0][0] == 4

    # once the refusals stop for a whole window, the exception clears itself
    with resources["state"].store().write() as con:
        report = ingest_rejections(con, zone, now=utcnow() + REJECTION_WINDOW + timedelta(minutes=2))
        assert report.outcome == {"shopify": "auto_resolved"}
        assert open_exceptions(con) == []


def test_rejection_sensor_runs_on_growth_and_once_after_quiet(tick, intake, fixtures, resources, zone):
    assert isinstance(tick(webhook_rejections_sensor, resources), dg.SkipReason)
    zone.record_rejection("shopify", "bad_signature")
    first = tick(webhook_rejections_sensor, resources)
    assert len(first.run_requests) == 1
    assert isinstance(tick(webhook_rejections_sensor, resources, cursor=first.cursor), dg.SkipReason)
    quiet = json.loads(first.cursor)
    quiet["changed_at"] = (datetime.fromisoformat(quiet["changed_at"]) - REJECTION_WINDOW * 2).isoformat()
    settle = tick(webhook_rejections_sensor, resources, cursor=json.dumps(quiet))
    assert len(settle.run_requests) == 1 and json.loads(settle.cursor)["settled"] is True
    assert isinstance(tick(webhook_rejections_sensor, resources, cursor=settle.cursor), dg.SkipReason)


# ---------------------------------------------------------------------------- definitions


def test_intake_definitions_load_together(resources):
    merged = dg.Definitions.merge(ingest_defs, sensor_defs, maintenance_defs, dg.Definitions(resources=resources))
    dg.Definitions.validate_loadable(merged)
    jobs = {j.name for j in merged.resolve_all_job_defs()}
    assert {"ingest_landings", "count_webhook_rejections", "intake_checks", "landing_retention_job"} <= jobs
    assert {s.name for s in merged.schedules} == {"landing_retention", "intake_checks"}


def test_retention_job_prunes_files_and_rows(intake, fixtures, resources, zone):
    shopify(intake, fixtures["order"], "keep")
    ingest(resources, [r.relpath for r in zone.list_landings()])
    old_day = (utcnow() - timedelta(days=120)).strftime("%Y-%m-%d")
    (zone.root / "shopify" / "orders.create" / old_day).mkdir(parents=True)
    with resources["state"].store().write() as con:
        con.execute("UPDATE landed_events SET received_at = received_at - INTERVAL 200 DAY WHERE webhook_id = 'keep'")
    merged = dg.Definitions.merge(maintenance_defs, dg.Definitions(resources=resources))
    result = merged.resolve_job_def("landing_retention_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    summary = result.output_for_node("prune_landings")
    assert summary["retention_days"] == 90 and summary["landing_days_removed"] == 1
    assert summary["state_rows_removed"]["landed_events"] == 1
    assert len(zone.list_landings()) == 1  # the fresh file stays


def test_retention_job_keeps_recent_stock_history_and_the_newest_hour(resources):
    now = utcnow().replace(minute=0, second=0, microsecond=0)
    hours = {"old": now - timedelta(days=40), "recent": now - timedelta(days=2), "newest": now}
    with resources["state"].store().write() as con:
        for hour in hours.values():
            con.execute(
                "INSERT INTO stock_snapshots (snapshot_hour, taken_at, clarus_product_id, sku, warehouse_id, account_id,"
                " available, allocated, on_hold) VALUES (?, ?, '1', 'SKU-A', '1', '1', 5, 0, 0)", [hour, hour])
    merged = dg.Definitions.merge(maintenance_defs, dg.Definitions(resources=resources))
    result = merged.resolve_job_def("landing_retention_job").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert result.output_for_node("prune_stock_snapshots")["snapshot_rows_removed"] == 1
    with resources["state"].store().read() as con:
        kept = [r[0] for r in con.execute("SELECT snapshot_hour FROM stock_snapshots ORDER BY 1").fetchall()]
    assert kept == [hours["recent"], hours["newest"]]


def test_the_newest_stock_snapshot_survives_any_age(resources):
    from clarus_pipelines.domain.stock import prune_snapshots

    stale = utcnow() - timedelta(days=100)  # the stock sync stopped long ago: keep what Clarus last said
    with resources["state"].store().write() as con:
        con.execute("INSERT INTO stock_snapshots (snapshot_hour, taken_at, clarus_product_id, sku, warehouse_id, account_id,"
                    " available, allocated, on_hold) VALUES (?, ?, '1', 'SKU-A', '1', '1', 5, 0, 0)", [stale, stale])
        assert prune_snapshots(con, utcnow()) == 0


# ---------------------------------------------------------------------------- reconciliation


def reconcile(asset, resources, **extra) -> dg.ExecuteInProcessResult:
    # grace -5: the sandboxes' clocks may run ahead of ours, so count every change as settled
    return dg.materialize([asset], resources={**resources, **extra}, instance=shared_instance(),
                          run_config={"ops": {asset.key.path[-1]: {"config": {"grace_minutes": -5}}}})


def test_shopify_missed_webhooks_lands_and_counts_what_webhooks_missed(intake, resources, zone):
    from clarus_pipelines.assets.reconciliation import shopify_missed_webhooks
    from clarus_pipelines.connectors.shopify import ShopifyResource
    from clarus_pipelines.sandbox.serving import serve_in_thread
    from clarus_pipelines.sandbox.shopify import ShopifySandbox

    # Shopify times have whole seconds: each change gets its own second on a hand-driven clock
    clock = {"now": datetime.now(timezone.utc) - timedelta(minutes=30)}

    def next_moment() -> datetime:
        clock["now"] += timedelta(seconds=2)
        return clock["now"]

    sandbox = ShopifySandbox(seed=3, access_token="recon-token", webhook_secret=SECRETS.shopify,  # no webhook URL: all lost
                             clock=next_moment)
    address = {"first_name": "Ann", "last_name": "Lee", "address1": "1 High St", "city": "York", "zip": "YO1 7HH",
               "country_code": "GB"}
    sku = sandbox.catalog.variants[0].shopify_sku
    with serve_in_thread(sandbox.app) as served:
        shop = ShopifyResource(base_url=served.url, access_token="recon-token")
        first = sandbox.create_order(line_items=[{"sku": sku, "quantity": 1}], shipping_address=address)
        # the webhook for the first order did arrive, in the shape the API returns it
        shopify(intake, json.dumps(shop.get_order(first["id"])).encode(), "came-by-webhook")
        second = sandbox.create_order(line_items=[{"sku": sku, "quantity": 2}], shipping_address=address)
        refund = sandbox.refund_order(first["id"], amount="5.00", note="goodwill")  # touches the first order too

        result = reconcile(shopify_missed_webhooks, resources, shopify=shop)
        meta = result.asset_materializations_for_node("shopify_missed_webhooks")[0].metadata
        assert meta["missed_by_webhooks"].value == {"order": 2, "refund": 1}
        [check] = result.get_asset_check_evaluations()
        assert not check.passed and check.metadata["missed"].value == 3

        landed = {(e.topic, json.loads(e.body)["id"]) for e in (zone.read(r) for r in zone.list_landings())
                  if e.via == "reconciliation"}
        assert landed == {("orders/create", second["id"]), ("orders/updated", first["id"]), ("refunds/create", refund["id"])}

        # the next read finds nothing new: the landings are waiting for ingest
        again = reconcile(shopify_missed_webhooks, resources, shopify=shop)
        assert again.asset_materializations_for_node("shopify_missed_webhooks")[0].metadata["missed_by_webhooks"].value == {
            "order": 0, "refund": 0}
        assert again.get_asset_check_evaluations()[0].passed
        shop.close()

    ingest(resources, [])
    via = rows(resources, "SELECT via, count(*) FROM landed_events GROUP BY ALL ORDER BY 1")
    assert via == [("reconciliation", 3), ("webhook", 1)]
    assert rows(resources, "SELECT source, entity_type, count(*) FROM reconciliation_findings GROUP BY ALL ORDER BY 2") == [
        ("shopify", "order", 2), ("shopify", "refund", 1)]
    assert rows(resources, "SELECT sum(missed), count(*) FROM reconciliation_runs")[0] == (3, 4)


def test_clarus_missed_webhooks_lands_dispatches_without_a_webhook(intake, resources, zone):
    from sandbox_helpers import clarus_credentials, served_clarus

    from clarus_pipelines.assets.reconciliation import clarus_missed_webhooks
    from clarus_pipelines.connectors.clarus import ClarusResource
    from clarus_pipelines.connectors.clarus_model import build_goods_out_body

    client_id, client_secret = clarus_credentials()
    with served_clarus(seed=5, dispatch_after_s=30, partial_dispatch=False, out_of_stock_rate=0.0) as (sandbox, url):
        client = ClarusResource(base_url=url, subdomain="sandbox", client_id=client_id, client_secret=client_secret,
                                min_interval_s=0.0)
        product_id = client.create_product({"code": "REC-1", "description": "Recon", "stock_unit_type_id": 1})
        sandbox.set_stock("REC-1", available=50)
        ids = []
        for reference in ("#2001", "#2002", "#2003"):
            body = build_goods_out_body(
                reference=reference, account_id=1, warehouse_id=1, expected_date_of_dispatch="2026-03-01T10:00:00Z",
                lines=[{"product_id": product_id, "quantity": 1}],
                address={"name": "A", "address_1": "1 St", "postcode": "AB1 2CD", "country_code": "GB"},
            )
            ids.append(client.ensure_goods_out(body)[0])
        sandbox.advance(60)
        dispatched = client.get_goods_out(ids[0])
        assert dispatched["goods_out_status"]["code"] == "COMPLETED"
        # the dispatch webhook of the first goods out arrived
        hook = json.dumps({"resource_name": "goods_out", "event": "completed", "data": dispatched}).encode()
        assert intake.accept("clarus", hook, auth.clarus_headers(TENANT), token=SECRETS.clarus_token).result == "landed"

        result = reconcile(clarus_missed_webhooks, resources, clarus=client)
        meta = result.asset_materializations_for_node("clarus_missed_webhooks")[0].metadata
        assert meta["checked"].value == {"goods_out": 3} and meta["missed_by_webhooks"].value == {"goods_out": 2}
        found = sorted(json.loads(zone.read(r).body)["data"]["id"] for r in zone.list_landings("clarus")
                       if zone.read(r).via == "reconciliation")
        assert found == sorted(ids[1:])
        again = reconcile(clarus_missed_webhooks, resources, clarus=client)
        assert again.asset_materializations_for_node("clarus_missed_webhooks")[0].metadata[
            "missed_by_webhooks"].value == {"goods_out": 0}
        client.close()
    assert len(zone.list_landings("clarus")) == 3


def test_a_backfill_sized_look_back_reads_shopify_with_one_bulk_operation(intake, resources, zone):
    """Issue 15: a reconciliation run over days (a backfill after an outage) reads the orders through
    a bulk operation, not page by page, and lands what webhooks missed exactly as paging would."""
    from clarus_pipelines.assets.reconciliation import shopify_missed_webhooks
    from clarus_pipelines.connectors.shopify import ShopifyResource
    from clarus_pipelines.sandbox.serving import serve_in_thread
    from clarus_pipelines.sandbox.shopify import ShopifySandbox

    clock = {"now": datetime.now(timezone.utc) - timedelta(days=2)}

    def next_moment() -> datetime:
        clock["now"] += timedelta(seconds=2)
        return clock["now"]

    sandbox = ShopifySandbox(seed=5, access_token="bulk-token", webhook_secret=SECRETS.shopify, clock=next_moment)
    address = {"first_name": "Bo", "last_name": "Ng", "address1": "2 Low St", "city": "Hull", "zip": "HU1 1AA",
               "country_code": "GB"}
    sku = sandbox.catalog.variants[0].shopify_sku
    with serve_in_thread(sandbox.app) as served:
        shop = ShopifyResource(base_url=served.url, access_token="bulk-token")
        placed = [sandbox.create_order(line_items=[{"sku": sku, "quantity": n}], shipping_address=address) for n in (1, 2, 3)]
        result = dg.materialize(
            [shopify_missed_webhooks], resources={**resources, "shopify": shop}, instance=shared_instance(),
            run_config={"ops": {"shopify_missed_webhooks": {"config": {"grace_minutes": -5, "lookback_minutes": 3 * 24 * 60}}}})
        meta = result.asset_materializations_for_node("shopify_missed_webhooks")[0].metadata
        assert meta["read"].value == "bulk operation"
        assert meta["missed_by_webhooks"].value == {"order": 3, "refund": 0}
        assert len(sandbox.graphql.bulk_operations) == 1  # one bulk query, not a page per 50 orders
        landed = {json.loads(e.body)["id"] for e in (zone.read(r) for r in zone.list_landings()) if e.via == "reconciliation"}
        assert landed == {o["id"] for o in placed}
        shop.close()
