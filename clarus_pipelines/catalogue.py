"""The exception catalogue: the one vocabulary every flow, the dashboard and the runbook share.

Each entry says who owns the problem, how bad it is, what it means to the business and
how to resolve it. `docs/runbook.md` is generated from this module (`clarus-pipelines
runbook`), and a test fails when the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from clarus_pipelines.policies import Owner, Severity

SEVERITY_RANK: dict[str, int] = {"low": 1, "medium": 2, "high": 3, "critical": 4}

# The systems we connect, as webhook sources and as exception entities.
SOURCES = ("shopify", "clarus", "netsuite")
SOURCE_NAMES = {"shopify": "Shopify", "clarus": "Clarus", "netsuite": "NetSuite"}  # as people write them


@dataclass(frozen=True)
class ExceptionType:
    code: str
    owner: Owner
    severity: Severity
    title: str
    meaning: str
    resolution: str
    escalation: str
    sla_minutes: int  # how long it may stay open before it counts as an SLA breach
    entity: str  # what the entity id names: order, sku, shipment, refund, webhook, connector...


_TYPES = [
    ExceptionType(
        "ORDER_INCOMPLETE", "ops", "medium", "Order held: incomplete data",
        "A paid order lacks data the warehouse needs to ship it (shipping address, name, "
        "first address line, city, a valid postcode or an ISO country code, or a positive "
        "quantity). It is held, not sent, so Clarus never rejects it.",
        "Fix the order in Shopify (edit the shipping address) or contact the customer. The "
        "hold is re-checked against Shopify on a schedule and released automatically once "
        "complete.",
        "Escalate to CX when still held after the hold SLA: the customer may need contacting.",
        240, "order"),
    ExceptionType(
        "SHIP_METHOD_UNMAPPED", "ops", "medium", "Order held: shipping method not mapped",
        "The order's shipping line (title or code) matches no row of the ship-method table, "
        "so Clarus cannot be told which carrier and service to use.",
        "Add the shipping line's code or title to `ship_methods` in the policies file and "
        "run `clarus-pipelines check-config`. Held orders release on the next re-check.",
        "Escalate to the integration engineer if the mapping exists but still fails.",
        120, "order"),
    ExceptionType(
        "SKU_UNKNOWN", "merchandising", "high", "Order held: SKU not in Clarus",
        "An order line's SKU does not map to a Clarus product, so the order cannot be "
        "picked. Usually a product created in Shopify without an item master record.",
        "Create the item in NetSuite (the item master); the item master sync creates the "
        "Clarus product and the held order is released on its next re-check.",
        "Escalate to ops if the order is near its dispatch cut-off.",
        120, "order"),
    ExceptionType(
        "SKU_NOT_IN_MASTER", "merchandising", "medium", "Shopify variant SKU not in the item master",
        "A sellable Shopify variant has a SKU that NetSuite's item master does not know. "
        "Orders for it will be held and its stock never syncs.",
        "Correct the variant's SKU in Shopify or create the item in NetSuite.",
        "Escalate to ops if the variant is selling.",
        1440, "sku"),
    ExceptionType(
        "SKU_LEADING_ZEROS_LOST", "merchandising", "high", "SKU lost its leading zeros",
        "A SKU matches the item master only once its leading zeros are restored (for "
        "example '123' vs '000123'): a spreadsheet or import turned it into a number.",
        "Re-enter the SKU as text with its zeros in the system named in the details; never "
        "round-trip SKUs through a spreadsheet without a text column format.",
        "Escalate to the integration engineer if the source is an automated feed.",
        480, "sku"),
    ExceptionType(
        "BARCODE_INVALID", "merchandising", "medium", "Barcode check digit wrong",
        "An item's barcode fails its GTIN-8/12/13/14 check digit, so warehouse scanners "
        "will reject it or match the wrong item.",
        "Correct the barcode on the NetSuite item; the next item master sync updates Clarus.",
        "Escalate to ops if goods for the item are arriving.",
        1440, "sku"),
    ExceptionType(
        "WMS_REJECTED", "integration", "high", "Clarus rejected a request",
        "Clarus answered 422 to a create or update: the details hold Clarus's error code "
        "and message. The order or product did not reach the warehouse.",
        "Read Clarus's message, fix the data or the mapping, then replay the event "
        "(`clarus-pipelines replay`).",
        "Escalate to ops when an order is affected and the dispatch cut-off is near.",
        60, "order"),
    ExceptionType(
        "ERP_REJECTED", "integration", "high", "NetSuite rejected an order",
        "NetSuite refused to create the order's sales order (an invalid field, an inactive "
        "item, a closed period...): the details hold NetSuite's error code and message. "
        "The order waits; it reaches neither NetSuite nor the warehouse.",
        "Read NetSuite's message and fix the record, the item or the mapping. The order is "
        "tried again on every orders run and this clears itself once NetSuite accepts it.",
        "Escalate to ops when the order's dispatch cut-off is near.",
        60, "order"),
    ExceptionType(
        "ORDER_NOT_ACKNOWLEDGED", "integration", "high", "Order sent but not acknowledged",
        "An order was sent to Clarus but no Clarus goods out id came back within the "
        "acknowledgement time. It may or may not be in the warehouse.",
        "Check Clarus for the reference; the next reconciliation binds it if it exists, "
        "otherwise replay the order. Never re-key it by hand (that makes a duplicate).",
        "Escalate to ops if the cut-off is near.",
        30, "order"),
    ExceptionType(
        "NOT_DISPATCHED_BY_CUTOFF", "ops", "high", "Not dispatched by the cut-off",
        "Clarus accepted the order but it was not dispatched by the day's cut-off: it "
        "failed to manifest and will miss its promised delivery.",
        "Ask the warehouse why (stock, pick exception, carrier manifest); expedite or tell CX.",
        "Escalate to CX to warn the customer.",
        60, "order"),
    ExceptionType(
        "DISPATCH_AWAITING_ERP", "finance", "medium", "Dispatch waiting for NetSuite",
        "Clarus dispatched the order but NetSuite has not confirmed the sales order, so "
        "the item fulfilment and the customer's shipping notice are held back on purpose.",
        "Check the sales order in NetSuite (missing, pending approval, or failed); once it "
        "is committed the dispatch continues by itself.",
        "Escalate to the integration engineer if NetSuite has the order committed.",
        60, "order"),
    ExceptionType(
        "TRACKING_MISSING", "cx", "medium", "Dispatched without tracking",
        "The warehouse dispatched a shipment with no tracking number: the customer will get "
        "no tracking link.",
        "Get the tracking number from the warehouse or carrier and add it in Clarus.",
        "Escalate to ops if it repeats for one carrier.",
        120, "shipment"),
    ExceptionType(
        "TRACKING_INVALID", "cx", "medium", "Tracking number malformed or reused",
        "The tracking number does not fit its carrier's format, or the same number is on "
        "two different orders: the customer's link will not work or shows someone else's parcel.",
        "Correct the tracking number in Clarus; check the label printed for the parcel.",
        "Escalate to ops if a carrier integration is printing bad numbers.",
        120, "shipment"),
    ExceptionType(
        "TRACKING_NOT_POSTED", "cx", "high", "Tracking not posted to Shopify",
        "The shipment is dispatched and fulfilled in NetSuite but Shopify has not confirmed "
        "the fulfilment with tracking: the customer sees the order as unshipped.",
        "Check the Shopify fulfilment order for holds or errors; the step retries by itself.",
        "Escalate to the integration engineer when Shopify keeps refusing the fulfilment.",
        60, "shipment"),
    ExceptionType(
        "OVER_DISPATCHED", "ops", "high", "Dispatched more than ordered",
        "The warehouse dispatched more units of a SKU than the order has: the customer got "
        "goods nobody paid for, stock is short, and NetSuite refuses to fulfil the extra units.",
        "Check the pick with the warehouse; recover the extra units or invoice them, then correct "
        "the goods out in Clarus. The details list each SKU shipped against ordered.",
        "Escalate to finance when the extra goods are not coming back.",
        240, "order"),
    ExceptionType(
        "ORDER_EDIT_NEEDS_REVIEW", "ops", "high", "Order edited after the warehouse accepted it",
        "The customer's order changed in Shopify after Clarus started work on it, so it "
        "cannot be amended automatically. The details show the difference.",
        "Decide with the warehouse: amend by hand, cancel and re-create, or ship as is and "
        "refund the difference.",
        "Escalate to CX to tell the customer what will arrive.",
        60, "order"),
    ExceptionType(
        "CANCEL_AFTER_DISPATCH", "cx", "high", "Cancelled after dispatch",
        "The order was cancelled in Shopify after Clarus dispatched it: goods are on their "
        "way to a customer who has cancelled (and may have been refunded).",
        "CX contacts the customer to return the goods; finance checks the refund.",
        "Escalate to finance for the refund decision.",
        120, "order"),
    ExceptionType(
        "ORPHAN_ORDER", "ops", "high", "Order in one system but not the other",
        "An order is in Shopify but not in Clarus after the expected time, or a Clarus goods "
        "out has no Shopify order: it will never ship, or ship without being sold.",
        "Find why it was not sent (check its journey); replay it, or cancel the stray goods out.",
        "Escalate to the integration engineer when several orphans appear at once.",
        120, "order"),
    ExceptionType(
        "STOCK_MISMATCH", "merchandising", "medium", "Channel stock differs from the warehouse",
        "Shopify shows a quantity different from what we last set, or from Clarus's available "
        "stock beyond the tolerance: the shop may oversell or hide sellable stock.",
        "Check for manual stock edits in Shopify; the next stock push corrects it.",
        "Escalate to the integration engineer when it repeats after pushes.",
        240, "sku"),
    ExceptionType(
        "STRANDED_STOCK", "merchandising", "medium", "Stock in the warehouse that cannot be sold",
        "Clarus holds stock of a SKU that no Shopify variant maps to: it is physically there "
        "but nobody can buy it.",
        "Map the SKU to a Shopify variant (create or correct the variant's SKU).",
        "Escalate to finance when the stranded value is material.",
        2880, "sku"),
    ExceptionType(
        "RETURN_NOT_RECEIVED", "finance", "medium", "Return not received",
        "A refund was classified as a return but no goods-in receipt arrived in Clarus "
        "within the expected days: money went back but goods did not.",
        "Chase the customer or carrier; decide whether to keep the refund as goodwill.",
        "Escalate to CX to contact the customer.",
        1440, "refund"),
    ExceptionType(
        "FULFILLED_OUTSIDE_WMS", "ops", "high", "Order fulfilled outside the warehouse",
        "A fulfilment was created in Shopify that the warehouse did not make (by hand in "
        "Shopify admin or by another app). Clarus decides fulfilment: Shopify now says the goods "
        "went while the Clarus goods out may still ship them (sent twice), and stock in Shopify "
        "and the warehouse disagree.",
        "Read the policy outcome in the details. `cancel`: the goods out was cancelled in Clarus "
        "(if it was already dispatched, the goods went twice: recover one parcel). `hold`: decide "
        "now, before the warehouse picks it: cancel the goods out in Clarus, or cancel the Shopify "
        "fulfilment so the warehouse's dispatch stands. Then resolve the exception.",
        "Escalate to the integration engineer if an app keeps fulfilling orders: remove its "
        "fulfilment permission.",
        60, "order"),
    ExceptionType(
        "RETURN_NEEDS_REVIEW", "ops", "high", "Return of an item the warehouse cannot name",
        "Shopify restocks a refunded line as a return (the goods are coming back) but the line "
        "has no SKU, so Clarus cannot be told what to expect and NetSuite cannot receive it. "
        "It is never treated as money only: the customer's parcel will arrive.",
        "Identify the item from the line title in Shopify, create the expected goods-in in Clarus "
        "and the return in NetSuite by hand, then resolve the exception. Give the product a SKU "
        "so the next return flows on its own.",
        "Escalate to finance if the parcel arrived and nothing was booked within the SLA.",
        480, "refund"),
    ExceptionType(
        "REFUND_UNCLASSIFIED", "finance", "medium", "Refund could not be classified",
        "A Shopify refund fits none, or more than one, of return, cancellation, goodwill and "
        "shipping-only, so neither stock nor finance postings were made.",
        "Read what was seen (details), post it by hand, and add a reason or tag mapping.",
        "Escalate to the integration engineer if a common refund shape is not recognised.",
        1440, "refund"),
    ExceptionType(
        "RECONCILIATION_MISMATCH", "finance", "medium", "Shipped value does not reconcile",
        "The value shipped (quantities x prices, shipping, discounts) differs from the order "
        "total, or refunds differ from returns received; or (entity `payout:<id>`) a Shopify "
        "Payments payout does not match our records: a charge, refund or fee differs, a "
        "transaction is missing on our side or at Shopify, or the payout's net is not what our "
        "orders and refunds add up to.",
        "Open the day's reconciliation report (rows of section `payout` and "
        "`payout_transaction` name the payout and the transaction) and correct the NetSuite "
        "records; for a payout, compare it with the Shopify admin (Finances > Payouts) and book "
        "fees or adjustments by hand. The exception clears when the payout reconciles on a later run.",
        "Escalate to the integration engineer when the mismatch is systematic (e.g. every fee "
        "differs: the fee schedule in the `shopify_payouts` config no longer matches the shop's plan).",
        1440, "order"),
    ExceptionType(
        "WEBHOOK_REJECTED", "integration", "high", "Webhooks rejected at the door",
        "Webhooks keep arriving with a bad signature or token: either a secret was rotated "
        "on one side only or someone is probing the endpoint. Real events may be missed.",
        "Compare the webhook secret/token in the sending system with ours; rotate if leaked. "
        "The reconciliation read lands what the webhooks missed.",
        "Escalate to security if the source is unknown.",
        30, "webhook"),
    # --- intake that never stalls (issue 12) ---
    ExceptionType(
        "LANDING_SET_ASIDE", "integration", "high", "Webhook set aside: cannot be stored",
        "A webhook that was acknowledged and landed cannot be stored in the state (its body "
        "is outside the body contract, e.g. a byte-order mark, a lone surrogate or an "
        "unreadable file). It was set aside on its own; the rest of its batch went on, but "
        "this one event has not reached any flow.",
        "Read the reason (`clarus-pipelines intake-status --json`), fix the sender (usually "
        "the NetSuite script or a Clarus automation), then have the event re-sent or "
        "reconciled; `clarus-pipelines replay` re-submits the landing once it is correct.",
        "Escalate to the sending system's owner if the same reason keeps coming back.",
        60, "webhook"),
    ExceptionType(
        "CONNECTOR_FAILING", "integration", "critical", "A connection is failing",
        "Calls to one of Clarus, Shopify, NetSuite or an alert channel keep failing after "
        "retries, or the system no longer answers the scheduled live probe (a cheap authenticated "
        "read every 5 minutes, even when no order is moving): work for that system is queued, not "
        "lost, but nothing reaches it.",
        "Check the system's status and our credentials (the health page shows each system's last "
        "successful authenticated read); work resumes by itself once calls succeed, and the next "
        "probe that succeeds clears it.",
        "Escalate to the vendor's support when their status page shows no incident.",
        15, "connector"),
    ExceptionType(
        "RUN_FAILED", "integration", "high", "A pipeline run failed",
        "A Dagster run of one of the flows ended in failure (after its retries): the work it "
        "carried waits for the next run. Nothing is lost (landings, intents and bindings are "
        "durable), but a flow that keeps failing stops orders, dispatches or stock moving.",
        "Open the run named in the details in the Dagster UI and read the failed step's error. "
        "Fix the cause (credentials, a policies key, a bad record the step could not set aside); "
        "the exception clears itself at the job's next successful run.",
        "Escalate to the integration engineer's lead when the same job fails for longer than the SLA.",
        30, "job"),
]

CATALOGUE: dict[str, ExceptionType] = {t.code: t for t in _TYPES}

# Who answers for each flow's assets (their Dagster owners): the owner of the exception that
# flow raises most. A group not named here belongs to the integration engineer.
FLOW_OWNER_CODES: dict[str, str] = {
    "intake": "WEBHOOK_REJECTED",
    "item_master": "SKU_NOT_IN_MASTER",
    "orders": "ORDER_INCOMPLETE",
    "dispatch": "NOT_DISPATCHED_BY_CUTOFF",
    "stock": "STOCK_MISMATCH",
    "refunds": "REFUND_UNCLASSIFIED",
    "monitoring": "CONNECTOR_FAILING",
}


def flow_owner(group: str | None) -> Owner:
    """The owner role of a flow (asset group)."""
    return CATALOGUE[FLOW_OWNER_CODES.get(group or "", "RUN_FAILED")].owner


def dagster_owner(role: Owner) -> str:
    """An owner role as Dagster names a team owner."""
    return f"team:{role}"


def get(code: str) -> ExceptionType:
    try:
        return CATALOGUE[code]
    except KeyError:
        raise KeyError(f"unknown exception code {code!r}; add it to clarus_pipelines/catalogue.py") from None
