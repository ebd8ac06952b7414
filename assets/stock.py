"""Stock assets: Clarus is master; Shopify is told what can really be sold, as deltas.

    stock_snapshots (one partition per hour) ─┐
    shopify_inventory_items ──────────────────┴─> available_to_sell ─> shopify_stock_push ─> shopify_inventory_levels

- `stock_snapshots`: Clarus stock balances (available, allocated, on hold, on hand per
  product, warehouse and account) read through GraphQL with cursor paging. One partition
  per UTC hour; a partition write is delete-then-insert, so a re-run or a backfill never
  duplicates rows. The partitions are dynamic (`stock_hours`, keys `%Y-%m-%d-%H:%M`):
  one key for every hour from `stock.go_live` or the retention cutoff
  (`stock.snapshot_retention_days`), whichever is later, to the current hour. The hourly
  stock sensor adds them, retention deletes them with the hours' rows, so the partitions
  Dagster shows are exactly the stored history. Clarus serves current balances
  only, so a past hour (a backfill) is rebuilt from Clarus's transaction history
  (`clarus_pipelines.domain.stock_history`): on hand then = on hand now minus the
  movements since; what was available, allocated or held then is unknown (NULL), and
  the rows say `source = 'rebuilt'`. An hour the history cannot explain is refused (the
  run fails with the reason), never filled with today's numbers. A rebuilt hour never
  touches the current balances.
  Run config `product_codes` refreshes only those products (the stock webhook sensor
  does this) inside an hour that already has a full snapshot.
- `shopify_inventory_items`: the Shopify variants (SKU -> inventory item), and the last
  known unit price per SKU (to value stranded stock).
- `available_to_sell`: per SKU and Shopify location, Clarus available - safety buffer -
  quantity on orders accepted by Shopify but not yet in Clarus; never negative.
- `shopify_stock_push`: absolute quantities (never increments, so a retried set cannot
  double-apply) for only the items whose quantity changed since the last set, recorded in
  `stock_pushes` batch by batch so an interrupted push resumes where it stopped.
- `shopify_inventory_levels`: what Shopify shows afterwards (for STOCK_MISMATCH).

The tenant's warehouse (`tenant.warehouse_id`, account `tenant.account_id`) stocks the
first Shopify location in `tenant.shopify_location_ids`.
"""

import json
import warnings
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import duckdb
import polars as pl
from pydantic import Field

from clarus_pipelines.assets.exception_checks import outcome_counts
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.shopify import ShopifyError, ShopifyResource
from clarus_pipelines.domain import stock as domain
from clarus_pipelines.domain.stock_history import HistoryRefused, rebuild_on_hand
from clarus_pipelines.domain.order_flow import PRE_WMS
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.exception_queue import Finding, sync_exceptions, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.settings import ConfigError, get_policies
from clarus_pipelines.policies import Policies, StockPolicy

GROUP = "stock"


# One key per UTC hour ("%Y-%m-%d-%H:%M"), from go-live or the retention cutoff (whichever is
# later) to the current hour: the hourly stock sensor adds them, retention deletes them, so the
# partitions Dagster lists are exactly the hours whose history is kept (docs/architecture.md).
STOCK_PARTITIONS = dg.DynamicPartitionsDefinition(name="stock_hours")
PUSH_BATCH = 50  # sets per state write: an interrupted push loses at most one batch of records
SAMPLE_ROWS = 20  # offending rows shown in check metadata
BALANCE_KEY = ["clarus_product_id", "warehouse_id", "account_id"]


def _freshness_minutes() -> int:
    try:
        return get_policies().stock.snapshot_freshness_minutes
    except (ConfigError, OSError) as exc:  # `check-config` names the problem; the code location must still load
        dg.get_dagster_logger().warning("stock freshness limit from defaults (policies unreadable: %s)", exc)
        return StockPolicy().snapshot_freshness_minutes


SNAPSHOT_FRESHNESS = timedelta(minutes=_freshness_minutes())


class StockSnapshotConfig(dg.Config):
    product_codes: list[str] = Field(
        default_factory=list,
        description="Clarus product codes to refresh; empty reads every balance (the hourly snapshot).",
    )


# ------------------------------------------------------------------------------ helpers


def _frame(con: duckdb.DuckDBPyConnection, query: str, params: list[Any] | None = None) -> pl.DataFrame:
    return con.sql(query, params=params or None).pl()


