"""The shop's webhook subscriptions we need: what to create and delete so they match what we consume.

The topics are the ones the order and refund flows read (`order_flow.ORDER_TOPICS` and
`refund_flow.REFUND_TOPIC`); every one must be delivered, as JSON, to the receiver's
`/webhooks/shopify`. `plan_sync` is a plain function: subscriptions to create (a topic
with none to our URL), and ours to delete (same URL, a topic we no longer consume, or a
duplicate). Subscriptions to other URLs belong to other apps or people and are left
alone. `clarus-pipelines shopify-webhooks sync` (commands/shopify_webhooks.py) applies the
plan; `--dry-run` prints the plan without changing anything; running it twice changes
nothing the second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clarus_pipelines.domain import order_flow, refund_flow

CONSUMED_TOPICS: tuple[str, ...] = tuple(dict.fromkeys((*order_flow.ORDER_TOPICS, refund_flow.REFUND_TOPIC)))
RECEIVER_PATH = "/webhooks/shopify"


@dataclass
class SyncPlan:
    create: list[str] = field(default_factory=list)  # topics to subscribe our URL to
    delete: list[dict[str, Any]] = field(default_factory=list)  # our subscriptions to remove
    keep: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.create) + len(self.delete)


def receiver_webhook_url(receiver_url: str) -> str:
    """The receiver's Shopify endpoint from its public base URL (or the full endpoint URL)."""
    url = receiver_url.rstrip("/")
    return url if url.endswith(RECEIVER_PATH) else url + RECEIVER_PATH


def plan_sync(existing: Iterable[Mapping[str, Any]], uri: str, topics: Iterable[str] = CONSUMED_TOPICS) -> SyncPlan:
    """What to create and delete so our URL has exactly one subscription per consumed topic."""
    wanted = list(dict.fromkeys(topics))
    plan = SyncPlan()
    covered: set[str] = set()
    for sub in sorted(existing, key=lambda s: str(s["id"])):
        if sub["uri"] != uri:
            continue
        if sub["topic"] in wanted and sub["topic"] not in covered:
            covered.add(sub["topic"])
            plan.keep.append(dict(sub))
        else:
            plan.delete.append(dict(sub))
    plan.create = [t for t in wanted if t not in covered]
    return plan
