"""The Dagster code location: every domain's assets, checks, jobs, sensors and schedules,
plus the resources they share. Secrets reach the resources through `dg.EnvVar`."""

import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

from clarus_pipelines.catalogue import dagster_owner, flow_owner
from clarus_pipelines.logs import mask_our_records
from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.resources import LandingZoneResource, PoliciesResource, StateStoreResource
from clarus_pipelines.settings import Settings

from clarus_pipelines.assets import (
    audit, data_quality, dispatch, ingest, item_master, monitoring, orders, outside_fulfilments, reconciliation, refunds,
    stock,
)
from clarus_pipelines.sensors import alerts as alert_sensors
from clarus_pipelines.sensors import event_path, maintenance, probes, run_failures, stuck_states, webhooks
from clarus_pipelines.sensors import item_master as item_master_sensors
from clarus_pipelines.sensors import orders as order_sensors
from clarus_pipelines.sensors import stock as stock_sensors

# Each domain module exports its own `defs`; add a module here to add a domain.
DOMAINS: list[dg.Definitions] = [
    ingest.defs, webhooks.defs, reconciliation.defs, maintenance.defs,
    item_master.defs, item_master_sensors.defs, orders.defs, order_sensors.defs,
    dispatch.defs, event_path.defs, stuck_states.defs, outside_fulfilments.defs,
    stock.defs, stock_sensors.defs,
    refunds.defs,
    monitoring.defs, data_quality.defs, alert_sensors.defs, probes.defs, run_failures.defs,
    audit.defs,
]


def build_resources(settings: Settings | None = None, *, connector_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The code location's resources; `connector_config` (timeout and retry fields of `HttpConnector`)
    goes to all three connectors: `simulate` compresses them, everything else keeps their defaults."""
    settings = settings or Settings()
    connector_config = dict(connector_config or {})
    return {
        "state": StateStoreResource(path=settings.state_target),
        "policies": PoliciesResource(path=str(settings.require_policies_file().resolve())),
        "landing": LandingZoneResource(
            path=str(settings.landing_path.resolve()),
            state_url=dg.EnvVar("CLARUS_PIPELINES_STATE_URL") if settings.inbox_url else None,
        ),
        "clarus": ClarusResource(
            base_url=settings.clarus_base_url,
            subdomain=settings.clarus_subdomain,
            client_id=dg.EnvVar("CLARUS_CLIENT_ID"),
            client_secret=dg.EnvVar("CLARUS_CLIENT_SECRET"),
            **connector_config,
        ),
        "shopify": ShopifyResource(
            base_url=settings.shopify_base_url,
            api_version=settings.shopify_api_version,
            access_token=dg.EnvVar("SHOPIFY_ACCESS_TOKEN"),
            **connector_config,
        ),
        "netsuite": netsuite_resource(settings, **connector_config),
        # Steps hand each other nothing (every input is Nothing; the data is in the state store),
        # so what a step returns is kept in memory, never written: Dagster's default would write it
        # under the launching instance's DAGSTER_HOME, the control plane's disk, from the run worker.
        "io_manager": dg.mem_io_manager,
    }


def netsuite_resource(settings: Settings, **connector_config: Any) -> NetSuiteResource:
    """NetSuite with the credentials of the chosen auth method (only those are read)."""
    if settings.netsuite_auth_method == "oauth2_m2m":
        key_file = settings.netsuite_private_key is None and settings.netsuite_private_key_file is not None
        return NetSuiteResource(
            base_url=settings.netsuite_base_url,
            account_id=settings.netsuite_account_id,
            auth_method="oauth2_m2m",
            client_id=dg.EnvVar("NETSUITE_CLIENT_ID"),
            certificate_id=dg.EnvVar("NETSUITE_CERTIFICATE_ID"),
            **({"private_key_file": str(settings.netsuite_private_key_file)} if key_file
               else {"private_key": dg.EnvVar("NETSUITE_PRIVATE_KEY")}),
            **connector_config,
        )
    return NetSuiteResource(
        base_url=settings.netsuite_base_url,
        account_id=settings.netsuite_account_id,
        consumer_key=dg.EnvVar("NETSUITE_CONSUMER_KEY"),
        consumer_secret=dg.EnvVar("NETSUITE_CONSUMER_SECRET"),
        token_id=dg.EnvVar("NETSUITE_TOKEN_ID"),
        token_secret=dg.EnvVar("NETSUITE_TOKEN_SECRET"),
        **connector_config,
    )


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    """The code location for these settings (tests build one per temporary home)."""
    # Steps run in the run's own process: every step serialises on the state file's single
    # writer anyway, and a child process per step costs seconds of start-up on a small box.
    merged = dg.Definitions.merge(
        *DOMAINS, dg.Definitions(resources=build_resources(settings), executor=dg.in_process_executor)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.PreviewWarning)  # map_asset_specs: stable in use since 1.9
        return merged.map_asset_specs(func=with_owner)


def with_owner(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Each asset is owned by its flow's owner role from the exception catalogue (`team:<role>`)."""
    return spec.replace_attributes(owners=[dagster_owner(flow_owner(spec.group_name))])


# Our loggers reach each run's event log (the instance's `python_logs`): masked there too.
mask_our_records()
defs = build_defs()
