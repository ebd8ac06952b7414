"""Item master: NetSuite items -> cleaned item master -> Clarus products, with checks.

    netsuite_items ─> item_master ─> clarus_products          shopify_variants
    (every item,      (one row per   (create or update only    (for SKU_NOT_IN_MASTER and
     raw SKU)          cleaned SKU)   what changed; store ids)   SKU_LEADING_ZEROS_LOST)

SKUs are strings end to end and cleaned once, by `policies.sku_cleaning`, the same way
orders are. A content hash of what was last sent to Clarus (`items.content_hash`) means
a re-run sends nothing unless an item changed. Asset checks run over the state
database and keep the exception queue in step (raised while true, cleared when not):
duplicate SKUs after cleaning, BARCODE_INVALID, SKU_NOT_IN_MASTER and
SKU_LEADING_ZEROS_LOST (which names both spellings).
"""


import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import dagster as dg
import polars as pl

from clarus_pipelines.assets.exception_checks import exception_check
from clarus_pipelines.connectors.clarus import ClarusRejected, ClarusResource
from clarus_pipelines.domain.ports import ConnectorError
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain.barcodes import gtin_problem, gtin_valid_expr
from clarus_pipelines.domain.order_flow import frame
from clarus_pipelines.domain.skus import clean_sku_expr, leading_zero_matches
from clarus_pipelines.exception_queue import Finding, clear_exception, raise_exception, sync_exceptions, utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore

log = logging.getLogger(__name__)

GROUP = "item_master"
# Clarus needs a stock unit type on every product; 1 is the tenant's default "each".
STOCK_UNIT_EACH = 1
DESCRIPTION_MAX = 150  # Clarus's product description limit
WRITE_CHUNK = 50


