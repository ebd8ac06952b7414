"""Stock runs: the hourly snapshot, and out-of-schedule refreshes from Clarus stock webhooks.

- `stock_hourly_sensor`: from minute 5 of every hour, `stock_sync` for that hour's
  partition (full snapshot, available to sell, push, read-back), once: cursor
  `{"hour": <the last hour requested>}`, run key `stock-hourly:<hour>`, so a restarted
  daemon never takes an hour twice. The stock partitions are dynamic (`stock_hours`): a
  schedule cannot add partitions, this sensor adds every missing hour from go-live or the
  retention cutoff (whichever is later) to the current one with its request, and the daily
  retention job deletes the hours it prunes (`sensors.maintenance`).
- `stock_webhook_sensor`: Clarus stock webhooks (balance updates after adjustments,
  receipts and picks; stock record updates such as holds), once ingested into
  `landed_events`, trigger `stock_refresh` for the current hour (adding that hour's
  partition if the hourly sensor has not yet): only the affected products are re-read,
  then available to sell and the push (with the last variant read). Cursor:
  `{"seq": <last landed_events.seq seen>}`; the run key names the seq range, so a
  restarted daemon re-derives the same request and Dagster skips it.
- `stock_freshness_sensor`: evaluates the snapshot freshness check when it can be overdue.
"""

import json
import warnings
from datetime import datetime, timezone

import dagster as dg

from clarus_pipelines.assets.stock import STOCK_PARTITIONS, snapshot_freshness_checks, stock_refresh_job, stock_sync_job
from clarus_pipelines.domain.stock import hour_key, wanted_hour_keys
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sensors.cursor import new_work_since, read_cursor

STOCK_TOPICS = ("stock_balance/updated", "stock/updated")
MAX_EVENTS_PER_TICK = 5000
MAX_CODES_PER_REFRESH = 500  # beyond this a full read is cheaper than a long product filter
SNAPSHOT_MINUTE = 5  # the hourly snapshot is taken from this minute of the hour on

AFFECTED_PRODUCTS_SQL = """
    SELECT e.seq,
           coalesce(json_extract_string(e.payload, '$.data.product.code'), json_extract_string(e.payload, '$.product.code'),
                    (SELECT any_value(c.sku) FROM stock_balances_current c
                     WHERE c.clarus_product_id = coalesce(json_extract_string(e.payload, '$.data.product.id'),
                                                          json_extract_string(e.payload, '$.data.product_id')))) AS code
    FROM landed_events e
    WHERE e.seq > ? AND e.source = 'clarus' AND e.topic IN (SELECT unnest(?))
    ORDER BY e.seq
    LIMIT ?
"""


def missing_hours(instance: dg.DagsterInstance, keys: list[str]) -> list[dg.AddDynamicPartitionsRequest]:
    """The request adding those of `keys` that are not stock partitions yet (none when all are)."""
    existing = set(instance.get_dynamic_partitions(STOCK_PARTITIONS.name))
    missing = [key for key in keys if key not in existing]
    return [STOCK_PARTITIONS.build_add_request(missing)] if missing else []


@dg.sensor(
    job=stock_sync_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hourly Clarus stock snapshot (from minute 5), then available to sell and the deltas to Shopify; "
    "adds the hourly stock partitions retention keeps.",
)
def stock_hourly_sensor(context: dg.SensorEvaluationContext, policies: PoliciesResource) -> dg.SensorResult:
    now = datetime.now(timezone.utc)
    stock = policies.load().stock
    wanted = wanted_hour_keys(stock.go_live, stock.snapshot_retention_days, now)
    adds = missing_hours(context.instance, wanted)
    key = hour_key(now)
    if key not in wanted:
        reason = f"before go-live ({stock.go_live:%Y-%m-%d %H}:00 UTC): no stock hour to snapshot"
    elif read_cursor(context.cursor).get("hour") == key:
        reason = f"the snapshot of {key} was requested already"
    elif now.minute < SNAPSHOT_MINUTE:
        reason = f"the snapshot of {key} is due at minute {SNAPSHOT_MINUTE}"
    else:
        request = dg.RunRequest(run_key=f"stock-hourly:{key}", partition_key=key, tags={"stock/trigger": "schedule"})
        return dg.SensorResult(run_requests=[request], dynamic_partitions_requests=adds,
                               cursor=json.dumps({"hour": key}))
    return dg.SensorResult(skip_reason=dg.SkipReason(reason), dynamic_partitions_requests=adds)


def _cursor_seq(raw: str | None) -> int:
    try:
        return int(read_cursor(raw).get("seq", 0))
    except (ValueError, TypeError):
        return 0


@dg.sensor(
    job=stock_refresh_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Clarus stock webhooks (adjustments, holds) -> refresh the affected products' stock "
    "and push what changed, without waiting for the hourly snapshot.",
)
def stock_webhook_sensor(context: dg.SensorEvaluationContext, state: StateStoreResource) -> dg.SensorResult | dg.SkipReason:
    after = _cursor_seq(context.cursor)
    with state.store().read() as con:
        work = new_work_since(con, AFFECTED_PRODUCTS_SQL, after, [list(STOCK_TOPICS)], limit=MAX_EVENTS_PER_TICK)
    if not work:
        return dg.SkipReason(f"no Clarus stock webhook after seq {after}")
    rows, first, last = work.rows, work.first, work.last
    codes = sorted({code for _, code in rows if code})
    unknown = sum(1 for _, code in rows if not code)
    # a webhook naming no product we can identify: refresh everything rather than miss it
    product_codes = [] if unknown or len(codes) > MAX_CODES_PER_REFRESH else codes
    key = hour_key(datetime.now(timezone.utc))
    request = dg.RunRequest(
        run_key=work.run_key("stock-webhooks"),
        partition_key=key,
        run_config={"ops": {"stock_snapshots": {"config": {"product_codes": product_codes}}}},
        tags={"stock/trigger": "webhook", "stock/events": str(len(rows))},
    )
    context.log.info(
        "%d stock webhook(s) (seq %d-%d): refreshing %s", len(rows), first, last,
        f"{len(product_codes)} product(s)" if product_codes else "every product",
    )
    return dg.SensorResult(run_requests=[request], cursor=work.next_cursor("seq"),
                           dynamic_partitions_requests=missing_hours(context.instance, [key]))


with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=FutureWarning)  # superseded, see assets.stock
    stock_freshness_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=snapshot_freshness_checks,
        name="stock_freshness_checks_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )

defs = dg.Definitions(
    sensors=[stock_hourly_sensor, stock_webhook_sensor, stock_freshness_sensor],
)
