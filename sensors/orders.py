"""When the orders flow runs after intake: held orders re-checked, edits and cancellations applied.

Thin wiring: the steps are in the domain (`order_recheck.recheck_held_orders`,
`order_changes.apply_order_changes`, `order_send.send_ready_orders` through
`assets.orders.send_step`); the jobs run a step, then the one send step, and record a
materialization of `clarus_goods_outs` and `netsuite_sales_orders`, the assets they change.
The sensors only decide whether to run, through `sensors.cursor` ("new work since this cursor").

- `held_orders_recheck_sensor`: every `timings.recheck_held_minutes`, and at once when the
  item master changes (a SKU_UNKNOWN hold may now resolve).
- `order_changes_sensor`: edits or cancellations of sent orders wait.
- `orders_sensor`: new Shopify order events landed, or released orders wait to be sent.
"""

import json
from dataclasses import asdict
from datetime import datetime, timedelta

import dagster as dg

from clarus_pipelines.assets.orders import GOODS_OUTS, SALES_ORDERS, OrdersConfig, materializations, orders_job, send_step
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain import order_flow as flow
from clarus_pipelines.domain.order_changes import ChangesReport, apply_order_changes
from clarus_pipelines.domain.order_intake import CONSUMER
from clarus_pipelines.domain.order_recheck import RecheckReport, recheck_held_orders
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sensors.cursor import new_events_since, new_work_since, read_cursor
from clarus_pipelines.sensors.event_path import event_path_active
from clarus_pipelines.settings import get_policies

__all__ = ["ChangesReport", "RecheckReport", "apply_order_changes", "recheck_held_orders"]  # callers that knew them here


@dg.op(description="Re-read held orders from Shopify, re-validate them, release the complete ones, raise the old ones.")
def recheck_held_orders_op(context: dg.OpExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                           shopify: ShopifyResource) -> dg.Nothing:
    report = recheck_held_orders(state.store(), policies.load(), shopify=shopify)
    context.log.info("held re-check: %s", report)
    context.add_output_metadata(asdict(report))


@dg.op(description="Apply Shopify edits and cancellations of orders already in NetSuite or Clarus.",
       out=dg.Out(dg.Nothing))
def apply_order_changes_op(context: dg.OpExecutionContext, state: StateStoreResource, policies: PoliciesResource,
                           clarus: ClarusResource, netsuite: NetSuiteResource) -> None:
    report = apply_order_changes(state.store(), policies.load(), clarus=clarus, netsuite=netsuite)
    context.log.info("order changes: %s", report)
    context.add_output_metadata(asdict(report))
    if report.pending - report.failed - report.no_change > 0:  # cancelled, amended, replaced or raised for review
        changes = {f"changes_{k}": v for k, v in asdict(report).items()}
        for event in materializations({GOODS_OUTS: {}, SALES_ORDERS: {}}, **changes):
            context.log_event(event)


@dg.op(ins={"after": dg.In(dg.Nothing)}, description="Send released and replacement orders to NetSuite and Clarus "
       "(the send step of the clarus_goods_outs asset); records their materializations.")
def send_ready_orders_op(context: dg.OpExecutionContext, config: OrdersConfig, state: StateStoreResource,
                         policies: PoliciesResource, clarus: ClarusResource, netsuite: NetSuiteResource) -> None:
    for event in materializations(send_step(context, config, state, policies, netsuite, clarus), via=context.job_name):
        context.log_event(event)


@dg.job(description="Re-check held orders against Shopify; send the ones now complete.", tags={"flow": "orders"})
def held_orders_recheck_job():
    send_ready_orders_op(after=recheck_held_orders_op())


@dg.job(description="Apply order edits and cancellations to Clarus and NetSuite; send replacements.", tags={"flow": "orders"})
def order_changes_job():
    send_ready_orders_op(after=apply_order_changes_op())


