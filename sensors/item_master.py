"""Start the item master sync at once on a new install: until Clarus has products, every
order is held as SKU_UNKNOWN, so waiting for the hourly schedule would stall the first hour."""

from __future__ import annotations

import dagster as dg

from clarus_pipelines.assets.item_master import item_master_job
from clarus_pipelines.exception_queue import utcnow
from clarus_pipelines.resources import StateStoreResource

RETRY_MINUTES = 10


@dg.sensor(
    job=item_master_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Run the item master sync when no SKU is bound to a Clarus product yet (retried every 10 min).",
)
def item_master_bootstrap(context: dg.SensorEvaluationContext, state: StateStoreResource):
    with state.store().read() as con:
        bound = con.execute("SELECT count(*) FROM items WHERE clarus_product_id IS NOT NULL").fetchone()[0]
    if bound:
        return dg.SkipReason(f"item master in place: {bound} SKU(s) bound to Clarus products; the hourly schedule keeps it current")
    now = utcnow()
    bucket = now.replace(minute=now.minute - now.minute % RETRY_MINUTES, second=0, microsecond=0)
    return dg.RunRequest(run_key=f"item-master-bootstrap:{bucket:%Y%m%dT%H%M}", tags={"item_master/reason": "no products bound yet"})


defs = dg.Definitions(sensors=[item_master_bootstrap])
