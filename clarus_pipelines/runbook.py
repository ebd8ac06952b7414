"""The runbook: a plain-language operational guide generated from the exception catalogue.

`render_runbook()` turns `clarus_pipelines.catalogue` into Markdown: how to work the
exception queue, who owns what, then one entry per exception type grouped by owner.
`clarus-pipelines runbook` (commands/runbook.py) writes it to docs/runbook.md; `--check` fails when the file
no longer matches the catalogue, so the two cannot drift apart. The dashboard shows the
entry of the selected exception type with `render_type`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from clarus_pipelines.catalogue import CATALOGUE, SEVERITY_RANK, ExceptionType

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "runbook.md"

# Order in which owners appear, with the people behind each owner key.
OWNERS: dict[str, tuple[str, str]] = {
    "ops": (
        "Operations",
        "The operations lead and the warehouse liaison: held orders, orders that are not moving, "
        "orders changed or lost between systems.",
    ),
    "cx": (
        "Customer service",
        "Tracking problems and cancellations the customer will notice, ideally before they do.",
    ),
    "finance": (
        "Finance",
        "Dispatches waiting for the ERP, refunds, returns and the reconciliation of shipped value.",
    ),
    "merchandising": (
        "Merchandising",
        "The item master: unknown SKUs, damaged SKUs and barcodes, stock that cannot be sold "
        "or does not match the shop.",
    ),
    "integration": (
        "Integration engineer",
        "The connections themselves: rejected requests, unanswered orders, failing systems "
        "and webhooks.",
    ),
}

SEVERITY_MEANING: dict[str, str] = {
    "critical": "Work has stopped for a whole system or flow. Act now, whatever the time.",
    "high": "Customers or money are affected today. Act within the SLA, before the next dispatch cut-off.",
    "medium": "Something will go wrong if left alone. Act within the SLA.",
    "low": "Housekeeping. Act when convenient.",
}

ENTITY_NAMES: dict[str, str] = {
    "order": "a Shopify order",
    "sku": "a SKU",
    "shipment": "a Clarus shipment",
    "refund": "a Shopify refund",
    "webhook": "a webhook source (shopify, clarus or netsuite)",
    "connector": "a connection (clarus, shopify, netsuite or an alert channel)",
}

GENERATED_NOTICE = (
    "<!-- Generated from clarus_pipelines/catalogue.py by `clarus-pipelines runbook`. "
    "Do not edit by hand: change the catalogue and run `clarus-pipelines runbook` again. -->"
)

INTRO = """\
This guide says what to do about every problem the integration between Shopify, NetSuite
and Clarus WMS can raise. Each problem is an **exception** in the exception queue, with a
type (the code in capitals), an owner, a severity, an age and an entry in this runbook.

## How to use the exception queue

1. **Look at your team's queue.** Open the dashboard's *Exception queue* page and filter on
   your owner (ops, cx, finance, merchandising or integration). Work breached exceptions
   first (older than their SLA), then by severity, then oldest first. Your owner's alert
   channel is told about new exceptions and about SLA breaches, so you do not have to
   watch the page all day.
2. **Acknowledge** an exception when you start on it: enter your name and, if useful, a
   note. Acknowledging tells colleagues someone has it in hand; the SLA clock keeps running.
3. **Fix the cause** as this runbook says, in the system it names. Most exceptions then
   **resolve themselves**: each flow re-checks its own exceptions and closes those whose
   condition has cleared, recording the resolution as made by `auto`.
4. **Resolve by hand** only what cannot clear itself (a decision, a one-off correction
   outside the systems): enter your name and a note that says what you did. If the
   problem comes back, the same exception reopens with its history; it is never
   duplicated, because an exception is identified by its type and the entity it is about
   (an order, a SKU, a shipment, a refund or a connection).
5. **Escalate** when the entry's *When to escalate* applies, or when the exception is still
   open after its SLA and you cannot fix it yourself.

The *Order journey* page shows everything that happened to one order across Shopify,
NetSuite and Clarus (search by order name, order id, Clarus id or tracking number): start
there for any order-level exception. Integration engineers find runs, retries and
replays in the Dagster UI.