def _sample(frame: pl.DataFrame, n: int = SAMPLE_ROWS) -> dg.MetadataValue:
    return dg.MetadataValue.json(json.loads(frame.head(n).write_json()))


def sellable_locations(policies: Policies) -> tuple[list[str], pl.DataFrame]:
    """The Shopify location ids we push to, and which Clarus warehouse stocks each."""
    tenant = policies.tenant
    if not tenant.shopify_location_ids:
        raise dg.Failure(
            "policies tenant.shopify_location_ids is empty: no Shopify location to sell Clarus stock from"
        )
    location = str(tenant.shopify_location_ids[0])
    return [location], pl.DataFrame({"warehouse_id": [str(tenant.warehouse_id)], "location_id": [location]})


UNSENT_ORDER_LINES_SQL = """
    SELECT l.sku, sum(l.quantity)::BIGINT AS quantity
    FROM order_lines l JOIN orders o USING (order_id)
    WHERE o.status IN (SELECT unnest(?)) AND l.sku IS NOT NULL AND coalesce(l.ships, true) AND l.quantity > 0
    GROUP BY l.sku
"""


def unsent_order_lines(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Quantity per SKU on orders Shopify accepted that Clarus does not have yet."""
    return _frame(con, UNSENT_ORDER_LINES_SQL, [[status.value for status in PRE_WMS]])


def current_balances(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return _frame(
        con,
        "SELECT clarus_product_id, sku, warehouse_id, account_id, available::DOUBLE AS available,"
        " allocated::DOUBLE AS allocated, on_hold::DOUBLE AS on_hold, on_hand::DOUBLE AS on_hand"
        " FROM stock_balances_current",
    ).cast(domain.BALANCE_SCHEMA)


# ------------------------------------------------------------------------------ snapshots


def _write_snapshot(
    con: duckdb.DuckDBPyConnection,
    rows: pl.DataFrame,
    *,
    hour: datetime,
    taken_at: datetime,
    run_id: str,
    scope_skus: list[str] | None,
) -> None:
    """Replace the partition's rows (or only `scope_skus`' rows) and refresh current balances."""
    con.register("_stock_rows", rows)
    try:
        if scope_skus is None:
            con.execute("DELETE FROM stock_snapshots WHERE snapshot_hour = ?", [hour])
        else:
            con.execute(
                "DELETE FROM stock_snapshots WHERE snapshot_hour = ? AND sku IN (SELECT unnest(?))", [hour, scope_skus]
            )
        con.execute(
            "INSERT INTO stock_snapshots (snapshot_hour, taken_at, clarus_product_id, sku, warehouse_id, account_id,"
            " available, allocated, on_hold, on_hand, run_id)"
            " SELECT ?, ?, clarus_product_id, sku, warehouse_id, account_id, available, allocated, on_hold, on_hand, ?"
            " FROM _stock_rows",
            [hour, taken_at, run_id],
        )
        # newest read wins: a backfill running beside the hourly snapshot cannot roll current stock back
        con.execute(
            "INSERT INTO stock_balances_current"
            " SELECT clarus_product_id, sku, warehouse_id, account_id, available, allocated, on_hold, on_hand, ?"
            " FROM _stock_rows"
            " ON CONFLICT (clarus_product_id, warehouse_id, account_id) DO UPDATE SET sku = excluded.sku,"
            " available = excluded.available, allocated = excluded.allocated, on_hold = excluded.on_hold,"
            " on_hand = excluded.on_hand, taken_at = excluded.taken_at"
            " WHERE excluded.taken_at >= stock_balances_current.taken_at",
            [taken_at],
        )
        # balances Clarus no longer reports (within what was read) are gone
        scope = "" if scope_skus is None else " AND c.sku IN (SELECT unnest(?))"
        con.execute(
            "DELETE FROM stock_balances_current c WHERE c.taken_at < ?" + scope + " AND NOT EXISTS ("
            " SELECT 1 FROM _stock_rows r WHERE r.clarus_product_id = c.clarus_product_id"
            " AND r.warehouse_id = c.warehouse_id AND r.account_id = c.account_id)",
            [taken_at] if scope_skus is None else [taken_at, scope_skus],
        )
    finally:
        con.unregister("_stock_rows")


def _write_rebuilt(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, *, hour: datetime, taken_at: datetime,
                   run_id: str) -> None:
    """Replace a past hour's rows with its rebuilt on-hand figures; current balances are not touched."""
    con.register("_rebuilt_rows", rows)
    try:
        con.execute("DELETE FROM stock_snapshots WHERE snapshot_hour = ?", [hour])
        con.execute(
            "INSERT INTO stock_snapshots (snapshot_hour, taken_at, clarus_product_id, sku, warehouse_id, account_id,"
            " available, allocated, on_hold, on_hand, run_id, source)"
            " SELECT ?, ?, clarus_product_id, sku, warehouse_id, account_id, NULL, NULL, NULL, on_hand, ?, 'rebuilt'"
            " FROM _rebuilt_rows",
            [hour, taken_at, run_id],
        )
    finally:
        con.unregister("_rebuilt_rows")