def _text(value: Any) -> str | None:
    """Ids and codes as text; a JSON number for a SKU is kept as the digits it has."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


# ----------------------------------------------------------------------------- reading


def netsuite_items_frame(records: Iterable[Mapping[str, Any]], policies: Policies) -> pl.DataFrame:
    """NetSuite inventory item records -> one row each, raw and cleaned SKU (all Utf8)."""
    rows = [
        {
            "netsuite_item_id": _text(r.get("id")),
            "sku_raw": _text(r.get("itemId")),
            "description": _text(r.get("displayName") or r.get("salesDescription") or r.get("itemId")),
            "barcode": _text(r.get("upcCode")),
            "is_inactive": bool(r.get("isInactive") or False),
        }
        for r in records
    ]
    schema = {"netsuite_item_id": pl.Utf8, "sku_raw": pl.Utf8, "description": pl.Utf8, "barcode": pl.Utf8, "is_inactive": pl.Boolean}
    items = pl.DataFrame(rows, schema=schema).filter(pl.col("netsuite_item_id").is_not_null())
    return items.with_columns(clean_sku_expr("sku_raw", policies.sku_cleaning).alias("sku"))


def shopify_variants_frame(records: Iterable[Mapping[str, Any]], policies: Policies) -> pl.DataFrame:
    rows = [
        {
            "variant_id": _text(r.get("id")),
            "product_id": _text(r.get("product_id")),
            "sku_raw": _text(r.get("sku")),
            "title": _text(r.get("title")),
            "barcode": _text(r.get("barcode")),
            "inventory_item_id": _text(r.get("inventory_item_id")),
        }
        for r in records
    ]
    schema = {k: pl.Utf8 for k in ("variant_id", "product_id", "sku_raw", "title", "barcode", "inventory_item_id")}
    variants = pl.DataFrame(rows, schema=schema).filter(pl.col("variant_id").is_not_null())
    return variants.with_columns(clean_sku_expr("sku_raw", policies.sku_cleaning).alias("sku"))


def store_netsuite_items(store: StateStore, items: pl.DataFrame, *, now: datetime) -> None:
    with store.write() as con:
        con.register("_ns_items", items)
        try:
            con.execute("DELETE FROM item_master_source")
            con.execute(
                "INSERT INTO item_master_source (netsuite_item_id, sku_raw, sku, description, barcode, is_inactive, read_at)"
                " SELECT netsuite_item_id, sku_raw, sku, description, barcode, is_inactive, ? FROM _ns_items",
                [now],
            )
        finally:
            con.unregister("_ns_items")


def store_shopify_variants(store: StateStore, variants: pl.DataFrame, *, now: datetime) -> None:
    with store.write() as con:
        con.register("_variants", variants)
        try:
            con.execute("DELETE FROM shopify_variants")
            con.execute(
                "INSERT INTO shopify_variants (variant_id, product_id, sku_raw, sku, title, barcode, inventory_item_id, read_at)"
                " SELECT variant_id, product_id, sku_raw, sku, title, barcode, inventory_item_id, ? FROM _variants",
                [now],
            )
        finally:
            con.unregister("_variants")


# ------------------------------------------------------------------------- item master


def build_item_master(store: StateStore, *, now: datetime | None = None) -> dict[str, int]:
    """One `items` row per cleaned SKU of the active NetSuite items.

    When two NetSuite items clean to the same SKU, the lowest internal id is kept (a
    check flags the pair). Clarus ids and content hashes already stored are kept; an item
    that leaves NetSuite keeps its row, so its Clarus product stays mapped.
    """
    now = now or utcnow()
    with store.write() as con:
        con.execute(
            "INSERT INTO items (sku, sku_raw, description, barcode, netsuite_item_id, updated_at)"
            " SELECT sku, sku_raw, description, barcode, netsuite_item_id, ? FROM ("
            "   SELECT *, row_number() OVER (PARTITION BY sku ORDER BY TRY_CAST(netsuite_item_id AS BIGINT) NULLS LAST,"
            "   netsuite_item_id) AS rank FROM item_master_source WHERE sku IS NOT NULL AND NOT is_inactive)"
            " WHERE rank = 1"
            " ON CONFLICT (sku) DO UPDATE SET sku_raw = excluded.sku_raw, description = excluded.description,"
            " barcode = excluded.barcode, netsuite_item_id = excluded.netsuite_item_id, updated_at = excluded.updated_at",
            [now],
        )
        counts = con.execute(
            "SELECT count(*), count(clarus_product_id) FROM items"
        ).fetchall()[0]
    return {"items": counts[0], "with_clarus_product": counts[1]}


def product_attributes(item: Mapping[str, Any]) -> dict[str, Any]:
    """The Clarus product for an item; a barcode with a wrong check digit is not sent."""
    attrs: dict[str, Any] = {
        "code": item["sku"],
        "description": (item.get("description") or item["sku"])[:DESCRIPTION_MAX],
        "stock_unit_type_id": STOCK_UNIT_EACH,
        "external_system_reference1": item.get("netsuite_item_id"),
    }
    barcode = (item.get("barcode") or "").strip()
    if barcode and gtin_problem(barcode) is None:
        attrs["barcode"] = barcode
    return {k: v for k, v in attrs.items() if v is not None}


def content_hash(attributes: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(attributes, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class ProductSyncReport:
    candidates: int = 0
    created: int = 0
    bound_existing: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    failed: int = 0


def push_products(store: StateStore, clarus: ClarusResource, *, policies: Policies | None = None,
                  now: datetime | None = None) -> ProductSyncReport:
    """Create or update the Clarus product of every item whose content changed."""
    now = now or utcnow()
    report = ProductSyncReport()
    with store.read() as con:
        items = frame(con, "SELECT sku, description, barcode, netsuite_item_id, clarus_product_id, content_hash FROM items ORDER BY sku")
    todo = []
    for item in items.iter_rows(named=True):
        attrs = product_attributes(item)
        digest = content_hash(attrs)
        if item["clarus_product_id"] and item["content_hash"] == digest:
            report.unchanged += 1
        else:
            todo.append((item, attrs, digest))
    report.candidates = len(todo)
    for start in range(0, len(todo), WRITE_CHUNK):
        results = []
        for item, attrs, digest in todo[start:start + WRITE_CHUNK]:
            try:
                if item["clarus_product_id"]:
                    clarus.update_product(item["clarus_product_id"], attrs)
                    results.append((item, digest, item["clarus_product_id"], "updated", None))
                else:
                    product_id, created = clarus.ensure_product(attrs)
                    if not created:
                        clarus.update_product(product_id, attrs)  # bound to an existing product: make it match
                    results.append((item, digest, product_id, "created" if created else "bound_existing", None))
            except ClarusRejected as exc:
                results.append((item, digest, None, "rejected", exc))
            except ConnectorError as exc:
                log.warning("clarus product %s not synced: %s", item["sku"], exc)
                results.append((item, digest, None, "failed", exc))
        with store.write() as con:
            for item, digest, product_id, outcome, exc in results:
                setattr(report, outcome, getattr(report, outcome) + 1)
                entity = f"product:{item['sku']}"
                if outcome == "rejected":
                    raise_exception(
                        con, "WMS_REJECTED", entity, f"Clarus rejected product {item['sku']}: {exc.code} {exc.message}",
                        {"sku": item["sku"], "clarus_code": exc.code, "clarus_message": exc.message, "clarus_details": exc.details},
                        policies=policies, now=now,
                    )
                    continue
                if outcome == "failed":
                    continue
                con.execute(
                    "UPDATE items SET clarus_product_id = ?, content_hash = ?, updated_at = ? WHERE sku = ?",
                    [product_id, digest, now, item["sku"]],
                )
                con.execute(
                    "INSERT INTO bindings (entity_type, our_id, clarus_id, netsuite_id, created_at, updated_at)"
                    " VALUES ('product', ?, ?, ?, ?, ?) ON CONFLICT (entity_type, our_id) DO UPDATE SET"
                    " clarus_id = excluded.clarus_id, netsuite_id = excluded.netsuite_id, updated_at = excluded.updated_at",
                    [item["sku"], product_id, item["netsuite_item_id"], now, now],
                )
                clear_exception(con, "WMS_REJECTED", entity, now=now)
    return report


def sync_item_master(store: StateStore, policies: Policies, *, netsuite: NetSuiteResource, clarus: ClarusResource,
                     shopify: ShopifyResource | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The whole item master flow outside Dagster: read, rebuild, push (and read the variants)."""
    now = now or utcnow()
    items = netsuite_items_frame(netsuite.iter_inventory_items(), policies)
    store_netsuite_items(store, items, now=now)
    summary: dict[str, Any] = {"netsuite_items": items.height, **build_item_master(store, now=now)}
    summary["products"] = asdict(push_products(store, clarus, policies=policies, now=now))
    if shopify is not None:
        variants = shopify_variants_frame(shopify.iter_variants(), policies)
        store_shopify_variants(store, variants, now=now)
        summary["shopify_variants"] = variants.height
    return summary