**SLA** is how long an exception may stay open, counted from when it was first seen.
The owner, severity and SLA below are the defaults of the catalogue; a deployment can
override them per type in the policies file (`exception_overrides`), and the dashboard
shows the values in force.
"""


def format_minutes(minutes: int) -> str:
    """A duration in words people read at a glance: 15 min, 4 h, 1 day, 2 days."""
    if minutes < 60:
        return f"{minutes} min"
    if minutes % 1440 == 0:
        days = minutes // 1440
        return f"{days} day" if days == 1 else f"{days} days"
    if minutes % 60 == 0:
        return f"{minutes // 60} h"
    return f"{minutes // 60} h {minutes % 60} min"


def anchor(code: str) -> str:
    """The GitHub-style heading anchor of an exception type's section."""
    return code.lower()


def _by_owner(catalogue: Mapping[str, ExceptionType]) -> dict[str, list[ExceptionType]]:
    owners = list(OWNERS) + sorted({t.owner for t in catalogue.values()} - set(OWNERS))
    position = {code: i for i, code in enumerate(catalogue)}
    grouped: dict[str, list[ExceptionType]] = {}
    for owner in owners:
        kinds = [t for t in catalogue.values() if t.owner == owner]
        if kinds:
            grouped[owner] = sorted(kinds, key=lambda t: (-SEVERITY_RANK[t.severity], position[t.code]))
    return grouped


def render_type(kind: ExceptionType, heading_level: int = 3) -> str:
    """One exception type's runbook entry as Markdown."""
    owner_title = OWNERS.get(kind.owner, (kind.owner, ""))[0]
    entity = ENTITY_NAMES.get(kind.entity, kind.entity)
    return "\n".join(
        [
            f"{'#' * heading_level} {kind.code}",
            "",
            f"**{kind.title}**",
            "",
            "| owner | severity | SLA | about |",
            "| --- | --- | --- | --- |",
            f"| {owner_title} (`{kind.owner}`) | {kind.severity} | {format_minutes(kind.sla_minutes)} | {entity} |",
            "",
            f"**What it means for the business.** {kind.meaning}",
            "",
            f"**How to resolve.** {kind.resolution}",
            "",
            f"**When to escalate.** {kind.escalation} Also escalate when it is still open after "
            f"its SLA of {format_minutes(kind.sla_minutes)} and you cannot fix it yourself.",
            "",
        ]
    )


def render_runbook(catalogue: Mapping[str, ExceptionType] = CATALOGUE) -> str:
    """The whole runbook as Markdown; deterministic, so it can be compared with the file."""
    grouped = _by_owner(catalogue)
    out = ["# Runbook: exceptions and what to do about them", "", GENERATED_NOTICE, "", INTRO]

    out += ["## Who owns what", "", "| owner | looks after | exception types |", "| --- | --- | --- |"]
    for owner, kinds in grouped.items():
        title, remit = OWNERS.get(owner, (owner, ""))
        codes = ", ".join(f"[{t.code}](#{anchor(t.code)})" for t in kinds)
        out.append(f"| {title} (`{owner}`) | {remit} | {codes} |")
    out.append("")

    out += ["## Severity", "", "| severity | what it asks of you |", "| --- | --- |"]
    out += [f"| {severity} | {text} |" for severity, text in SEVERITY_MEANING.items()]
    out.append("")

    out += ["## All exception types at a glance", "", "| type | owner | severity | SLA | in short |", "| --- | --- | --- | --- | --- |"]
    for kinds in grouped.values():
        for t in kinds:
            out.append(f"| [{t.code}](#{anchor(t.code)}) | {t.owner} | {t.severity} | {format_minutes(t.sla_minutes)} | {t.title} |")
    out.append("")

    for owner, kinds in grouped.items():
        title, remit = OWNERS.get(owner, (owner, ""))
        out += [f"## {title}", "", remit, ""] if remit else [f"## {title}", ""]
        out += [render_type(t) for t in kinds]
    return "\n".join(out).rstrip("\n") + "\n"


def differences(path: Path, catalogue: Mapping[str, ExceptionType] = CATALOGUE) -> list[str]:
    """Unified diff lines between the runbook file and what the catalogue generates; empty when equal."""
    expected = render_runbook(catalogue)
    actual = path.read_text(encoding="utf-8") if path.exists() else ""
    if actual == expected:
        return []
    return list(
        difflib.unified_diff(
            actual.splitlines(), expected.splitlines(), fromfile=f"{path} (on disk)",
            tofile=f"{path} (from catalogue)", lineterm="",
        )
    ) or [f"{path}: differs only in line endings or trailing whitespace"]


def write_runbook(path: Path = DEFAULT_OUTPUT, catalogue: Mapping[str, ExceptionType] = CATALOGUE) -> bool:
    """Write the runbook; True when the file changed."""
    text = render_runbook(catalogue)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True
