"""The audit report as JSON, Markdown (Dagster UI metadata, the dashboard) or a standalone HTML page."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, select_autoescape

FORMATS = ("json", "md", "html")


def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    """Text safe inside a Markdown code span (data from the systems may hold backticks)."""
    return str(value).replace("`", "'").replace("\n", " ")


def _minutes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 60:.1f} h" if value >= 90 else f"{value:.0f} min"


def _when(iso: str | None) -> str:
    """An ISO timestamp to the second, for people."""
    return str(iso or "")[:19].replace("T", " ")


def _trend_line(trend: Mapping[str, Any] | None) -> str | None:
    if not trend or trend.get("previous_at") is None:
        return None
    parts = [f"blockers {trend['blockers_delta']:+d}", f"warnings {trend['warnings_delta']:+d}"]
    if trend.get("new"):
        parts.append("new: " + ", ".join(trend["new"]))
    if trend.get("resolved"):
        parts.append("resolved: " + ", ".join(trend["resolved"]))
    return f"Since the previous audit ({_when(trend['previous_at'])}): " + "; ".join(parts)


def to_markdown(report: Mapping[str, Any]) -> str:
    """Markdown: verdict, trend, findings table, then each finding's effect, fix and examples."""
    lines = [
        "# Integration audit",
        "",
        f"**Verdict: {report['verdict']}** - {report['blockers']} blocker(s), {report['warnings']} warning(s). "
        f"Period {_when(report['since'])} to {_when(report['generated_at'])} (UTC), {report['orders_in_period']} order(s).",
    ]
    trend = _trend_line(report.get("trend"))
    if trend:
        lines += ["", trend]
    timings = report.get("timings") or {}
    if timings:
        lines += ["", "| time from order | orders | p50 | p95 |", "|---|---|---|---|"]
        for key, label in (("to_warehouse", "to the warehouse"), ("to_dispatch", "to dispatch")):
            t = timings.get(key) or {}
            lines.append(f"| {label} | {t.get('orders', 0)} | {_minutes(t.get('p50_min'))} | {_minutes(t.get('p95_min'))} |")
    webhooks = report.get("webhooks")
    if webhooks is not None:
        lines += ["", f"Shopify webhooks: {len(webhooks['subscribed'])} consumed topic(s) subscribed, pointing at "
                  + (", ".join(f"`{_code(u)}`" for u in webhooks["receiver_urls"]) or "nothing") + "."]
    findings = report.get("findings") or []
    if not findings:
        lines += ["", "No gaps found."]
        return "\n".join(lines) + "\n"
    lines += ["", "| severity | area | finding | count | owner |", "|---|---|---|---|---|"]
    lines += [f"| {f['severity']} | {_cell(f['area'])} | {_cell(f['title'])} | {f['count']} | {f['owner']} |"
              for f in findings]
    for f in findings:
        lines += ["", f"## {f['severity'].upper()}: {f['title']} ({f['count']})", "",
                  f"- Owner: {f['owner']}", f"- Effect: {f['effect']}", f"- Fix: {f['fix']}"]
        if f.get("examples"):
            lines.append("- Examples: " + "; ".join(f"`{_code(e)}`" for e in f["examples"]))
    return "\n".join(lines) + "\n"


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Integration audit: {{ r.verdict }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#1f2328}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #d0d7de;padding:.35rem .6rem;text-align:left}
.blocker{color:#b42318;font-weight:600}.warning{color:#9a6700;font-weight:600}
.verdict{font-size:1.2rem;padding:.6rem 1rem;border-radius:.4rem;background:{{ '#fdecea' if r.blockers else '#eaf7ee' }}}
code{background:#f6f8fa;padding:0 .25rem}
</style></head><body>
<h1>Integration audit</h1>
<p class="verdict" id="verdict"><strong>{{ r.verdict }}</strong>: {{ r.blockers }} blocker(s), {{ r.warnings }} warning(s)</p>
<p>Period {{ when(r.since) }} to {{ when(r.generated_at) }} (UTC), {{ r.orders_in_period }} order(s).</p>
{% if trend %}<p id="trend">{{ trend }}</p>{% endif %}
<table id="timings"><tr><th>time from order</th><th>orders</th><th>p50</th><th>p95</th></tr>
{% for key, label in [("to_warehouse", "to the warehouse"), ("to_dispatch", "to dispatch")] %}{% set t = r.timings.get(key, {}) %}
<tr><td>{{ label }}</td><td>{{ t.get("orders", 0) }}</td><td>{{ minutes(t.get("p50_min")) }}</td><td>{{ minutes(t.get("p95_min")) }}</td></tr>
{% endfor %}</table>
{% if r.webhooks %}<p id="webhooks">Shopify webhooks: {{ r.webhooks.subscribed | length }} consumed topic(s) subscribed, pointing at
{% for u in r.webhooks.receiver_urls %}<code>{{ u }}</code>{% if not loop.last %}, {% endif %}{% else %}nothing{% endfor %}.</p>{% endif %}
{% if not r.findings %}<p>No gaps found.</p>{% else %}
<table id="findings"><tr><th>severity</th><th>area</th><th>finding</th><th>count</th><th>owner</th><th>effect</th><th>fix</th><th>examples</th></tr>
{% for f in r.findings %}<tr data-check="{{ f.check }}"><td class="{{ f.severity }}">{{ f.severity }}</td><td>{{ f.area }}</td>
<td>{{ f.title }}</td><td>{{ f.count }}</td><td>{{ f.owner }}</td><td>{{ f.effect }}</td><td>{{ f.fix }}</td>
<td>{% for e in f.examples %}<code>{{ e }}</code>{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>
{% endfor %}</table>{% endif %}
</body></html>
"""

_env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_template = _env.from_string(_HTML)


def to_html(report: Mapping[str, Any]) -> str:
    """A standalone HTML page (every value escaped)."""
    return _template.render(r=report, trend=_trend_line(report.get("trend")), minutes=_minutes, when=_when)


def render(report: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return to_json(report)
    if fmt == "md":
        return to_markdown(report)
    if fmt == "html":
        return to_html(report)
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
