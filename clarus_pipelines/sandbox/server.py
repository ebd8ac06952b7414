"""The three sandbox systems served together, with their clocks and optional traffic.

`start_sandbox(...)` builds the Clarus, Shopify and NetSuite sandboxes with the
credentials the real connectors use (`SandboxSecrets.from_env()`), points their webhooks
at the receiver (Clarus: `{receiver}/webhooks/clarus/{CLARUS_WEBHOOK_TOKEN}`, Shopify:
`{receiver}/webhooks/shopify`, NetSuite: `{receiver}/webhooks/netsuite` when
NETSUITE_WEBHOOK_SECRET is set), serves each on its own port with uvicorn in a
background thread, ticks the warehouse and the ERP from background threads, and
optionally runs the traffic generator. The returned `SandboxHandle` has the URLs, the
sandbox objects and `stop()`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from clarus_pipelines.sandbox.clarus import ClarusSandbox
from clarus_pipelines.sandbox.faults import FaultConfig, FaultLevel
from clarus_pipelines.sandbox.netsuite import NetSuiteSandbox
from clarus_pipelines.sandbox.serving import ServedApp, serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifySandbox
from clarus_pipelines.sandbox.traffic import TrafficGenerator, TrafficProfile
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.policies import Policies

log = logging.getLogger(__name__)


class SandboxConfigError(RuntimeError):
    """The sandbox cannot start: a credential or setting is missing."""


@dataclass(frozen=True)
class SandboxSecrets:
    """The credentials the sandbox accepts: the same environment the real connectors read."""

    clarus_client_id: str
    clarus_client_secret: str = field(repr=False)
    clarus_webhook_token: str = field(repr=False)
    shopify_access_token: str = field(repr=False)
    shopify_webhook_secret: str = field(repr=False)
    netsuite_consumer_key: str = field(repr=False)
    netsuite_consumer_secret: str = field(repr=False)
    netsuite_token_id: str = field(repr=False)
    netsuite_token_secret: str = field(repr=False)
    netsuite_webhook_secret: str | None = field(default=None, repr=False)  # optional: NetSuite webhooks off without it
    # optional: NetSuite OAuth 2.0 M2M (the sandbox derives the "uploaded certificate" from the key)
    netsuite_client_id: str | None = field(default=None, repr=False)
    netsuite_certificate_id: str | None = field(default=None, repr=False)
    netsuite_private_key: str | None = field(default=None, repr=False)

    @staticmethod
    def env_name(field_name: str) -> str:
        return field_name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SandboxSecrets":
        """Read every credential from the environment; name all the missing ones at once."""
        env = os.environ if environ is None else environ
        values: dict[str, str | None] = {}
        missing = []
        for f in fields(cls):
            value = (env.get(cls.env_name(f.name)) or "").strip() or None
            if value is None and f.default is MISSING:
                missing.append(cls.env_name(f.name))
            values[f.name] = value
        if missing:
            raise SandboxConfigError(
                "missing environment variable(s) " + ", ".join(missing)
                + ": the sandbox accepts the same credentials the connectors send (e.g. `clarus-pipelines demo` "
                "generates them in <home>/secrets.env)"
            )
        return cls(**values)  # type: ignore[arg-type]


def generate_m2m_credentials() -> dict[str, str]:
    """Sandbox NetSuite OAuth 2.0 M2M credentials: client id, certificate id and an EC P-256
    private key (PEM with `\\n` escapes, one line as env files hold it)."""
    import secrets as random_secrets

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {"NETSUITE_CLIENT_ID": random_secrets.token_hex(32), "NETSUITE_CERTIFICATE_ID": random_secrets.token_urlsafe(24),
            "NETSUITE_PRIVATE_KEY": pem.decode("ascii").strip().replace("\n", "\\n")}


def _public_key_pem(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.replace("\\n", "\n").encode("ascii"), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class SandboxHandle:
    clarus_url: str
    shopify_url: str
    netsuite_url: str
    clarus: ClarusSandbox
    shopify: ShopifySandbox
    netsuite: NetSuiteSandbox
    traffic: TrafficGenerator | None = None
    _served: list[ServedApp] = field(default_factory=list, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    def urls(self) -> dict[str, str]:
        return {"clarus": self.clarus_url, "shopify": self.shopify_url, "netsuite": self.netsuite_url}

    def stop(self) -> None:
        """Stop traffic and tickers, then the servers, then the webhook senders."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.clarus.stop_ticker()
        for served in self._served:
            served.stop()
        for sandbox in (self.clarus, self.shopify, self.netsuite):
            sandbox.close()

    def __enter__(self) -> "SandboxHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tenant(policies: Policies) -> dict[str, Any]:
    t = policies.tenant
    return {
        "clarus_domain": t.clarus_domain, "clarus_api_domain": t.clarus_api_domain, "clarus_subdomain": t.clarus_subdomain,
        "clarus_automation_ids": list(t.clarus_automation_ids), "clarus_integration_id": t.clarus_integration_id,
        "account_id": t.account_id, "warehouse_id": t.warehouse_id,
    }


