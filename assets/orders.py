"""Orders into the warehouse, as Dagster assets: thin wiring over the orders flow in the domain.

- `shopify_orders` (`domain.order_intake.intake_landed_orders`): new landed Shopify order
  events taken in: held with every reason, or released; edits and cancellations of orders
  already sent flagged for the order-changes step.
- `netsuite_sales_orders` + `clarus_goods_outs` (`domain.order_send.send_ready_orders`,
  through `send_step`): a NetSuite sales order, then a Clarus goods out, per released
  order. `send_step` is the only sender: the jobs that re-check held orders and apply order
  changes call it too and record a materialization of both assets, so the assets change
  only in runs that say so.

The rules, the state machine and the port protocols live in `clarus_pipelines.domain`
(`order_flow`, `order_intake`, `order_send`, `order_recheck`, `order_changes`).
"""

import logging
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import dagster as dg

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.domain.order_intake import CONSUMER, IntakeReport, intake_batch, intake_landed_orders, revalidate
from clarus_pipelines.domain.order_send import SEND_CHUNK, SendReport, record_sent_lines, refresh_carriers, send_ready_orders
from clarus_pipelines.resources import NetSuiteCustomerConfig, PoliciesResource, StateStoreResource

__all__ = [  # the flow's functions, for callers that knew them here
    "CONSUMER", "SEND_CHUNK", "IntakeReport", "SendReport", "intake_batch", "intake_landed_orders", "record_sent_lines",
    "refresh_carriers", "revalidate", "send_ready_orders", "send_step", "OrdersConfig", "orders_job",
]

log = logging.getLogger(__name__)

SALES_ORDERS = dg.AssetKey("netsuite_sales_orders")
GOODS_OUTS = dg.AssetKey("clarus_goods_outs")


class OrdersConfig(NetSuiteCustomerConfig):
    """Run config of the jobs that send orders (the NetSuite customer web orders go to)."""


def send_step(context: dg.OpExecutionContext, config: OrdersConfig, state: StateStoreResource, policies: PoliciesResource,
              netsuite: NetSuiteResource, clarus: ClarusResource) -> dict[dg.AssetKey, dict[str, Any]]:
    """Send every released order (the one sender); returns each asset's metadata."""
    store = state.store()
    refresh_carriers(store, clarus)
    policy = policies.load()
    report = send_ready_orders(store, policy, netsuite=netsuite, clarus=clarus, customer_id=config.customer_id(policy))
    context.log.info("orders sent: %s", report)
    meta = asdict(report)
    return {
        SALES_ORDERS: {k: v for k, v in meta.items() if k.startswith("erp") or k in ("considered", "held_on_recheck")},
        GOODS_OUTS: {k: v for k, v in meta.items() if k.startswith("wms") or k == "skipped_systems"},
    }


def materializations(metadata: dict[dg.AssetKey, dict[str, Any]], **extra: Any) -> Iterator[dg.AssetMaterialization]:
    """The send step's outcome as materializations, for an op job that changed the assets."""
    for key, values in metadata.items():
        yield dg.AssetMaterialization(asset_key=key, metadata={**values, **extra})


@dg.asset(
    group_name="orders",
    deps=["landed_events", "item_master"],
    kinds={"duckdb", "polars"},
    description="Shopify orders as received, validated and mapped: held with every reason, or released.",
)
def shopify_orders(context: dg.AssetExecutionContext, state: StateStoreResource, policies: PoliciesResource) -> dg.MaterializeResult:
    store = state.store()
    report = intake_landed_orders(store, policies.load())
    context.log.info("orders intake: %s", report)
    with store.read() as con:
        rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
    return dg.MaterializeResult(metadata={**asdict(report), "dagster/row_count": rows})


@dg.multi_asset(
    group_name="orders",
    specs=[
        dg.AssetSpec("netsuite_sales_orders", deps=[shopify_orders], kinds={"netsuite"},
                     description="A NetSuite sales order per released order (externalId = Shopify order id)."),
        dg.AssetSpec("clarus_goods_outs", deps=["netsuite_sales_orders", "clarus_products"], kinds={"clarus"},
                     description="A Clarus goods out per released order (reference = Shopify order name)."),
    ],
)
def orders_to_erp_and_wms(
    context: dg.AssetExecutionContext, config: OrdersConfig, state: StateStoreResource, policies: PoliciesResource,
    netsuite: NetSuiteResource, clarus: ClarusResource,
):
    for key, metadata in send_step(context, config, state, policies, netsuite, clarus).items():
        yield dg.MaterializeResult(asset_key=key, metadata=metadata)


orders_job = dg.define_asset_job(
    "orders_into_warehouse",
    # no checks: the orders' data-quality suites run in the `data_quality` job, off the critical path
    selection=dg.AssetSelection.assets(shopify_orders, "netsuite_sales_orders", "clarus_goods_outs").without_checks(),
    description="Take in landed Shopify orders, hold or release them, and send the released ones to NetSuite and Clarus.",
    tags={"flow": "orders"},  # one orders run at a time (the instance's tag concurrency limit)
)

defs = dg.Definitions(assets=[shopify_orders, orders_to_erp_and_wms], jobs=[orders_job])