def _rebuild_past_hour(context: dg.AssetExecutionContext, store, policy: Policies, clarus: ClarusResource,
                       hour: datetime, hour_end: datetime) -> dg.MaterializeResult:
    """A backfilled hour: on hand worked back from now through Clarus's transactions, or refused."""
    taken_at = utcnow()
    raw = domain.balances_frame(clarus.iter_stock_balances(None), policy.sku_cleaning)
    current = (raw.filter(pl.col("sku").is_not_null()).unique(BALANCE_KEY, keep="last", maintain_order=True)
               .select(*BALANCE_KEY, "sku", "on_hand"))
    try:
        rows = rebuild_on_hand(current, clarus.iter_transactions(since=hour_end), hour_end=hour_end, read_at=taken_at)
    except HistoryRefused as exc:
        raise dg.Failure(
            description=f"stock for the hour {hour:%Y-%m-%d %H}:00 UTC is not rebuilt: {exc}",
            metadata={"snapshot_hour": hour.isoformat(), "reason": str(exc)},
        ) from exc
    with store.write() as con:
        _write_rebuilt(con, rows, hour=hour, taken_at=taken_at, run_id=context.run_id)
    context.log.info("stock %s rebuilt from the transaction history: %d balance(s)", hour, rows.height)
    note = "rebuilt from Clarus's transaction history: on hand only (available, allocated, held unknown)"
    return dg.MaterializeResult(
        metadata={"snapshot_hour": hour.isoformat(), "taken_at": taken_at.isoformat(), "scope": "rebuilt",
                  "source": "rebuilt", "balances": rows.height, "skus": rows["sku"].n_unique(),
                  "on_hand_units": int(rows["on_hand"].sum() or 0)},
        check_results=[
            dg.AssetCheckResult(check_name="balances_readable", passed=True, description=note),
            dg.AssetCheckResult(check_name="balance_keys_unique", passed=True, description=note),
        ],
    )