def _ticker(name: str, tick: Any, interval_s: float, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.wait(interval_s):
            try:
                tick()
            except Exception:  # keep ticking; the log says what broke
                log.exception("%s tick failed", name)

    thread = threading.Thread(target=run, name=f"{name}-ticker", daemon=True)
    thread.start()
    return thread


def start_sandbox(
    *,
    host: str = "127.0.0.1",
    ports: tuple[int, int, int] = (0, 0, 0),
    seed: int = 0,
    faults: FaultLevel | FaultConfig = "none",
    receiver_url: str | None = None,
    secrets: SandboxSecrets,
    traffic_rate_per_min: float = 0.0,
    profile: TrafficProfile | None = None,
    policies_path: Path | str = SANDBOX_POLICIES,
    netsuite_account_id: str = "SANDBOX",
    netsuite_commit_delay_s: float = 30.0,
    clarus_dispatch_after_s: float = 120.0,
    tick_interval_s: float = 0.5,
) -> SandboxHandle:
    """Serve Clarus, Shopify and NetSuite sandboxes on (clarus, shopify, netsuite) `ports`.

    Port 0 picks a free port. With `receiver_url`, webhooks go to the receiver; with
    `traffic_rate_per_min` > 0, the traffic generator places orders at that rate.
    """
    fault_config = faults if isinstance(faults, FaultConfig) else FaultConfig.preset(faults)
    policies = load_policies(policies_path)
    profile = profile or TrafficProfile(orders_per_minute=traffic_rate_per_min or TrafficProfile().orders_per_minute)
    receiver = receiver_url.rstrip("/") if receiver_url else None
    clarus = ClarusSandbox(
        seed=seed, faults=fault_config,
        webhook_url=f"{receiver}/webhooks/clarus/{secrets.clarus_webhook_token}" if receiver else None,
        tenant=_tenant(policies), client_id=secrets.clarus_client_id, client_secret=secrets.clarus_client_secret,
        subdomain=policies.tenant.clarus_subdomain, dispatch_after_s=clarus_dispatch_after_s,
        missing_tracking_rate=profile.missing_tracking if traffic_rate_per_min > 0 else 0.0,
    )
    location_ids = policies.tenant.shopify_location_ids
    shopify = ShopifySandbox(
        seed=seed, faults=fault_config, access_token=secrets.shopify_access_token,
        webhook_secret=secrets.shopify_webhook_secret, webhook_url=f"{receiver}/webhooks/shopify" if receiver else None,
        **({"location_id": int(location_ids[0])} if location_ids else {}),
    )
    netsuite_webhooks = bool(receiver and secrets.netsuite_webhook_secret)
    netsuite = NetSuiteSandbox(
        seed=seed, faults=fault_config, account_id=netsuite_account_id,
        consumer_key=secrets.netsuite_consumer_key, consumer_secret=secrets.netsuite_consumer_secret,
        token_id=secrets.netsuite_token_id, token_secret=secrets.netsuite_token_secret,
        commit_delay_s=netsuite_commit_delay_s,
        **({"m2m_client_id": secrets.netsuite_client_id, "m2m_certificate_id": secrets.netsuite_certificate_id,
            "m2m_public_key": _public_key_pem(secrets.netsuite_private_key)}
           if secrets.netsuite_client_id and secrets.netsuite_certificate_id and secrets.netsuite_private_key else {}),
        webhook_url=f"{receiver}/webhooks/netsuite" if netsuite_webhooks else None,
        webhook_secret=secrets.netsuite_webhook_secret if netsuite_webhooks else None,
    )
    served: list[ServedApp] = []
    try:
        for name, sandbox, port in (("clarus", clarus, ports[0]), ("shopify", shopify, ports[1]), ("netsuite", netsuite, ports[2])):
            served.append(serve_in_thread(sandbox.app, host, port, name=f"{name}-sandbox"))
    except BaseException:
        for s in served:
            s.stop()
        for sandbox in (clarus, shopify, netsuite):
            sandbox.close()
        raise
    handle = SandboxHandle(served[0].url, served[1].url, served[2].url, clarus, shopify, netsuite, _served=served)
    clarus.start_ticker(tick_interval_s)
    handle._threads.append(_ticker("netsuite", netsuite.tick, tick_interval_s, handle._stop))
    if traffic_rate_per_min > 0:
        handle.traffic = TrafficGenerator(shopify, netsuite, clarus, profile, seed, policies=policies)
        thread = threading.Thread(target=handle.traffic.run, args=(traffic_rate_per_min, handle._stop),
                                  name="sandbox-traffic", daemon=True)
        thread.start()
        handle._threads.append(thread)
    log.info("sandbox serving: %s (faults %s, seed %s)", handle.urls(), faults if isinstance(faults, str) else "custom", seed)
    return handle
