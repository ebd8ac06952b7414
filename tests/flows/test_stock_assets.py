"""Stock assets against the Clarus and Shopify sandboxes on loopback, with a real state (a DuckDB file or
PostgreSQL)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import yaml

import clarus_pipelines.assets.stock as stock_assets
import clarus_pipelines.sensors.stock as stock_sensors
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.shopify import ShopifyResource, legacy_id
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.catalog_data import SHOPIFY_LOCATION_ID, build_catalog
from clarus_pipelines.sandbox.faults import FaultConfig
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifySandbox
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.policies import SkuCleaning
from clarus_pipelines.domain.stock import wanted_hour_keys
from sandbox_helpers import clarus_credentials, served_clarus
from world import make_store

# The module runs on DuckDB; the tests marked BOTH run on PostgreSQL too (each test serves sandboxes
# and 130+ balances: the whole module twice over would cost the suite about a minute for the same SQL)
BOTH = pytest.mark.state_backends("duckdb", "postgres")

SEED = 3
CATALOG = build_catalog(SEED)
RULE = SkuCleaning()
LOCATION = str(SHOPIFY_LOCATION_ID)
NOT_ONLINE = [i for i in CATALOG.master if not i.sold_online]
EXTRA_PRODUCTS = 130  # with the catalogue, more than one GraphQL page of 100 balances


def hour_key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d-%H:00")


NOW_KEY = hour_key(datetime.now(timezone.utc))


@pytest.fixture(autouse=True)
def _this_hour():
    """NOW_KEY is the hour a test starts in, not the hour the module was collected in: the stock
    asset rebuilds a past hour from the transaction history, so a key that went stale while the
    suite ran (an hour boundary between collection and this test) would test the wrong path."""
    global NOW_KEY
    NOW_KEY = hour_key(datetime.now(timezone.utc))


class Stack:
    """Both sandboxes, the resources pointing at them, and the Dagster definitions."""

    def __init__(self, tmp_path: Path, state: str | Path, clarus, clarus_url: str, shopify: ShopifySandbox, shopify_url: str,
                 stock_policy: dict, location_ids: list[int] | None = None, inventory_batch_size: int = 250,
                 sensors: bool = False):
        self.clarus, self.shopify = clarus, shopify
        raw = yaml.safe_load(SANDBOX_POLICIES.read_text())
        raw["stock"] = {**raw["stock"], **stock_policy}
        if location_ids is not None:
            raw["tenant"]["shopify_location_ids"] = location_ids
        self.policies_path = tmp_path / "policies.yaml"
        self.policies_path.write_text(yaml.safe_dump(raw))
        self.store = make_store(state)  # a DuckDB file or a postgresql:// URL
        client_id, client_secret = clarus_credentials()
        self.resources = {
            "state": StateStoreResource(path=str(state)),
            "policies": PoliciesResource(path=str(self.policies_path)),
            "clarus": ClarusResource(base_url=clarus_url, subdomain="sandbox", client_id=client_id,
                                     client_secret=client_secret, min_interval_s=0.0, timeout_s=5.0),
            "shopify": ShopifyResource(base_url=shopify_url, access_token=os.environ["SHOPIFY_ACCESS_TOKEN"],
                                       timeout_s=5.0, max_elapsed_s=60.0, inventory_batch_size=inventory_batch_size),
        }
        self.defs = dg.Definitions.merge(stock_assets.defs, stock_sensors.defs, dg.Definitions(resources=self.resources))
        if sensors:
            # persistent (with an instance ref): a sensor's partitioned run request is checked against
            # the dynamic partitions, which a sensor context over an ephemeral instance cannot load
            (tmp_path / "dagster").mkdir(exist_ok=True)
            self.instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
        else:
            self.instance = dg.DagsterInstance.ephemeral()

    def add_hours(self) -> None:
        """The stock partitions the hourly sensor adds: every hour retention keeps, up to now."""
        stock = load_policies(self.policies_path).stock
        self.instance.add_dynamic_partitions(
            "stock_hours", wanted_hour_keys(stock.go_live, stock.snapshot_retention_days, datetime.now(timezone.utc)))

    def run(self, job: str = "stock_sync", partition_key: str | None = None, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
        self.add_hours()
        result = self.defs.resolve_job_def(job).execute_in_process(
            partition_key=partition_key or NOW_KEY, run_config=run_config, instance=self.instance, raise_on_error=True
        )
        assert result.success
        return result

    def run_selection(self, selection, partition_key: str | None = None) -> dg.ExecuteInProcessResult:
        self.add_hours()
        job = dg.define_asset_job("adhoc", selection=selection)
        defs = dg.Definitions.merge(self.defs, dg.Definitions(jobs=[job]))
        return defs.resolve_job_def("adhoc").execute_in_process(
            instance=self.instance, partition_key=partition_key, raise_on_error=False
        )

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with self.store.read() as con:
            return con.execute(sql, params or []).fetchall()

    def execute(self, sql: str, params: list | None = None) -> None:
        with self.store.write() as con:
            con.execute(sql, params or [])

    def set_calls(self, since: int = 0) -> list[dict]:
        """One entry per quantity in each `inventorySetQuantities` request Shopify received."""
        return [{"status": r["status"], "key": r["body"]["variables"]["key"],
                 "body": {"location_id": legacy_id(q["locationId"]), "inventory_item_id": legacy_id(q["inventoryItemId"]),
                          "available": q["quantity"]}}
                for r in self.shopify.graphql_calls("inventorySetQuantities", since)
                for q in r["body"]["variables"]["input"]["quantities"]]

    def shopify_levels(self) -> dict[str, int]:
        return {str(level["inventory_item_id"]): level["available"] for level in self.shopify.inventory_levels()}

    def open_exceptions(self, code: str) -> dict[str, dict]:
        rows = self.query("SELECT entity_id, message, details FROM exceptions WHERE code = ? AND status <> 'resolved'", [code])
        return {entity: {"message": message, "details": json.loads(details)} for entity, message, details in rows}


def check_result(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    found = [e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
             and e.asset_check_evaluation_data.check_name == name]
    assert found, f"check {name} did not run"
    return found[-1]


def seed_clarus(clarus) -> dict[str, int]:
    """Every master item as a Clarus product (cleaned SKU, as the item master creates it) with stock."""
    stock = {}
    for index, item in enumerate(CATALOG.master):
        sku = clean_sku(item.sku, RULE)
        stock[sku] = 5 + index % 17
        clarus.seed_product(sku, available=stock[sku])
    for n in range(EXTRA_PRODUCTS):
        clarus.seed_product(f"EXTRA-{n:04d}", available=0)
    return stock


@pytest.fixture
def make_stack(tmp_path, state):
    stacks = []

    def make(*, points: float = 2000.0, restore_rate: float = 100.0, faults: FaultConfig = FaultConfig(),
             location_ids: list[int] | None = None, inventory_batch_size: int = 250, sensors: bool = False,
             **stock_policy) -> Stack:
        clarus_cm = served_clarus(seed=SEED)
        clarus, clarus_url = clarus_cm.__enter__()
        shopify = ShopifySandbox(seed=SEED, access_token=os.environ["SHOPIFY_ACCESS_TOKEN"], webhook_secret="test-secret",
                                 graphql_points=points, graphql_restore_rate=restore_rate, faults=faults)
        served = serve_in_thread(shopify.app)
        stacks.append((clarus_cm, served))
        stack = Stack(tmp_path, state, clarus, clarus_url, shopify, served.url,
                      {"default_buffer": 2, "buffers": {"000123": 0}, "mismatch_tolerance": 1, **stock_policy}, location_ids,
                      inventory_batch_size, sensors)
        stack.seeded = seed_clarus(clarus)
        return stack

    yield make
    for clarus_cm, served in stacks:
        served.stop()
        clarus_cm.__exit__(None, None, None)


def expected_quantity(stack: Stack, sku: str, *, unsent: int = 0) -> int:
    buffer = 0 if sku == "000123" else 2
    return max(0, stack.seeded.get(sku, 0) - buffer - unsent)


# ------------------------------------------------------------------------ snapshots


@BOTH
def test_hourly_partitions_backfill_and_rerun_without_duplicates(make_stack):
    stack = make_stack()
    now = datetime.now(timezone.utc)
    past = [hour_key(now - timedelta(hours=h)) for h in (5, 4, 3)]
    for key in past:
        stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=key)
    balances = len(CATALOG.master) + EXTRA_PRODUCTS
    graphql_pages = [r for r in stack.clarus.requests() if r["path"] == "/graphql"]
    assert len(graphql_pages) >= 2 * len(past)  # more than one page per snapshot: cursor paging
    per_hour = dict(stack.query("SELECT strftime(snapshot_hour, '%Y-%m-%d-%H:00'), count(*) FROM stock_snapshots GROUP BY 1"))
    assert per_hour == {key: balances for key in past}

    sku = clean_sku(CATALOG.master[0].sku, RULE)
    before = stack.query("SELECT on_hand FROM stock_snapshots WHERE sku = ? AND strftime(snapshot_hour, '%Y-%m-%d-%H:00') = ?",
                         [sku, past[1]])
    stack.clarus.set_stock(sku, available=77)  # stock changes now, after every backfilled hour
    result = stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=past[1])
    assert result.success
    rows = stack.query(
        "SELECT count(*), count(DISTINCT (clarus_product_id, warehouse_id, account_id)) FROM stock_snapshots"
        " WHERE strftime(snapshot_hour, '%Y-%m-%d-%H:00') = ?", [past[1]],
    )
    assert rows == [(balances, balances)]  # re-run replaced the partition, no duplicates
    assert stack.query("SELECT count(*) FROM stock_snapshots")[0][0] == balances * len(past)
    # issue 16 (behaviour changed on purpose): a past hour is rebuilt from Clarus's transaction
    # history, so today's adjustment is not written into it, and a backfill never moves current stock
    assert stack.query("SELECT on_hand FROM stock_snapshots WHERE sku = ? AND strftime(snapshot_hour, '%Y-%m-%d-%H:00') = ?",
                       [sku, past[1]]) == before
    assert stack.query("SELECT count(*) FROM stock_balances_current")[0][0] == 0
    # a backfilled hour says honestly when its figures were read, and how
    taken, hour = stack.query("SELECT max(taken_at), max(snapshot_hour) FROM stock_snapshots WHERE strftime(snapshot_hour, '%Y-%m-%d-%H:00') = ?", [past[0]])[0]
    assert taken > hour + timedelta(hours=1)
    assert stack.query("SELECT DISTINCT source, count(available) FROM stock_snapshots GROUP BY ALL") == [("rebuilt", 0)]

    materialized = stack.instance.get_materialized_partitions(dg.AssetKey("stock_snapshots"))
    assert materialized == set(past)


@BOTH
def test_a_past_hour_is_rebuilt_from_the_transaction_history(make_stack):
    """On hand at a past hour = on hand now minus the movements since, per Clarus's ListTransactions."""
    stack = make_stack()
    sku = clean_sku(CATALOG.master[1].sku, RULE)
    stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=NOW_KEY)
    (on_hand_then,) = stack.query("SELECT on_hand FROM stock_balances_current WHERE sku = ?", [sku])[0]
    hour = datetime.now(timezone.utc) - timedelta(hours=2)
    stack.clarus.set_stock(sku, on_hand=on_hand_then + 25)  # received after that hour
    result = stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=hour_key(hour))
    assert result.success
    rebuilt = stack.query("SELECT on_hand, available, source FROM stock_snapshots WHERE sku = ?"
                          " AND strftime(snapshot_hour, '%Y-%m-%d-%H:00') = ?", [sku, hour_key(hour)])
    # the sandbox's stock was all booked in (adjustments) after that hour: on hand then was nothing,
    # whatever Clarus holds now (see tests/unit/test_stock_history.py for the arithmetic)
    assert on_hand_then > 0 and rebuilt == [(0, None, "rebuilt")]
    transactions = [r for r in stack.clarus.requests() if r["path"] == "/graphql" and "transactions" in json.dumps(r["body"])]
    assert transactions  # read through GraphQL ListTransactions