@dg.asset(
    partitions_def=STOCK_PARTITIONS,
    group_name=GROUP,
    kinds={"duckdb"},
    description="Clarus stock balances per product, warehouse and account, one partition per hour "
    "(delete-then-insert: re-runs and backfills never duplicate).",
    check_specs=[
        dg.AssetCheckSpec(
            "balances_readable",
            asset="stock_snapshots",
            description="Every balance read has a SKU and whole, non-negative quantities within what is on hand.",
        ),
        dg.AssetCheckSpec(
            "balance_keys_unique",
            asset="stock_snapshots",
            description="Clarus returned each product/warehouse/account balance once (paging did not repeat rows).",
        ),
    ],
)
def stock_snapshots(
    context: dg.AssetExecutionContext,
    config: StockSnapshotConfig,
    state: StateStoreResource,
    policies: PoliciesResource,
    clarus: ClarusResource,
) -> dg.MaterializeResult:
    policy = policies.load()
    store = state.store()
    try:
        hour = domain.key_hour(context.partition_key)
    except ValueError as exc:
        raise dg.Failure(f"stock partition {context.partition_key!r} names no UTC hour: {exc}") from exc
    if hour < policy.stock.go_live:
        raise dg.Failure(f"stock for the hour {hour:%Y-%m-%d %H}:00 UTC is not rebuilt: it is before go-live "
                         f"({policy.stock.go_live:%Y-%m-%d %H}:00 UTC), there is no history to rebuild it from")
    hour_end = hour + domain.ONE_HOUR
    if hour_end <= utcnow():  # a past hour: Clarus's balances now are not that hour's
        return _rebuild_past_hour(context, store, policy, clarus, hour, hour_end)
    codes = sorted(set(config.product_codes))
    scope_skus: list[str] | None = None
    if codes:
        with store.read() as con:
            has_full = con.execute("SELECT count(*) FROM stock_snapshots WHERE snapshot_hour = ?", [hour]).fetchone()[0]
        if has_full:
            scope_skus = sorted({s for s in (clean_sku(c, policy.sku_cleaning) for c in codes) if s})
        else:
            context.log.info("hour %s has no full snapshot yet: reading every balance, not only %d product(s)", hour, len(codes))
            codes = []

    taken_at = utcnow()
    raw = domain.balances_frame(clarus.iter_stock_balances(codes or None), policy.sku_cleaning)
    problems = domain.quantity_problems(raw)
    duplicates = domain.duplicate_balance_keys(raw)
    rows = (
        domain.whole_units(raw.filter(pl.col("sku").is_not_null() & pl.col("available").is_not_null()))
        .with_columns(pl.col("allocated").fill_null(0), pl.col("on_hold").fill_null(0))
        .unique(BALANCE_KEY, keep="last", maintain_order=True)
    )
    with store.write() as con:
        _write_snapshot(con, rows, hour=hour, taken_at=taken_at, run_id=context.run_id, scope_skus=scope_skus)

    by_problem = dict(problems.group_by("problem").len().iter_rows()) if not problems.is_empty() else {}
    context.log.info(
        "stock snapshot %s (%s): %d balance(s) of %d SKU(s); %d unusable", hour, "all" if scope_skus is None else "refresh",
        rows.height, rows["sku"].n_unique(), raw.height - rows.height,
    )
    return dg.MaterializeResult(
        metadata={
            "snapshot_hour": hour.isoformat(),
            "taken_at": taken_at.isoformat(),
            "scope": "all" if scope_skus is None else "refresh",
            "refreshed_skus": dg.MetadataValue.json(scope_skus or []),
            "balances": rows.height,
            "dagster/row_count": rows.height,
            "skus": rows["sku"].n_unique(),
            "warehouses": rows["warehouse_id"].n_unique(),
            "available_units": int(rows["available"].clip(lower_bound=0).sum() or 0),
            "unusable_balances": raw.height - rows.height,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="balances_readable",
                passed=problems.is_empty(),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"problems": dg.MetadataValue.json(by_problem), "sample": _sample(problems)},
                description=None if problems.is_empty() else "negative stock is pushed as 0; fractional stock rounds down",
            ),
            dg.AssetCheckResult(
                check_name="balance_keys_unique",
                passed=duplicates.is_empty(),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"duplicated_keys": duplicates.height, "sample": _sample(duplicates)},
            ),
        ],
    )


@dg.asset_check(
    asset=stock_snapshots,
    description="No current balance is negative or more than is physically on hand.",
)
def no_negative_or_impossible_stock(state: StateStoreResource) -> dg.AssetCheckResult:
    with state.store().read() as con:
        bad = _frame(
            con,
            "SELECT sku, clarus_product_id, warehouse_id, account_id, available, allocated, on_hold, on_hand, taken_at,"
            " CASE WHEN least(available, allocated, on_hold) < 0 THEN 'negative' ELSE 'exceeds_on_hand' END AS problem"
            " FROM stock_balances_current"
            " WHERE least(available, allocated, on_hold) < 0"
            " OR (on_hand IS NOT NULL AND available + allocated + on_hold > on_hand)"
            " ORDER BY sku, warehouse_id",
        )
        total = con.execute("SELECT count(*) FROM stock_balances_current").fetchone()[0]
    return dg.AssetCheckResult(
        passed=bad.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"offending_balances": bad.height, "balances": total, "sample": _sample(bad)},
    )



with warnings.catch_warnings():
    # One freshness mechanism per asset (docs/architecture.md): a last-update freshness *check*
    # (a result with metadata, alerting like every other check, evaluated when due by its
    # sensor), not a FreshnessPolicy beside it. Superseded in Dagster by FreshnessPolicy, which
    # gives no check result yet.
    warnings.simplefilter("ignore", category=FutureWarning)
    snapshot_freshness_checks = dg.build_last_update_freshness_checks(
        assets=[stock_snapshots], lower_bound_delta=SNAPSHOT_FRESHNESS
    )


