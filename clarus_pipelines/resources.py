"""Dagster resources shared by every domain: where state lives and which policies apply.

Connector resources (Clarus, Shopify, NetSuite) live in `clarus_pipelines.connectors`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from clarus_pipelines.receiver.inbox import Inbox, shared_inbox
from clarus_pipelines.receiver.landing import LandingZone
from clarus_pipelines.settings import is_postgres_url, policies_at
from clarus_pipelines.policies import Policies
from clarus_pipelines.state import PgStateStore, StateStore, open_state


class NetSuiteCustomerConfig(dg.Config):
    """Run config of the jobs that book records to NetSuite's web-order customer."""

    netsuite_customer_id: str | None = Field(
        default=None, description="For this run, book to this NetSuite customer instead of tenant.netsuite_customer_id.",
    )

    def customer_id(self, policies: Policies) -> str:
        return self.netsuite_customer_id or policies.tenant.netsuite_customer_id


class StateStoreResource(dg.ConfigurableResource):
    """The integration state: a DuckDB file path or a postgresql:// URL (one writer at a time)."""

    path: str
    lock_timeout_s: float = 300.0

    def store(self) -> StateStore | PgStateStore:
        return open_state(self.path, lock_timeout_s=self.lock_timeout_s)


class PoliciesResource(dg.ConfigurableResource):
    """The policies YAML: ship methods, SKU cleaning, buffers, timings, owners."""

    path: str

    def load(self) -> Policies:
        """The policies as the file stands now (parsed again only when it changed)."""
        return policies_at(self.path)


class LandingZoneResource(dg.ConfigurableResource):
    """Where the webhook receiver keeps each accepted webhook: one JSON file in the folder
    `path`, or with a postgresql:// `state_url` one row of the PostgreSQL webhook inbox."""

    path: str
    state_url: str | None = None  # from CLARUS_PIPELINES_STATE_URL (an EnvVar: the password never shows)

    @property
    def root(self) -> Path:
        return Path(self.path)

    def source(self) -> LandingZone | Inbox:
        """The landings ingest reads: the PostgreSQL inbox when `state_url` is postgresql://, else the zone."""
        if is_postgres_url(self.state_url):
            return shared_inbox(self.state_url)  # type: ignore[arg-type]
        return LandingZone(self.path)