# ------------------------------------------------------------------------------ checks


def duplicate_skus(con) -> pl.DataFrame:
    """Cleaned SKUs held by more than one active NetSuite item, with every raw spelling."""
    return frame(
        con,
        "SELECT sku, list(sku_raw ORDER BY netsuite_item_id) AS raw_skus,"
        " list(netsuite_item_id ORDER BY netsuite_item_id) AS netsuite_item_ids"
        " FROM item_master_source WHERE sku IS NOT NULL AND NOT is_inactive GROUP BY sku HAVING count(*) > 1 ORDER BY sku",
    )


# What the SKU and barcode checks read (in PostgreSQL mode pulled into DuckDB through Arrow).
BARCODE_CHECK_TABLES = ("item_master_source",)
VARIANT_CHECK_TABLES = ("shopify_variants", "items")


def barcode_findings(con) -> list[Finding]:
    items = frame(
        con,
        "SELECT sku, barcode, netsuite_item_id FROM item_master_source WHERE sku IS NOT NULL AND NOT is_inactive ORDER BY sku",
    )
    bad = items.filter(gtin_valid_expr("barcode").not_().fill_null(False)).unique("sku", keep="first", maintain_order=True)
    return [
        Finding(r["sku"], f"SKU {r['sku']}: {gtin_problem(r['barcode'])}", {"barcode": r["barcode"], "netsuite_item_id": r["netsuite_item_id"]})
        for r in bad.iter_rows(named=True)
    ]