# ------------------------------------------------------------------------------ Shopify items


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    description="Shopify variants with their SKU (cleaned) and inventory item; last known unit price per SKU.",
)
def shopify_inventory_items(
    context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource, shopify: ShopifyResource
) -> dg.MaterializeResult:
    policy = policies.load()
    variants = domain.variants_frame(shopify.iter_variants(), policy.sku_cleaning)
    read_at = utcnow()
    prices = (
        variants.filter(pl.col("sku").is_not_null() & pl.col("price").is_not_null())
        .group_by("sku")
        .agg(pl.col("price").max().alias("unit_value"))
    )
    with state.store().write() as con:
        con.register("_variants", variants)
        con.register("_prices", prices)
        try:
            con.execute("DELETE FROM stock_inventory_items")
            con.execute(
                "INSERT INTO stock_inventory_items SELECT variant_id, inventory_item_id, sku, sku_raw, price, ?"
                " FROM _variants WHERE variant_id IS NOT NULL",
                [read_at],
            )
            con.execute(
                "INSERT INTO stock_sku_values SELECT sku, unit_value, 'shopify_variant_price', ? FROM _prices"
                " ON CONFLICT (sku) DO UPDATE SET unit_value = excluded.unit_value, source = excluded.source,"
                " seen_at = excluded.seen_at",
                [read_at],
            )
        finally:
            con.unregister("_variants")
            con.unregister("_prices")
    managed = variants.filter(pl.col("sku").is_not_null() & pl.col("inventory_item_id").is_not_null())
    return dg.MaterializeResult(
        metadata={"variants": variants.height, "managed_items": managed.height, "without_sku": variants["sku"].null_count()}
    )


# ------------------------------------------------------------------------------ available to sell


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    deps=[stock_snapshots, shopify_inventory_items],
    description="Per SKU and Shopify location: Clarus available - safety buffer - quantity on orders "
    "accepted by Shopify but not yet in Clarus, never negative.",
)
def available_to_sell(
    context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource
) -> dg.MaterializeResult:
    policy = policies.load()
    _, location_map = sellable_locations(policy)
    store = state.store()
    with store.read() as con:
        balances = current_balances(con)
        unsent = unsent_order_lines(con)
        newest = con.execute("SELECT max(taken_at) FROM stock_balances_current").fetchone()[0]
    if balances.is_empty():
        # pushing from nothing would set every Shopify item to 0
        raise dg.Failure("no Clarus stock balances yet: materialize stock_snapshots first")
    ats = domain.available_to_sell(
        balances,
        location_map,
        unsent,
        buffers=policy.stock.buffers,
        default_buffer=policy.stock.default_buffer,
        account_ids=[str(policy.tenant.account_id)],
    )
    computed_at = utcnow()
    with store.write() as con:
        con.register("_ats", ats)
        try:
            con.execute("DELETE FROM available_to_sell")
            con.execute(
                "INSERT INTO available_to_sell SELECT sku, location_id, clarus_available, buffer, unsent, quantity, ?"
                " FROM _ats",
                [computed_at],
            )
        finally:
            con.unregister("_ats")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": ats.height,
            "skus": ats["sku"].n_unique(),
            "sellable_units": int(ats["quantity"].sum() or 0),
            "skus_at_zero": ats.filter(pl.col("quantity") == 0).height,
            "units_on_unsent_orders": int(unsent["quantity"].sum() or 0) if not unsent.is_empty() else 0,
            "balances_taken_at": newest.isoformat() if newest else None,
        }
    )


@dg.asset_check(
    asset=available_to_sell,
    blocking=True,
    description="Every quantity is between 0 and what Clarus has available (blocks the push when not).",
)
def available_to_sell_possible(state: StateStoreResource) -> dg.AssetCheckResult:
    with state.store().read() as con:
        bad = _frame(
            con,
            "SELECT * FROM available_to_sell WHERE quantity < 0 OR buffer < 0 OR unsent < 0"
            " OR quantity > greatest(clarus_available, 0) ORDER BY sku, location_id",
        )
    return dg.AssetCheckResult(passed=bad.is_empty(), metadata={"offending_rows": bad.height, "sample": _sample(bad)})


