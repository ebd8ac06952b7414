"""Live health: the probe job reads each real sandbox with its credentials on loopback;
wrong credentials (a revoked token) fail the probe, raise CONNECTOR_FAILING and show on the
health figures; the next good probe clears it."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.http import ConnectorError
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain import health
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.clarus import ClarusSandbox
from clarus_pipelines.sandbox.netsuite import NetSuiteSandbox
from clarus_pipelines.sandbox.serving import serve_in_thread
from clarus_pipelines.sandbox.shopify import ShopifySandbox
from clarus_pipelines.settings import SANDBOX_POLICIES
from clarus_pipelines.state import StateStore
from clarus_pipelines.sensors.probes import defs as probe_defs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def systems():
    env = os.environ
    clarus = ClarusSandbox(client_id=env["CLARUS_CLIENT_ID"], client_secret=env["CLARUS_CLIENT_SECRET"])
    shopify = ShopifySandbox(access_token=env["SHOPIFY_ACCESS_TOKEN"], webhook_secret=env["SHOPIFY_WEBHOOK_SECRET"])
    netsuite = NetSuiteSandbox(consumer_key=env["NETSUITE_CONSUMER_KEY"], consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
                               token_id=env["NETSUITE_TOKEN_ID"], token_secret=env["NETSUITE_TOKEN_SECRET"])
    served = [serve_in_thread(s.app) for s in (clarus, shopify, netsuite)]
    urls = dict(zip(("clarus", "shopify", "netsuite"), (s.url for s in served)))
    try:
        yield urls
    finally:
        clarus.close()
        shopify.close()
        for s in served:
            s.stop()


def connectors(urls, *, shopify_token=None):
    env = os.environ
    return {
        "clarus": ClarusResource(base_url=urls["clarus"], subdomain="sandbox", client_id=env["CLARUS_CLIENT_ID"],
                                 client_secret=env["CLARUS_CLIENT_SECRET"], min_interval_s=0.0),
        "shopify": ShopifyResource(base_url=urls["shopify"], access_token=shopify_token or env["SHOPIFY_ACCESS_TOKEN"]),
        "netsuite": NetSuiteResource(base_url=urls["netsuite"], account_id="SANDBOX", consumer_key=env["NETSUITE_CONSUMER_KEY"],
                                     consumer_secret=env["NETSUITE_CONSUMER_SECRET"], token_id=env["NETSUITE_TOKEN_ID"],
                                     token_secret=env["NETSUITE_TOKEN_SECRET"]),
    }


def test_probe_is_an_authenticated_read_of_each_system(systems):
    good = connectors(systems)
    for resource in good.values():
        assert resource.probe() is None
    with pytest.raises(ConnectorError):
        connectors(systems, shopify_token="revoked")["shopify"].probe()
    with pytest.raises(ConnectorError):
        NetSuiteResource(base_url=systems["netsuite"], account_id="SANDBOX", consumer_key="ck", consumer_secret="cs",
                         token_id="tk", token_secret="ts").probe()
    with pytest.raises(ConnectorError):
        ClarusResource(base_url=systems["clarus"], subdomain="sandbox", client_id=os.environ["CLARUS_CLIENT_ID"],
                       client_secret="wrong", min_interval_s=0.0).probe()


def test_probe_job_records_live_health_and_raises_then_clears_connector_failing(systems, tmp_path):
    store_path = tmp_path / "state.duckdb"
    base = {"state": StateStoreResource(path=str(store_path)), "policies": PoliciesResource(path=str(SANDBOX_POLICIES))}
    instance = dg.DagsterInstance.ephemeral()

    def run(**kw):
        defs = dg.Definitions.merge(probe_defs, dg.Definitions(resources={**base, **connectors(systems, **kw)}))
        result = defs.resolve_job_def("connector_probes_job").execute_in_process(instance=instance)
        assert result.success
        return result.output_for_node("probe_connectors")

    def failing():
        with StateStore(store_path).read() as con:
            return dict(con.execute("SELECT entity_id, message FROM exceptions WHERE code = 'CONNECTOR_FAILING'"
                                    " AND status <> 'resolved'").fetchall())

    first = run()
    assert all(p["ok"] for p in first["probes"].values())
    with StateStore(store_path).read() as con:
        live = health.connection_health(con).to_pandas().set_index("connection")
    assert live.loc["clarus", "last_probe_ok_at"] is not None and live.loc["clarus", "status"] == "ok"
    assert live.loc["shopify", "last_success"] >= live.loc["shopify", "last_probe_ok_at"]

    # Shopify's token is revoked: one failed probe degrades it, the second makes it failing
    assert run(shopify_token="revoked")["probes"]["shopify"]["ok"] is False
    with StateStore(store_path).read() as con:
        row = health.connection_health(con).to_pandas().set_index("connection").loc["shopify"]
    assert row["status"] == "degraded" and "live probe failed" in row["reasons"] and failing() == {}
    run(shopify_token="revoked")
    found = failing()
    assert set(found) == {"shopify"} and "does not answer an authenticated read: 2 live probe(s) failed" in found["shopify"]
    with StateStore(store_path).read() as con:
        row = health.connection_health(con).to_pandas().set_index("connection").loc["shopify"]
    assert row["status"] == "failing" and row["probe_error"]

    run()  # the token is fixed: the next probe clears it
    assert failing() == {}
