"""Who may post a webhook: signature and token checks on the raw request bytes.

Every check runs before the body is parsed and compares in constant time
(`hmac.compare_digest`). Each returns an `AuthResult`; a failure carries a short reason
code (never the secret, the expected value or the body) that is counted and logged.

- Shopify signs: `X-Shopify-Hmac-Sha256` = base64(HMAC-SHA256(secret, raw body)).
- Clarus does not sign: the URL carries our secret token, and the five
  `X-ClarusWMS-*` identity headers must match the tenant in the policies.
- NetSuite sends what our SuiteScript is told to (docs/webhooks.md):
  `X-NetSuite-Signature` = hex(HMAC-SHA256(secret, "<timestamp>\\n<topic>\\n<event id>\\n" + raw body)),
  with the timestamp within a tolerance so a captured request cannot be replayed later,
  and the topic and event id signed so it cannot be re-posted as another event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from clarus_pipelines.policies import TenantPolicy

SHOPIFY_HMAC_HEADERS = ("x-shopify-hmac-sha256", "shopify-hmac-sha256")
NETSUITE_SIGNATURE_HEADER = "x-netsuite-signature"
NETSUITE_TIMESTAMP_HEADER = "x-netsuite-timestamp"
NETSUITE_TOPIC_HEADER = "x-netsuite-topic"
NETSUITE_EVENT_ID_HEADER = "x-netsuite-event-id"
NETSUITE_TOLERANCE_S = 300.0

# header -> TenantPolicy field it must equal
CLARUS_IDENTITY_HEADERS: dict[str, str] = {
    "x-claruswms-domain": "clarus_domain",
    "x-claruswms-api-domain": "clarus_api_domain",
    "x-claruswms-subdomain": "clarus_subdomain",
    "x-claruswms-automation-id": "clarus_automation_ids",
    "x-claruswms-integration-id": "clarus_integration_id",
}


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    reason: str = ""  # short code for counters and logs, e.g. "bad_signature"

    def __bool__(self) -> bool:
        return self.ok


ACCEPTED = AuthResult(True)


def _header(headers: Mapping[str, str], *names: str) -> str | None:
    """The first of `names` present, whatever the case of `headers`' names."""
    for name in names:  # names are lower case, and so are the receiver's headers: no copy needed
        value = headers.get(name)
        if value is not None:
            return value
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value is not None:
            return value
    return None


def shopify_signature(body: bytes, secret: str) -> str:
    """The `X-Shopify-Hmac-Sha256` value Shopify computes for `body`."""
    return base64.b64encode(hmac.digest(secret.encode("utf-8"), body, "sha256")).decode("ascii")


def verify_shopify(body: bytes, headers: Mapping[str, str], secret: str) -> AuthResult:
    given = _header(headers, *SHOPIFY_HMAC_HEADERS)
    if not given:
        return AuthResult(False, "missing_signature")
    expected = shopify_signature(body, secret)
    if not hmac.compare_digest(expected.encode("ascii"), given.strip().encode("utf-8", "replace")):
        return AuthResult(False, "bad_signature")
    return ACCEPTED


def verify_clarus(token: str, headers: Mapping[str, str], expected_token: str, tenant: TenantPolicy) -> AuthResult:
    """The URL token first (constant time), then the tenant identity headers."""
    if not hmac.compare_digest(token.encode("utf-8", "replace"), expected_token.encode("utf-8")):
        return AuthResult(False, "bad_token")
    for header, field in CLARUS_IDENTITY_HEADERS.items():
        given = _header(headers, header)
        if given is None:
            return AuthResult(False, f"missing_header:{header}")
        allowed = getattr(tenant, field)
        allowed = [str(a) for a in allowed] if isinstance(allowed, list) else [str(allowed)]
        if given.strip().lower() not in {a.lower() for a in allowed}:
            return AuthResult(False, f"tenant_mismatch:{header}")
    return ACCEPTED


def netsuite_signing_input(body: bytes, timestamp: int | str, topic: str, event_id: str) -> bytes:
    """What the NetSuite script signs: timestamp, topic and event id on lines of their own, then the body.

    Signing the topic and the event id (not only the body) means a captured request cannot
    be re-posted as another event (a new event id) or another action (`salesorder/delete`).
    Header values never hold a newline, so the lines cannot be shifted into one another.
    """
    head = f"{timestamp}\n{topic}\n{event_id}\n"
    return head.encode("utf-8") + body