def stranded_findings(stranded: pl.DataFrame) -> list[Finding]:
    findings = []
    for row in stranded.iter_rows(named=True):
        value = f" worth {row['value']:.2f}" if row["value"] is not None else " (value unknown)"
        findings.append(
            Finding(
                row["sku"],
                f"{row['quantity']} unit(s) available in Clarus{value} but no Shopify variant has SKU {row['sku']}",
                {k: row[k] for k in ("quantity", "on_hold", "unit_value", "value", "clarus_product_ids", "warehouse_ids")},
            )
        )
    return findings


@dg.asset_check(
    asset=available_to_sell,
    description="STRANDED_STOCK: stock available in Clarus for SKUs no Shopify variant maps to "
    "(raised and auto-cleared in the exception queue).",
)
def stranded_stock(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    policy = policies.load()
    store = state.store()
    with store.read() as con:
        balances = current_balances(con)
        variant_skus = _frame(con, "SELECT DISTINCT sku FROM stock_inventory_items WHERE sku IS NOT NULL")
        values = _frame(con, "SELECT sku, unit_value::DOUBLE AS unit_value FROM stock_sku_values")
        variants_read = con.execute("SELECT count(*) FROM stock_inventory_items").fetchone()[0]
    if not variants_read:
        return dg.AssetCheckResult(
            passed=True, severity=dg.AssetCheckSeverity.WARN,
            metadata={"skipped": "no Shopify variants read yet"},
        )
    found = domain.stranded_stock(balances, variant_skus, values, account_ids=[str(policy.tenant.account_id)])
    with store.write() as con:
        outcome = sync_exceptions(con, "STRANDED_STOCK", stranded_findings(found), policies=policy)
    return dg.AssetCheckResult(
        passed=found.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "stranded_skus": found.height,
            "stranded_units": int(found["quantity"].sum() or 0),
            "stranded_value_known": float(found["value"].sum() or 0.0),
            "skus_without_value": found["value"].null_count(),
            "exceptions": dg.MetadataValue.json(outcome_counts(outcome)),
            "sample": _sample(found),
        },
    )


# ------------------------------------------------------------------------------ push


def _level_payload(batch: pl.DataFrame) -> list[dict[str, Any]]:
    return [
        {"inventory_item_id": item, "location_id": location, "available": quantity}
        for item, location, quantity in batch.select("inventory_item_id", "location_id", "quantity").iter_rows()
    ]


def record_pushes(con: duckdb.DuckDBPyConnection, batch: pl.DataFrame, *, pushed_at: datetime, run_id: str) -> None:
    """Store what Shopify now holds for each item of `batch` (a frame of `DELTA_SCHEMA`)."""
    con.register("_pushed", batch)
    try:
        con.execute(
            "INSERT INTO stock_pushes SELECT inventory_item_id, location_id, sku, quantity, ?, ? FROM _pushed"
            " ON CONFLICT (inventory_item_id, location_id) DO UPDATE SET sku = excluded.sku,"
            " quantity = excluded.quantity, pushed_at = excluded.pushed_at, run_id = excluded.run_id",
            [pushed_at, run_id],
        )
        con.execute(
            "INSERT INTO stock_push_log SELECT ?, inventory_item_id, location_id, sku, quantity, previous, ? FROM _pushed",
            [pushed_at, run_id],
        )
    finally:
        con.unregister("_pushed")


def compute_deltas(con: duckdb.DuckDBPyConnection, policies: Policies) -> pl.DataFrame:
    location_ids, _ = sellable_locations(policies)
    ats = _frame(con, "SELECT sku, location_id, quantity::BIGINT AS quantity FROM available_to_sell")
    items = _frame(con, "SELECT variant_id, inventory_item_id, sku FROM stock_inventory_items")
    last = _frame(con, "SELECT inventory_item_id, location_id, quantity::BIGINT AS quantity, pushed_at FROM stock_pushes")
    observed = _frame(
        con, "SELECT inventory_item_id, location_id, available::BIGINT AS available, read_at FROM stock_shopify_levels"
    )
    targets = domain.push_targets(ats, items, location_ids)
    return domain.stock_deltas(targets, last, observed, tolerance=policies.stock.mismatch_tolerance)