def test_a_past_hour_the_history_cannot_explain_is_refused(make_stack):
    stack = make_stack()
    sku = clean_sku(CATALOG.master[2].sku, RULE)
    stack.clarus.record_movement(sku, "QUAR", -3)  # a movement type the integration does not know
    key = hour_key(datetime.now(timezone.utc) - timedelta(hours=3))
    result = stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=key)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "is not rebuilt" in failure.event_specific_data.error.message or "QUAR" in str(failure.event_specific_data)
    assert stack.query("SELECT count(*) FROM stock_snapshots")[0][0] == 0
    assert key not in stack.instance.get_materialized_partitions(dg.AssetKey("stock_snapshots"))


def test_an_hour_retention_no_longer_keeps_is_no_partition(make_stack):
    """Partitions exist from go-live or the retention cutoff on: an older hour cannot be backfilled."""
    stack = make_stack(snapshot_retention_days=2)
    too_old = hour_key(datetime.now(timezone.utc) - timedelta(days=2, hours=2))
    with pytest.raises(dg.DagsterUnknownPartitionError):
        stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=too_old)
    assert stack.query("SELECT count(*) FROM stock_snapshots")[0][0] == 0
    assert too_old not in stack.instance.get_dynamic_partitions("stock_hours")


def test_an_hour_before_go_live_is_refused_even_as_a_partition(make_stack):
    now = datetime.now(timezone.utc)
    stack = make_stack(go_live=(now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:00:00"))
    key = hour_key(now - timedelta(hours=5))
    stack.instance.add_dynamic_partitions("stock_hours", [key])  # added by hand: no sensor adds it
    result = stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=key)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "before go-live" in str(failure.event_specific_data)
    assert stack.query("SELECT count(*) FROM stock_snapshots")[0][0] == 0


def test_snapshot_freshness_check_fails_until_snapshots_are_taken(make_stack):
    stack = make_stack()
    checks = dg.AssetSelection.checks(*stock_assets.snapshot_freshness_checks)
    before = stack.run_selection(checks)
    assert not before.get_asset_check_evaluations()[0].passed
    stack.run_selection(dg.AssetSelection.assets(stock_assets.stock_snapshots), partition_key=NOW_KEY)
    after = stack.run_selection(checks)
    assert after.get_asset_check_evaluations()[0].passed


# -------------------------------------------------------------------- push: deltas only


def test_push_sends_only_what_changed(make_stack):
    stack = make_stack()
    first = stack.run()
    managed = {str(v.inventory_item_id): clean_sku(v.shopify_sku, RULE) for v in CATALOG.variants}
    calls = stack.set_calls()
    assert 0 < len(calls) <= len(managed)
    levels = stack.shopify_levels()
    for item, sku in managed.items():
        assert levels[item] == expected_quantity(stack, sku), sku
    assert check_result(first, "all_sets_accepted").passed

    seen = len(stack.shopify.requests())
    stack.run()
    assert stack.set_calls(seen) == []  # nothing changed: nothing sent

    sku = "TEE-NAV-S"
    stack.clarus.set_stock(sku, available=40)
    stack.seeded[sku] = 40
    seen = len(stack.shopify.requests())
    stack.run()
    sent = stack.set_calls(seen)
    item = next(str(v.inventory_item_id) for v in CATALOG.variants if v.shopify_sku == sku)
    assert [c["body"] for c in sent] == [{"location_id": SHOPIFY_LOCATION_ID, "inventory_item_id": int(item), "available": 38}]
    assert stack.query("SELECT quantity FROM stock_pushes WHERE inventory_item_id = ?", [item]) == [(38,)]
    assert stack.query("SELECT count(*) FROM stock_push_log WHERE inventory_item_id = ?", [item]) == [(2,)]


@BOTH
def test_buffers_and_unsent_orders_are_deducted(make_stack):
    stack = make_stack(buffers={"000123": 0, "TEE-BLK-M": 5})
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    orders = [("o1", "#1001", "READY"), ("o2", "#1002", "HELD"), ("o3", "#1003", "SENT_TO_WMS"), ("o4", "#1004", "CANCELLED")]
    with stack.store.write() as con:
        for order_id, name, status in orders:
            con.execute("INSERT INTO orders (order_id, order_name, status, received_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                        [order_id, name, status, now, now])
            con.execute("INSERT INTO order_lines (order_id, line_id, sku, quantity, ships) VALUES (?, ?, 'TEE-NAV-M', 2, true)",
                        [order_id, f"{order_id}-1"])
        con.execute("INSERT INTO order_lines (order_id, line_id, sku, quantity, ships) VALUES ('o1', 'o1-2', '000123', 1, true)")
        con.execute("INSERT INTO order_lines (order_id, line_id, sku, quantity, ships) VALUES ('o1', 'o1-3', 'TEE-NAV-L', 9, false)")
    stack.run()
    ats = {sku: (buffer, unsent, quantity) for sku, buffer, unsent, quantity in
           stack.query("SELECT sku, buffer, unsent, quantity FROM available_to_sell")}
    seeded = stack.seeded
    assert ats["TEE-NAV-M"] == (2, 4, max(0, seeded["TEE-NAV-M"] - 2 - 4))  # READY + HELD; not sent, not cancelled
    assert ats["000123"] == (0, 1, seeded["000123"] - 1)
    assert ats["TEE-BLK-M"] == (5, 0, max(0, seeded["TEE-BLK-M"] - 5))
    assert ats["TEE-NAV-L"] == (2, 0, seeded["TEE-NAV-L"] - 2)  # a line that does not ship is not deducted
    levels = stack.shopify_levels()
    item = next(str(v.inventory_item_id) for v in CATALOG.variants if v.shopify_sku == "TEE-NAV-M")
    assert levels[item] == ats["TEE-NAV-M"][2]

    # more unsent quantity than stock: never negative
    with stack.store.write() as con:
        con.execute("UPDATE order_lines SET quantity = 500 WHERE line_id = 'o1-1'")
    stack.run()
    assert stack.query("SELECT quantity FROM available_to_sell WHERE sku = 'TEE-NAV-M'") == [(0,)]
    assert stack.shopify_levels()[item] == 0


def test_throttling_and_5xx_are_retried_and_every_set_lands_once(make_stack):
    # GraphQL: throttling is by query cost (THROTTLED answers), not HTTP 429 per call
    stack = make_stack(points=250, restore_rate=100.0, inventory_batch_size=1,  # one item per call: many calls
                       faults=FaultConfig(error_rate=0.1, retry_after_s=0.05))
    stack.run()
    sets = stack.set_calls()
    assert stack.shopify.graphql.throttled, "the small cost bucket should have answered THROTTLED"
    assert any(r["status"] >= 500 for r in sets), "injected server errors should have hit some sets"
    items = [c["inventory_item_id"] for c in stack.shopify.graphql.applied_changes]
    assert len(items) == len(set(items))  # each item applied once: a 429 or 5xx is not applied, its retry is
    levels = stack.shopify_levels()
    for variant in CATALOG.variants:
        assert levels[str(variant.inventory_item_id)] == expected_quantity(stack, clean_sku(variant.shopify_sku, RULE))
    assert stack.query("SELECT count(*) FROM stock_pushes")[0][0] == len(set(items))


def test_refused_sets_fail_the_check_and_are_not_recorded(make_stack):
    stack = make_stack(location_ids=[999])  # a location the shop does not have: Shopify answers 422
    result = stack.run()
    evaluation = check_result(result, "all_sets_accepted")
    assert not evaluation.passed
    assert evaluation.metadata["refused_count"].value == len(CATALOG.variants)
    assert stack.query("SELECT count(*) FROM stock_pushes") == [(0,)]  # retried next run, never taken as set


# ------------------------------------------------------------------ mismatch and stranded


@BOTH
def test_stock_mismatch_raised_then_corrected_and_cleared(make_stack):
    stack = make_stack()
    stack.run()
    assert stack.open_exceptions("STOCK_MISMATCH") == {}
    variant = next(v for v in CATALOG.variants if v.shopify_sku == "JMP-NAV-S")
    stack.resources["shopify"].adjust_inventory_level(variant.inventory_item_id, SHOPIFY_LOCATION_ID, 7)  # a manual edit
    result = stack.run_selection(dg.AssetSelection.assets(stock_assets.shopify_inventory_levels))
    assert not check_result(result, "stock_mismatch").passed
    opened = stack.open_exceptions("STOCK_MISMATCH")
    assert list(opened) == ["JMP-NAV-S"]
    assert opened["JMP-NAV-S"]["details"]["items"][0]["reason"] == "differs_from_last_set"

    seen = len(stack.shopify.requests())
    result = stack.run()  # the push corrects the drift, the read-back clears the exception
    assert [c["body"]["inventory_item_id"] for c in stack.set_calls(seen)] == [variant.inventory_item_id]
    assert check_result(result, "stock_mismatch").passed
    assert stack.open_exceptions("STOCK_MISMATCH") == {}
    assert stack.query("SELECT status, resolved_by FROM exceptions WHERE code = 'STOCK_MISMATCH'") == [("resolved", "auto")]


@BOTH
def test_stranded_stock_raised_with_quantity_then_cleared(make_stack):
    stack = make_stack()
    result = stack.run()
    stranded = stack.open_exceptions("STRANDED_STOCK")
    not_online = {clean_sku(i.sku, RULE) for i in NOT_ONLINE}
    zero_stripped = {clean_sku(i.sku, RULE) for i in CATALOG.zero_stripped_variants()}  # "000456" sold as "456"
    assert not_online | zero_stripped == set(stranded)
    sku = sorted(not_online)[0]
    assert stranded[sku]["details"]["quantity"] == stack.seeded[sku]
    assert stranded[sku]["details"]["value"] is None  # no price known for a SKU never sold online
    evaluation = check_result(result, "stranded_stock")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN

    # a price seen earlier for a SKU values it; stock gone from the others clears them
    with stack.store.write() as con:
        con.execute("INSERT INTO stock_sku_values VALUES (?, 12.50, 'shopify_variant_price', now()::TIMESTAMP)", [sku])
    for cleared in (not_online | zero_stripped) - {sku}:
        stack.clarus.set_stock(cleared, available=0)
    result = stack.run()
    remaining = stack.open_exceptions("STRANDED_STOCK")
    assert list(remaining) == [sku]
    assert remaining[sku]["details"]["value"] == pytest.approx(12.5 * stack.seeded[sku])
    resolved = stack.query("SELECT entity_id FROM exceptions WHERE code = 'STRANDED_STOCK' AND resolved_by = 'auto'")
    assert {r[0] for r in resolved} == (not_online | zero_stripped) - {sku}
    assert not check_result(result, "stranded_stock").passed


@BOTH
def test_negative_or_impossible_stock_is_flagged_without_blocking(make_stack):
    stack = make_stack()
    later = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=1)  # newer than the snapshot about to run
    stack.execute("INSERT INTO stock_balances_current VALUES ('999', 'BROKEN', '1', '1', -4, 0, 0, NULL, ?)", [later])
    stack.execute("INSERT INTO stock_balances_current VALUES ('998', 'OVER', '1', '1', 5, 3, 0, 6, ?)", [later])
    result = stack.run()
    evaluation = check_result(result, "no_negative_or_impossible_stock")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["offending_balances"].value == 2
    # negative stock sells as zero and the push still ran
    assert stack.query("SELECT quantity FROM available_to_sell WHERE sku = 'BROKEN'") == [(0,)]
    assert check_result(result, "all_sets_accepted").passed


# ------------------------------------------------------------------- webhook refresh


def land_stock_event(stack: Stack, landing_id: str, code: str | None, product_id: str | None = None) -> None:
    product = {k: v for k, v in (("code", code), ("id", product_id)) if v is not None}
    payload = json.dumps({"resource_name": "stock_balance", "event": "updated", "data": {"product": product, "available": 1}})
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    stack.execute(
        "INSERT INTO landed_events (landing_id, source, topic, known_topic, entity_type, received_at, dedupe_key, payload,"
        " via, ingested_at) VALUES (?, 'clarus', 'stock_balance/updated', true, 'stock_balance', ?, ?, ?, 'webhook', ?)",
        [landing_id, now, landing_id, payload, now],
    )


class _ClockInNowKeyHour(datetime):
    """The sensor's clock held inside NOW_KEY's hour, so a run that crosses an hour boundary
    still refreshes the partition this test snapshotted."""

    @classmethod
    def now(cls, tz=None):
        return datetime.strptime(NOW_KEY, "%Y-%m-%d-%H:00").replace(tzinfo=timezone.utc) + timedelta(minutes=30)


@BOTH
def test_stock_webhooks_refresh_only_the_affected_products(make_stack, monkeypatch):
    import clarus_pipelines.sensors.stock as stock_sensors

    monkeypatch.setattr(stock_sensors, "datetime", _ClockInNowKeyHour)
    stack = make_stack(sensors=True)
    stack.run()  # full snapshot of this hour
    sku = "TEE-ECR-L"
    stack.clarus.set_stock(sku, available=31)
    stack.clarus.set_stock("TEE-ECR-M", available=29, emit=False)  # changed, but no webhook names it
    land_stock_event(stack, "20250101T000000.000001Z", sku)
    land_stock_event(stack, "20250101T000000.000002Z", sku)

    sensor = stack.defs.resolve_sensor_def("stock_webhook_sensor")
    with dg.build_sensor_context(instance=stack.instance, instance_ref=stack.instance.get_ref(),
                                 resources={"state": stack.resources["state"]}, definitions=stack.defs) as context:
        result = sensor.evaluate_tick(context)
    [request] = result.run_requests
    assert request.run_config["ops"]["stock_snapshots"]["config"]["product_codes"] == [sku]
    assert request.partition_key == NOW_KEY
    with dg.build_sensor_context(instance=stack.instance, instance_ref=stack.instance.get_ref(), cursor=result.cursor,
                                 resources={"state": stack.resources["state"]},
                                 definitions=stack.defs) as context:
        assert sensor.evaluate_tick(context).run_requests == []

    graphql_before = len([r for r in stack.clarus.requests() if r["path"] == "/graphql"])
    seen = len(stack.shopify.requests())
    stack.run("stock_refresh", partition_key=request.partition_key, run_config=request.run_config)
    assert len([r for r in stack.clarus.requests() if r["path"] == "/graphql"]) - graphql_before == 1  # one filtered page
    item = next(v.inventory_item_id for v in CATALOG.variants if v.shopify_sku == sku)
    assert [c["body"]["inventory_item_id"] for c in stack.set_calls(seen)] == [item]
    assert stack.shopify_levels()[str(item)] == 29
    # the other product keeps its snapshot figure until the next full snapshot
    untouched = stack.query("SELECT available FROM stock_balances_current WHERE sku = 'TEE-ECR-M'")
    assert untouched == [(stack.seeded["TEE-ECR-M"],)]
    assert stack.query("SELECT count(*) FROM stock_snapshots")[0][0] == len(CATALOG.master) + EXTRA_PRODUCTS


def test_webhook_refresh_takes_a_full_snapshot_when_the_hour_has_none(make_stack):
    stack = make_stack()
    stack.run("stock_refresh", run_config={"ops": {"stock_snapshots": {"config": {"product_codes": ["TEE-ECR-L"]}}}})
    assert stack.query("SELECT count(*) FROM stock_snapshots")[0][0] == len(CATALOG.master) + EXTRA_PRODUCTS


def test_a_webhook_naming_no_known_product_refreshes_everything(make_stack, monkeypatch):
    monkeypatch.setattr(stock_sensors, "datetime", _ClockInNowKeyHour)
    stack = make_stack(sensors=True)
    land_stock_event(stack, "20250101T000000.000003Z", None, product_id="424242")
    sensor = stack.defs.resolve_sensor_def("stock_webhook_sensor")
    with dg.build_sensor_context(instance=stack.instance, instance_ref=stack.instance.get_ref(),
                                 resources={"state": stack.resources["state"]}, definitions=stack.defs) as context:
        data = sensor.evaluate_tick(context)
    [request] = data.run_requests
    assert request.run_config["ops"]["stock_snapshots"]["config"]["product_codes"] == []
    # no hourly tick yet: the webhook sensor adds its hour's partition itself
    assert [list(c.partition_keys) for c in data.dynamic_partitions_requests] == [[NOW_KEY]]


def clock_at(moment: datetime) -> type[datetime]:
    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return moment.astimezone(tz) if tz else moment.replace(tzinfo=None)

    return Clock


def tick_hourly(stack: Stack, cursor: str | None) -> dg.SensorResult:
    """One tick of the hourly stock sensor; its partition requests applied as the daemon applies them."""
    sensor = stack.defs.resolve_sensor_def("stock_hourly_sensor")
    with dg.build_sensor_context(instance=stack.instance, instance_ref=stack.instance.get_ref(), cursor=cursor,
                                 resources={"policies": stack.resources["policies"]}, definitions=stack.defs) as context:
        data = sensor.evaluate_tick(context)
    for change in data.dynamic_partitions_requests:
        stack.instance.add_dynamic_partitions(change.partitions_def_name, list(change.partition_keys))
    return data


def test_hourly_sensor_adds_the_hours_and_requests_the_current_one_once(make_stack, monkeypatch):
    stack = make_stack(sensors=True, snapshot_retention_days=3, go_live="2026-01-01T00:00:00")
    monkeypatch.setattr(stock_sensors, "datetime", clock_at(datetime(2026, 3, 1, 14, 5, tzinfo=timezone.utc)))
    first = tick_hourly(stack, None)
    [request] = first.run_requests
    assert request.partition_key == "2026-03-01-14:00" and request.run_key == "stock-hourly:2026-03-01-14:00"
    assert request.tags["stock/trigger"] == "schedule"
    hours = sorted(stack.instance.get_dynamic_partitions("stock_hours"))
    # three days back from 14:05: the cutoff 2026-02-26 14:05 removes the 14:00 hour
    assert hours[0] == "2026-02-26-15:00" and hours[-1] == "2026-03-01-14:00" and len(hours) == 72

    again = tick_hourly(stack, first.cursor)  # the same hour: nothing more to ask
    assert again.run_requests == [] and "requested already" in again.skip_message
    assert again.dynamic_partitions_requests == []

    # the next hour exists from its first minute; its snapshot is due at minute 5
    monkeypatch.setattr(stock_sensors, "datetime", clock_at(datetime(2026, 3, 1, 15, 2, tzinfo=timezone.utc)))
    early = tick_hourly(stack, first.cursor)
    assert early.run_requests == [] and "minute 5" in early.skip_message
    assert [list(c.partition_keys) for c in early.dynamic_partitions_requests] == [["2026-03-01-15:00"]]
    monkeypatch.setattr(stock_sensors, "datetime", clock_at(datetime(2026, 3, 1, 15, 6, tzinfo=timezone.utc)))
    [next_hour] = tick_hourly(stack, first.cursor).run_requests
    assert next_hour.partition_key == "2026-03-01-15:00"


def test_partitions_start_at_the_configured_go_live(make_stack, monkeypatch):
    stack = make_stack(sensors=True, go_live="2026-03-01T10:00:00")
    monkeypatch.setattr(stock_sensors, "datetime", clock_at(datetime(2026, 3, 1, 14, 5, tzinfo=timezone.utc)))
    tick_hourly(stack, None)
    assert sorted(stack.instance.get_dynamic_partitions("stock_hours")) == [
        "2026-03-01-10:00", "2026-03-01-11:00", "2026-03-01-12:00", "2026-03-01-13:00", "2026-03-01-14:00"]


def test_before_go_live_the_hourly_sensor_asks_for_nothing(make_stack, monkeypatch):
    stack = make_stack(sensors=True, go_live="2026-03-02T00:00:00")
    monkeypatch.setattr(stock_sensors, "datetime", clock_at(datetime(2026, 3, 1, 14, 5, tzinfo=timezone.utc)))
    data = tick_hourly(stack, None)
    assert data.run_requests == [] and "go-live" in data.skip_message
    assert stack.instance.get_dynamic_partitions("stock_hours") == []