def variant_findings(con) -> tuple[list[Finding], list[Finding]]:
    """(SKU_NOT_IN_MASTER, SKU_LEADING_ZEROS_LOST) findings for the Shopify variants."""
    variants = frame(con, "SELECT variant_id, sku_raw, sku, title FROM shopify_variants ORDER BY variant_id")
    master = frame(con, "SELECT sku FROM items")
    zero_pairs = leading_zero_matches(variants.drop_nulls("sku"), master)
    zero_skus = set(zero_pairs["sku"].to_list())
    by_sku = variants.drop_nulls("sku").group_by("sku", maintain_order=True).agg(
        pl.col("variant_id"), pl.col("sku_raw").first(), pl.col("title").first()
    )
    missing = by_sku.join(master, on="sku", how="anti").filter(pl.col("sku").is_in(list(zero_skus)).not_())
    not_in_master = [
        Finding(r["sku"], f"Shopify variant SKU '{r['sku_raw']}' ({r['title']}) is not in the item master",
                {"variant_ids": r["variant_id"], "sku_raw": r["sku_raw"]})
        for r in missing.iter_rows(named=True)
    ]
    for r in variants.filter(pl.col("sku").is_null()).iter_rows(named=True):
        not_in_master.append(Finding(f"variant:{r['variant_id']}", f"Shopify variant {r['variant_id']} ({r['title']}) has no SKU",
                                     {"variant_ids": [r["variant_id"]], "sku_raw": r["sku_raw"]}))
    variant_ids = dict(zip(by_sku["sku"].to_list(), by_sku["variant_id"].to_list()))
    zeros_lost = [
        Finding(
            r["sku"],
            f"Shopify SKU '{r['sku']}' matches item master SKU '{r['master_sku']}' only once leading zeros are restored",
            {"shopify_sku": r["sku"], "master_sku": r["master_sku"], "variant_ids": variant_ids.get(r["sku"], [])},
        )
        for r in zero_pairs.iter_rows(named=True)
    ]
    return not_in_master, zeros_lost


# ----------------------------------------------------------------------------- Dagster


@dg.asset(group_name=GROUP, kinds={"netsuite", "duckdb"}, description="Every NetSuite inventory item as read, raw and cleaned SKU.")
def netsuite_items(context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                   netsuite: NetSuiteResource) -> dg.MaterializeResult:
    items = netsuite_items_frame(netsuite.iter_inventory_items(), policies.load())
    store_netsuite_items(state.store(), items, now=utcnow())
    return dg.MaterializeResult(metadata={"items": items.height, "inactive": int(items["is_inactive"].sum()),
                                          "without_sku": items["sku"].null_count()})


@dg.asset(group_name=GROUP, deps=[netsuite_items], kinds={"duckdb"},
          description="The cleaned item master: one row per SKU, with its NetSuite item and Clarus product ids.")
def item_master(context: dg.AssetExecutionContext, state: StateStoreResource) -> dg.MaterializeResult:
    summary = build_item_master(state.store())
    return dg.MaterializeResult(metadata={**summary, "dagster/row_count": summary["items"]})


@dg.asset(group_name=GROUP, deps=[item_master], kinds={"clarus"},
          description="A Clarus product per item (created or updated only when its content changed).")
def clarus_products(context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                    clarus: ClarusResource) -> dg.MaterializeResult:
    report = push_products(state.store(), clarus, policies=policies.load())
    context.log.info("clarus products: %s", report)
    return dg.MaterializeResult(metadata=asdict(report))