def _refused(exc: ShopifyError) -> bool:
    """Shopify looked at the set and said no (retrying will not help); 429/5xx were already retried."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status != 429


def set_levels(shopify: ShopifyResource, batch: pl.DataFrame) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Send one batch of absolute sets; returns (rows set, refusals).

    When Shopify refuses one item (4xx), the batch is re-sent item by item so the others
    still land; re-sending an absolute quantity is harmless.
    """
    try:
        shopify.set_inventory_levels(_level_payload(batch))
        return batch, []
    except ShopifyError as exc:
        if not _refused(exc):
            raise
    done, refused = [], []
    for row in batch.iter_slices(1):
        try:
            shopify.set_inventory_levels(_level_payload(row))
            done.append(row)
        except ShopifyError as exc:
            if not _refused(exc):
                raise
            refused.append({**row.select(*domain.TARGET_SCHEMA).row(0, named=True), "status": exc.status, "error": str(exc)})
    return (pl.concat(done) if done else batch.clear()), refused


@dg.asset(
    group_name=GROUP,
    kinds={"shopify"},
    deps=[available_to_sell],
    description="Sets Shopify's available quantity (absolute) for the inventory items whose quantity "
    "changed since the last set; nothing is sent when nothing changed.",
    # limit this pool to 1 in the instance's concurrency settings so an hourly and a webhook
    # push never interleave (the later one would otherwise compute against a stale baseline)
    pool="shopify_stock_push",
    check_specs=[
        dg.AssetCheckSpec(
            "all_sets_accepted",
            asset="shopify_stock_push",
            description="Shopify accepted every quantity we set (a refused item keeps showing a stale quantity).",
        )
    ],
)
def shopify_stock_push(
    context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource, shopify: ShopifyResource
) -> dg.MaterializeResult:
    policy = policies.load()
    store = state.store()
    with store.read() as con:
        deltas = compute_deltas(con, policy)
    sent, refused = 0, []
    for batch in deltas.iter_slices(PUSH_BATCH):
        done, batch_refused = set_levels(shopify, batch)
        if done.height:
            with store.write() as con:
                record_pushes(con, done, pushed_at=utcnow(), run_id=context.run_id)
        sent += done.height
        refused.extend(batch_refused)
    context.log.info("stock push: %d inventory level(s) set, %d refused", sent, len(refused))
    return dg.MaterializeResult(
        metadata={
            "sets_sent": sent,
            "sets_refused": len(refused),
            "first_sets": deltas["previous"].null_count(),
            "set_to_zero": deltas.filter(pl.col("quantity") == 0).height,
            "sample": _sample(deltas),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="all_sets_accepted",
                passed=not refused,
                metadata={"refused": dg.MetadataValue.json(refused[:SAMPLE_ROWS]), "refused_count": len(refused)},
            )
        ],
    )


# ------------------------------------------------------------------------------ read-back and mismatch


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    deps=[shopify_stock_push],
    description="Shopify's inventory levels at the locations we sell from, read back after the push.",
)
def shopify_inventory_levels(
    context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource, shopify: ShopifyResource
) -> dg.MaterializeResult:
    location_ids, _ = sellable_locations(policies.load())
    rows: dict[str, list[Any]] = {"inventory_item_id": [], "location_id": [], "available": []}
    for level in shopify.iter_inventory_levels(location_ids):
        rows["inventory_item_id"].append(str(level["inventory_item_id"]))
        rows["location_id"].append(str(level["location_id"]))
        rows["available"].append(level.get("available"))
    read_at = utcnow()
    levels = pl.DataFrame(
        rows, schema={"inventory_item_id": pl.Utf8, "location_id": pl.Utf8, "available": pl.Int64}
    )
    with state.store().write() as con:
        con.register("_levels", levels)
        try:
            con.execute("DELETE FROM stock_shopify_levels WHERE location_id IN (SELECT unnest(?))", [location_ids])
            con.execute(
                "INSERT INTO stock_shopify_levels SELECT inventory_item_id, location_id, available, ? FROM _levels",
                [read_at],
            )
        finally:
            con.unregister("_levels")
    return dg.MaterializeResult(metadata={"levels": levels.height, "locations": dg.MetadataValue.json(location_ids)})


def mismatch_findings(mismatches: pl.DataFrame) -> list[Finding]:
    findings = []
    for sku, group in mismatches.group_by("sku", maintain_order=True):
        items = group.drop("sku").to_dicts()
        first = items[0]
        if first["reason"] == "differs_from_last_set":
            why = f"we last set {first['last_set']}"
        else:
            why = f"Clarus says it should show {first['expected']}"
        findings.append(
            Finding(str(sku[0]), f"Shopify shows {first['shopify']} at location {first['location_id']}; {why}", {"items": items})
        )
    return findings