def _recheck_interval_minutes() -> int:
    try:
        return get_policies().timings.recheck_held_minutes
    except Exception:  # no policies file where the code location loads: the default
        return 15


def _item_master_fingerprint(con) -> str:
    count, latest = con.execute(
        "SELECT count(clarus_product_id), max(updated_at) FROM items WHERE clarus_product_id IS NOT NULL"
    ).fetchall()[0]
    return f"{count}:{latest:%Y%m%dT%H%M%S.%f}" if latest else "empty"


@dg.sensor(job=held_orders_recheck_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Re-check held orders every recheck_held_minutes, and at once when the item master "
           "changes (a SKU_UNKNOWN hold may now resolve).")
def held_orders_recheck_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource):
    cursor = read_cursor(context.cursor)
    with state.store().read() as con:
        held, oldest = con.execute("SELECT count(*), min(held_since) FROM orders WHERE status = 'HELD'").fetchall()[0]
        master = _item_master_fingerprint(con)
    if not held:
        return dg.SkipReason("no held orders")
    now = utcnow()
    last = datetime.fromisoformat(cursor["last_run"]) if cursor.get("last_run") else None
    due = last is None or now - last >= timedelta(minutes=_recheck_interval_minutes())
    master_changed = cursor.get("master") not in (None, master)
    if not (due or master_changed):
        return dg.SkipReason(
            f"{held} order(s) held; next re-check at {last + timedelta(minutes=_recheck_interval_minutes()):%H:%M} UTC "
            "or when the item master changes"
        )
    reason = "item master changed" if master_changed and not due else "schedule"
    return dg.SensorResult(
        run_requests=[dg.RunRequest(
            run_key=f"recheck:{now:%Y%m%dT%H%M}:{master}",
            tags={"orders/held": str(held), "orders/oldest_hold": f"{oldest:%Y-%m-%dT%H:%M}", "orders/recheck": reason},
        )],
        cursor=json.dumps({"last_run": now.isoformat(), "master": master}),
    )


@dg.sensor(job=order_changes_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Start the order-changes job when edits or cancellations of sent orders wait.")
def order_changes_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource):
    with state.store().read() as con:
        waiting = new_work_since(
            con, "SELECT updated_at, order_id FROM orders WHERE updated_at > ? AND change_pending IS NOT NULL"
            " ORDER BY updated_at, order_id LIMIT ?", datetime.min, limit=10_000)
    if not waiting:
        return dg.SkipReason("no order edits or cancellations waiting")
    # One run per new change; a change a failed run left behind is retried every few minutes.
    bucket = utcnow().replace(second=0, microsecond=0)
    bucket -= timedelta(minutes=bucket.minute % 5)
    return dg.RunRequest(run_key=f"changes:{waiting.last:%Y%m%dT%H%M%S.%f}:{waiting.count}:{bucket:%H%M}")


@dg.sensor(job=orders_job, minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Start the orders job when new Shopify order events landed or released orders wait to be sent.")
def orders_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource):
    if event_path_active(context):  # the running event_path drain takes the orders in (sensors/event_path.py)
        return dg.SkipReason("an event_path run is queued or running; it takes new orders in")
    with state.store().read() as con:
        events = new_events_since(con, {"shopify": flow.ORDER_TOPICS}, consumer=CONSUMER)
        sendable = len(flow.due_for_sending(con))
    if not events and not sendable:
        return dg.SkipReason("no new order events and nothing waiting to be sent")
    bucket = utcnow().replace(second=0, microsecond=0)
    bucket -= timedelta(minutes=bucket.minute % 5)
    key = f"orders:{events.first}:{bucket:%H%M}" if events else f"orders:send:{sendable}:{bucket:%Y%m%dT%H%M}"
    return dg.RunRequest(run_key=key)


defs = dg.Definitions(
    jobs=[held_orders_recheck_job, order_changes_job],
    sensors=[held_orders_recheck_sensor, order_changes_sensor, orders_sensor],
)