def netsuite_signature(body: bytes, secret: str, timestamp: int | str, *, topic: str, event_id: str) -> str:
    """hex(HMAC-SHA256(secret, "<timestamp>\\n<topic>\\n<event id>\\n" + body)): what the NetSuite script sends."""
    message = netsuite_signing_input(body, timestamp, topic, event_id)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def netsuite_headers(body: bytes, secret: str, *, topic: str, event_id: str, timestamp: int | None = None) -> dict[str, str]:
    """Every header a NetSuite webhook carries, signed; for the sandbox, tests and benches."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        NETSUITE_TOPIC_HEADER: topic,
        NETSUITE_EVENT_ID_HEADER: event_id,
        NETSUITE_TIMESTAMP_HEADER: str(ts),
        NETSUITE_SIGNATURE_HEADER: netsuite_signature(body, secret, ts, topic=topic, event_id=event_id),
    }


def netsuite_headers_present(headers: Mapping[str, str]) -> AuthResult:
    """The checks that need no body: every signed header is there and the timestamp is a number."""
    for name in (NETSUITE_SIGNATURE_HEADER, NETSUITE_TIMESTAMP_HEADER):
        if not (_header(headers, name) or "").strip():
            return AuthResult(False, "missing_signature")
    for name in (NETSUITE_TOPIC_HEADER, NETSUITE_EVENT_ID_HEADER):
        if not (_header(headers, name) or "").strip():
            return AuthResult(False, f"missing_header:{name}")
    stamp = (_header(headers, NETSUITE_TIMESTAMP_HEADER) or "").strip()
    if not stamp.isdigit() or len(stamp) > 12:
        return AuthResult(False, "bad_timestamp")
    return ACCEPTED


def netsuite_fresh(headers: Mapping[str, str], *, now: float | None = None,
                   tolerance_s: float = NETSUITE_TOLERANCE_S) -> AuthResult:
    stamp = (_header(headers, NETSUITE_TIMESTAMP_HEADER) or "").strip()
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return AuthResult(False, "stale_timestamp")
    return ACCEPTED


def verify_netsuite(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    now: float | None = None,
    tolerance_s: float | None = NETSUITE_TOLERANCE_S,
) -> AuthResult:
    """Check the signature over timestamp, topic, event id and body; with `tolerance_s=None`
    (replay of a landed event) skip the age check. A re-post of a captured request within the
    window is a duplicate of its event id: acknowledged, never stored twice."""
    present = netsuite_headers_present(headers)
    if not present:
        return present
    stamp = _header(headers, NETSUITE_TIMESTAMP_HEADER).strip()
    topic = _header(headers, NETSUITE_TOPIC_HEADER).strip()
    event_id = _header(headers, NETSUITE_EVENT_ID_HEADER).strip()
    given = _header(headers, NETSUITE_SIGNATURE_HEADER).strip().lower().removeprefix("sha256=")
    expected = netsuite_signature(body, secret, stamp, topic=topic, event_id=event_id)
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace")):
        return AuthResult(False, "bad_signature")
    if tolerance_s is not None:
        return netsuite_fresh(headers, now=now, tolerance_s=tolerance_s)
    return ACCEPTED


def shopify_headers(body: bytes, secret: str, *, topic: str, webhook_id: str, shop_domain: str = "sandbox.myshopify.com",
                    api_version: str = "2025-07") -> dict[str, str]:
    """Every header a Shopify webhook carries, signed; for the sandbox, tests and benches."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": shopify_signature(body, secret),
        "X-Shopify-Shop-Domain": shop_domain,
        "X-Shopify-API-Version": api_version,
        "X-Shopify-Webhook-Id": webhook_id,
    }


def clarus_headers(tenant: TenantPolicy, automation_id: str | None = None) -> dict[str, str]:
    """The identity headers Clarus sends for our tenant; for the sandbox, tests and benches."""
    return {
        "Content-Type": "application/json",
        "X-ClarusWMS-Domain": tenant.clarus_domain,
        "X-ClarusWMS-API-Domain": tenant.clarus_api_domain,
        "X-ClarusWMS-Subdomain": tenant.clarus_subdomain,
        "X-ClarusWMS-Automation-ID": automation_id or tenant.clarus_automation_ids[0],
        "X-ClarusWMS-Integration-ID": tenant.clarus_integration_id,
    }