@dg.asset(group_name=GROUP, kinds={"shopify", "duckdb"}, description="Shopify variants with raw and cleaned SKU.")
def shopify_variants(context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                     shopify: ShopifyResource) -> dg.MaterializeResult:
    variants = shopify_variants_frame(shopify.iter_variants(), policies.load())
    store_shopify_variants(state.store(), variants, now=utcnow())
    return dg.MaterializeResult(metadata={"variants": variants.height, "without_sku": variants["sku"].null_count()})


@dg.asset_check(asset=item_master, description="No two NetSuite items share a SKU once cleaned (Clarus can hold only one).")
def item_master_skus_unique(state: StateStoreResource) -> dg.AssetCheckResult:
    with state.store().read() as con:
        dupes = duplicate_skus(con)
    return dg.AssetCheckResult(
        passed=dupes.is_empty(),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"count": dupes.height, "duplicates": dg.MetadataValue.json(dupes.head(50).to_dicts())},
    )


@dg.asset_check(asset=item_master, description="Every barcode has a valid GTIN-8/12/13/14 check digit (BARCODE_INVALID).")
def item_master_barcodes_valid(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    store = state.store()
    with store.check_reader(BARCODE_CHECK_TABLES) as con:  # PostgreSQL: the check reads a DuckDB copy
        findings = barcode_findings(con)
    with store.write() as con:
        outcome = sync_exceptions(con, "BARCODE_INVALID", findings, policies=policies.load())
    return exception_check(findings, outcome, what="Clarus product(s) with an invalid barcode (BARCODE_INVALID)")


@dg.asset_check(asset=shopify_variants, additional_deps=[item_master],
                description="Every Shopify variant's SKU is in the item master (SKU_NOT_IN_MASTER).")
def variants_in_item_master(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    store = state.store()
    with store.check_reader(VARIANT_CHECK_TABLES) as con:  # PostgreSQL: the check reads a DuckDB copy
        findings, _ = variant_findings(con)
    with store.write() as con:
        outcome = sync_exceptions(con, "SKU_NOT_IN_MASTER", findings, policies=policies.load())
    return exception_check(findings, outcome, what="Shopify SKU(s) not in the item master (SKU_NOT_IN_MASTER)")


@dg.asset_check(asset=shopify_variants, additional_deps=[item_master],
                description="No Shopify SKU matches the item master only once its leading zeros are restored (SKU_LEADING_ZEROS_LOST).")
def variant_skus_keep_leading_zeros(state: StateStoreResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    store = state.store()
    with store.check_reader(VARIANT_CHECK_TABLES) as con:  # PostgreSQL: the check reads a DuckDB copy
        _, findings = variant_findings(con)
    with store.write() as con:
        outcome = sync_exceptions(con, "SKU_LEADING_ZEROS_LOST", findings, policies=policies.load())
    return exception_check(findings, outcome, severity=dg.AssetCheckSeverity.ERROR,
                           what="SKU(s) that match the master only with their leading zeros (SKU_LEADING_ZEROS_LOST)")


item_master_job = dg.define_asset_job(
    "item_master_sync",
    # the item master's own SKU and barcode checks (short SQL that raises their exceptions), not the GX suites
    selection=dg.AssetSelection.assets(netsuite_items, item_master, clarus_products, shopify_variants).without_checks()
    | dg.AssetSelection.checks(item_master_skus_unique, item_master_barcodes_valid, variants_in_item_master,
                               variant_skus_keep_leading_zeros),
    description="Read NetSuite items and Shopify variants, rebuild the item master, sync Clarus products, run the checks.",
    tags={"flow": "item_master"},
)
item_master_schedule = dg.ScheduleDefinition(
    name="item_master_hourly", job=item_master_job, cron_schedule="20 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

defs = dg.Definitions(
    assets=[netsuite_items, item_master, clarus_products, shopify_variants],
    asset_checks=[item_master_skus_unique, item_master_barcodes_valid, variants_in_item_master, variant_skus_keep_leading_zeros],
    jobs=[item_master_job],
    schedules=[item_master_schedule],
)