@dg.asset_check(
    asset=shopify_inventory_levels,
    description="STOCK_MISMATCH: Shopify differs from what we last set, or from Clarus, beyond "
    "policies.stock.mismatch_tolerance (raised and auto-cleared in the exception queue).",
)
def stock_mismatch(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    policy = policies.load()
    location_ids, _ = sellable_locations(policy)
    store = state.store()
    with store.read() as con:
        ats = _frame(con, "SELECT sku, location_id, quantity::BIGINT AS quantity FROM available_to_sell")
        items = _frame(con, "SELECT variant_id, inventory_item_id, sku FROM stock_inventory_items")
        last = _frame(con, "SELECT inventory_item_id, location_id, quantity::BIGINT AS quantity, pushed_at FROM stock_pushes")
        observed = _frame(
            con, "SELECT inventory_item_id, location_id, available::BIGINT AS available, read_at FROM stock_shopify_levels"
            " WHERE available IS NOT NULL"
        )
    targets = domain.push_targets(ats, items, location_ids)
    found = domain.stock_mismatches(observed, last, targets, tolerance=policy.stock.mismatch_tolerance)
    with store.write() as con:
        outcome = sync_exceptions(con, "STOCK_MISMATCH", mismatch_findings(found), policies=policy)
    return dg.AssetCheckResult(
        passed=found.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "mismatched_items": found.height,
            "mismatched_skus": found["sku"].n_unique(),
            "tolerance": policy.stock.mismatch_tolerance,
            "by_reason": dg.MetadataValue.json(dict(found.group_by("reason").len().iter_rows()) if found.height else {}),
            "exceptions": dg.MetadataValue.json(outcome_counts(outcome)),
            "sample": _sample(found),
        },
    )


# ------------------------------------------------------------------------------ jobs and definitions

STOCK_ASSETS = [stock_snapshots, shopify_inventory_items, available_to_sell, shopify_stock_push, shopify_inventory_levels]

# our own checks (the steps' in-line checks, the SQL sweeps, the freshness check); the GX suites
# on these assets run in the `data_quality` job only
STOCK_CHECKS = dg.AssetSelection.checks(
    dg.AssetCheckKey(dg.AssetKey("stock_snapshots"), "balances_readable"),
    dg.AssetCheckKey(dg.AssetKey("stock_snapshots"), "balance_keys_unique"),
    dg.AssetCheckKey(dg.AssetKey("shopify_stock_push"), "all_sets_accepted"),
    no_negative_or_impossible_stock, available_to_sell_possible, stranded_stock, stock_mismatch, *snapshot_freshness_checks,
)

stock_sync_job = dg.define_asset_job(
    "stock_sync",
    selection=dg.AssetSelection.assets(*STOCK_ASSETS).without_checks() | STOCK_CHECKS,
    description="Snapshot Clarus stock for the hour, compute available to sell, push the deltas to "
    "Shopify and read Shopify back (with the stock checks).",
    tags={"flow": "stock"},
)

stock_refresh_job = dg.define_asset_job(
    "stock_refresh",
    # only the checks the steps themselves report, and the blocking one that guards the push;
    # the STRANDED_STOCK sweep, freshness and the GX suites run hourly with `stock_sync` / `data_quality`
    selection=dg.AssetSelection.assets(stock_snapshots, available_to_sell, shopify_stock_push).without_checks()
    | dg.AssetSelection.checks(
        dg.AssetCheckKey(dg.AssetKey("stock_snapshots"), "balances_readable"),
        dg.AssetCheckKey(dg.AssetKey("stock_snapshots"), "balance_keys_unique"),
        available_to_sell_possible,
        dg.AssetCheckKey(dg.AssetKey("shopify_stock_push"), "all_sets_accepted"),
    ),
    description="Out-of-schedule refresh (stock webhooks): re-read some products' Clarus balances, "
    "recompute available to sell and push what changed, using the last Shopify variant read.",
    tags={"flow": "stock"},
)

defs = dg.Definitions(
    assets=STOCK_ASSETS,
    asset_checks=[no_negative_or_impossible_stock, available_to_sell_possible, stranded_stock, stock_mismatch,
                  *snapshot_freshness_checks],
    jobs=[stock_sync_job, stock_refresh_job],
)
