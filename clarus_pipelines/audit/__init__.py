"""Integration audit: one report of the gaps across Clarus, Shopify, NetSuite and our state.

`findings` holds the rules (plain functions over `AuditData`), `reader` gathers the data
(read-only), `render` writes JSON, Markdown and HTML, `history` keeps each audit in state
for the trend, `cli` is `clarus-pipelines audit`. `run_audit` ties them together.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clarus_pipelines.audit.findings import build_report, trend
from clarus_pipelines.audit.history import previous_report, save_report
from clarus_pipelines.audit.reader import gather
from clarus_pipelines.audit.render import to_markdown
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.settings import Settings
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import StateStore


def run_audit(
    store: StateStore,
    policies: Policies,
    *,
    now: datetime,
    since: datetime,
    clarus: ClarusResource | None,
    shopify: ShopifyResource | None,
    netsuite: NetSuiteResource | None,
    settings: Settings | None = None,
    receiver_url: str | None = None,
    origin: str = "cli",
    run_id: str | None = None,
    keep: bool = True,
) -> dict[str, Any]:
    """Gather, apply every rule, add the trend against the previous stored audit, and (with `keep`) store it."""
    data = gather(store, policies, now=now, since=since, clarus=clarus, shopify=shopify, netsuite=netsuite,
                  settings=settings, receiver_url=receiver_url)
    report = build_report(data)
    with store.read() as con:
        previous = previous_report(con, now)
    report["trend"] = trend(report, previous)
    if keep:
        with store.write() as con:
            report["audit_id"] = save_report(con, report, to_markdown(report), origin=origin, run_id=run_id)
    return report
