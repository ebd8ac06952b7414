"""Who may post a webhook: signature and token checks on the raw request bytes.

Every check runs before the body is parsed and compares in constant time
(`hmac.compare_digest`). Each returns an `AuthResult`; a failure carries a short reason
code (never the secret, the expected value or the body) that is counted and logged.

- Shopify signs: `X-Shopify-Hmac-Sha256` = base64(HMAC-SHA256(secret, raw body)).
- Clarus does not sign: the URL carries our secret token, and the five
  `X-ClarusWMS-*` identity headers must match the tenant in the policies.
- NetSuite sends what our SuiteScript is told to (docs/webhooks.md):
  `X-NetSuite-Signature` = hex(HMAC-SHA256(secret, "<X-NetSuite-Timestamp>." + raw body)),
  with the timestamp within a tolerance so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from clarus_pipelines.settings import TenantPolicy

SHOPIFY_HMAC_HEADERS = ("x-shopify-hmac-sha256", "shopify-hmac-sha256")
NETSUITE_SIGNATURE_HEADER = "x-netsuite-signature"
NETSUITE_TIMESTAMP_HEADER = "x-netsuite-timestamp"
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
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value is not None:
            return value
    return None


def shopify_signature(body: bytes, secret: str) -> str:
    """The `X-Shopify-Hmac-Sha256` value Shopify computes for `body`."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


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


def netsuite_signature(body: bytes, secret: str, timestamp: int | str) -> str:
    """hex(HMAC-SHA256(secret, "<timestamp>." + body)): what the NetSuite script sends."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def netsuite_headers(body: bytes, secret: str, *, topic: str, event_id: str, timestamp: int | None = None) -> dict[str, str]:
    """Every header a NetSuite webhook carries, signed; for the sandbox, tests and benches."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "X-NetSuite-Topic": topic,
        "X-NetSuite-Event-Id": event_id,
        NETSUITE_TIMESTAMP_HEADER: str(ts),
        NETSUITE_SIGNATURE_HEADER: netsuite_signature(body, secret, ts),
    }


def verify_netsuite(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    now: float | None = None,
    tolerance_s: float | None = NETSUITE_TOLERANCE_S,
) -> AuthResult:
    """Check the signature; with `tolerance_s=None` (replay of a landed event) skip the age check."""
    given = _header(headers, NETSUITE_SIGNATURE_HEADER)
    stamp = _header(headers, NETSUITE_TIMESTAMP_HEADER)
    if not given or not stamp:
        return AuthResult(False, "missing_signature")
    stamp = stamp.strip()
    if not stamp.isdigit() or len(stamp) > 12:
        return AuthResult(False, "bad_timestamp")
    given = given.strip().lower().removeprefix("sha256=")
    expected = netsuite_signature(body, secret, stamp)
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace")):
        return AuthResult(False, "bad_signature")
    if tolerance_s is not None and abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return AuthResult(False, "stale_timestamp")
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
