"""The one sandbox world the flow tests share: Clarus, Shopify and NetSuite on loopback, our connectors
to them, the state store, the landing zone, the real receiver, and the actions every flow test takes.

Two ways to start it (both the same `World`):

- `World.trio(tmp)`: the sandboxes as `clarus-pipelines sandbox` serves them (`start_sandbox`), the
  warehouse clock stopped, plenty of stock, the item master synced and the carriers read into the
  state. Costly (seconds): open it once per module and give each test `world.fork(tmp_path)`, a copy
  of the synced state with its own landing zone (tests/flows/test_orders_flow.py, test_audit.py).
- `World.local(tmp)`: the three sandboxes built in this process around one catalogue, NetSuite's
  clock in the test's hands (`commit_erp`), Clarus' (and optionally Shopify's and NetSuite's)
  webhooks into the real receiver, an empty state; `place_order` puts an order in the three systems
  and our state the way the orders flow leaves it. Cheap: one per test (the `world` fixture in
  tests/flows/conftest.py; a module sets its options in `WORLD_OPTIONS`).

The state store is made in one place, `make_store` (and copied in one place, `copy_state`). A world
takes `state=`: a DuckDB file (the default, `<tmp>/state.duckdb`) or the URL of a PostgreSQL
database (tests/pgstate.py); a module runs its tests on both backends with
`STATE_BACKENDS = ("duckdb", "postgres")` (tests/flows/conftest.py).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

from clarus_pipelines.connectors.clarus import ClarusResource
from clarus_pipelines.connectors.clarus_model import build_goods_out_body
from clarus_pipelines.connectors.netsuite import NetSuiteResource
from clarus_pipelines.connectors.shopify import ShopifyResource
from clarus_pipelines.domain.order_flow import order_journey
from clarus_pipelines.domain.skus import clean_sku
from clarus_pipelines.exception_queue import open_exceptions, utcnow
from clarus_pipelines.receiver.auth import shopify_signature
from clarus_pipelines.receiver.events import load_landings, store_events
from clarus_pipelines.receiver.landing import Envelope, LandingZone
from clarus_pipelines.resources import PoliciesResource, StateStoreResource
from clarus_pipelines.sandbox.faults import FaultConfig, FaultMiddleware
from clarus_pipelines.settings import SANDBOX_POLICIES, load_policies
from clarus_pipelines.state import StateStore

POLICIES = load_policies(SANDBOX_POLICIES)
ADDRESS = {"first_name": "Ada", "last_name": "Byron", "name": "Ada Byron", "address1": "1 Test Street", "city": "Leeds",
           "zip": "LS1 4AP", "country": "United Kingdom", "country_code": "GB"}
STANDARD = [{"code": "standard", "title": "Standard Shipping", "price": "3.95"}]


def make_store(target: Path | str) -> StateStore:
    """The state store of a world (the one place a test world's store is made): a DuckDB file path
    or a postgresql:// URL."""
    return StateStore(target)


def copy_state(source: Path | str, path: Path) -> tuple[Path | str, StateStore]:
    """A copy of the state at `source` (the DuckDB file copied to `path`, or a PostgreSQL database
    cloned from the source one) and its store: a test starting from a prepared state."""
    from pgstate import clone_state

    target = clone_state(source, path)
    return target, make_store(target)


def _env() -> Mapping[str, str]:
    return os.environ  # the test credentials (tests/conftest.py)


def make_connectors(urls: Mapping[str, str], **limits: Any) -> tuple[ClarusResource, ShopifyResource, NetSuiteResource]:
    """Our three connectors, pointed at the sandboxes' `urls`, with the test credentials."""
    env = _env()
    clarus = ClarusResource(base_url=urls["clarus"], subdomain="sandbox", client_id=env["CLARUS_CLIENT_ID"],
                            client_secret=env["CLARUS_CLIENT_SECRET"], min_interval_s=0.0, **limits)
    shopify = ShopifyResource(base_url=urls["shopify"], access_token=env["SHOPIFY_ACCESS_TOKEN"], **limits)
    netsuite = NetSuiteResource(base_url=urls["netsuite"], account_id="SANDBOX", consumer_key=env["NETSUITE_CONSUMER_KEY"],
                                consumer_secret=env["NETSUITE_CONSUMER_SECRET"], token_id=env["NETSUITE_TOKEN_ID"],
                                token_secret=env["NETSUITE_TOKEN_SECRET"], **limits)
    return clarus, shopify, netsuite


class World:
    """Three sandboxes, our connectors to them, a state store and a landing zone (see the module docstring)."""

    handle: Any = None  # the SandboxHandle of a trio
    recorder: Any = None  # a trio's WebhookRecorder, when its webhooks go to one
    receiver: Any = None  # the real receiver of a local world (a ServedApp)
    catalog: Any = None
    parent: "World | None" = None

    def __init__(self, tmp: Path, *, clarus_sb, shopify_sb, netsuite_sb, urls: Mapping[str, str], connector_limits=None,
                 policies=POLICIES, order_payloads: bool = False, state: Path | str | None = None):
        self.clarus_sb, self.shopify_sb, self.netsuite_sb = clarus_sb, shopify_sb, netsuite_sb
        self.urls = dict(urls)
        self.clarus, self.shopify, self.netsuite = make_connectors(self.urls, **(connector_limits or {}))
        self.policies = policies
        self.order_payloads = order_payloads  # place_order records the Shopify payload and Clarus status too
        self.state_path = state or tmp / "state.duckdb"  # a DuckDB file or a postgresql:// URL
        self.store = make_store(self.state_path)
        self.landing_dir = tmp / "landing"
        self.zone = LandingZone(self.landing_dir, fsync=False)
        self.products: dict[str, str] = {}  # SKU -> Clarus product id seeded by place_order
        self.ns_now = [time.time()]  # NetSuite's clock in a local world
        self._served: list[Any] = []
        self._closers: list[Any] = []

    # ------------------------------------------------------------------ starting and stopping

    @classmethod
    def trio(cls, tmp: Path, *, recorder: bool = False, initial_stock: tuple[int, int] | None = None,
             seed: int = 0, state: Path | str | None = None) -> "World":
        """The sandboxes as `start_sandbox` serves them, the item master synced and the carriers read."""
        from clarus_pipelines.assets.item_master import sync_item_master
        from clarus_pipelines.assets.orders import refresh_carriers
        from clarus_pipelines.sandbox.server import SandboxSecrets, start_sandbox
        from sandbox_helpers import WebhookRecorder

        hooks = WebhookRecorder().__enter__() if recorder else None
        handle = start_sandbox(secrets=SandboxSecrets.from_env(), seed=seed, receiver_url=hooks.url if hooks else None,
                               clarus_dispatch_after_s=3600, netsuite_commit_delay_s=0)
        handle.clarus.stop_ticker()  # the tests move the warehouse clock themselves
        handle.clarus.out_of_stock_rate = 0.0  # allocation never depends on test order
        if initial_stock is not None:
            handle.clarus.initial_stock = initial_stock
        world = cls(tmp, clarus_sb=handle.clarus, shopify_sb=handle.shopify, netsuite_sb=handle.netsuite, urls=handle.urls(),
                    connector_limits={"max_elapsed_s": 30.0}, state=state)
        world.handle, world.recorder = handle, hooks
        world._closers = [handle.stop] + ([lambda: hooks.__exit__(None, None, None)] if hooks else [])
        sync_item_master(world.store, POLICIES, netsuite=world.netsuite, clarus=world.clarus, shopify=world.shopify)
        refresh_carriers(world.store, world.clarus)
        return world

    @classmethod
    def local(cls, tmp: Path, *, clarus_kwargs: Mapping[str, Any] | None = None, shopify_webhooks: bool = False,
              netsuite_webhooks: bool = False, order_payloads: bool = False,
              state: Path | str | None = None) -> "World":
        """Sandboxes built here around one catalogue; Clarus' webhooks (and optionally Shopify's and
        NetSuite's) go through the real receiver; NetSuite commits sales orders when `commit_erp` says."""
        from clarus_pipelines.receiver.app import WebhookSecrets, create_app
        from clarus_pipelines.sandbox.catalog_data import build_catalog
        from clarus_pipelines.sandbox.clarus import ClarusSandbox
        from clarus_pipelines.sandbox.faults import WebhookSender
        from clarus_pipelines.sandbox.netsuite import NetSuiteSandbox
        from clarus_pipelines.sandbox.serving import serve_in_thread
        from clarus_pipelines.sandbox.shopify import ShopifySandbox

        env = _env()
        catalog = build_catalog(0)
        ns_now = [time.time()]
        clarus_sb = ClarusSandbox(client_id=env["CLARUS_CLIENT_ID"], client_secret=env["CLARUS_CLIENT_SECRET"],
                                  **(clarus_kwargs or {}))
        netsuite_sb = NetSuiteSandbox(
            consumer_key=env["NETSUITE_CONSUMER_KEY"], consumer_secret=env["NETSUITE_CONSUMER_SECRET"],
            token_id=env["NETSUITE_TOKEN_ID"], token_secret=env["NETSUITE_TOKEN_SECRET"], commit_delay_s=3600,
            catalog=catalog, clock=lambda: ns_now[0],
            webhook_secret=env["NETSUITE_WEBHOOK_SECRET"] if netsuite_webhooks else None,
            webhook_sender=WebhookSender(system="netsuite") if netsuite_webhooks else None,
        )
        receiver = serve_in_thread(create_app(tmp / "landing", secrets=WebhookSecrets(
            shopify=env["SHOPIFY_WEBHOOK_SECRET"], clarus_token=env["CLARUS_WEBHOOK_TOKEN"], netsuite=env["NETSUITE_WEBHOOK_SECRET"]),
            tenant=POLICIES.tenant, fsync=False))
        shopify_sb = ShopifySandbox(access_token=env["SHOPIFY_ACCESS_TOKEN"], webhook_secret=env["SHOPIFY_WEBHOOK_SECRET"],
                                    webhook_url=f"{receiver.url}/webhooks/shopify" if shopify_webhooks else None, catalog=catalog)
        served = [serve_in_thread(app) for app in (clarus_sb.app, shopify_sb.app, netsuite_sb.app)]
        urls = dict(zip(("clarus", "shopify", "netsuite"), (s.url for s in served)))
        clarus_sb.webhook_url = f"{receiver.url}/webhooks/clarus/{env['CLARUS_WEBHOOK_TOKEN']}"
        if netsuite_webhooks:
            netsuite_sb.webhook_url = f"{receiver.url}/webhooks/netsuite"
        world = cls(tmp, clarus_sb=clarus_sb, shopify_sb=shopify_sb, netsuite_sb=netsuite_sb, urls=urls,
                    order_payloads=order_payloads, state=state)
        world.catalog, world.ns_now, world.receiver, world._served = catalog, ns_now, receiver, [*served, receiver]
        return world

    def fork(self, tmp: Path) -> "World":
        """This world's sandboxes and connectors with a copy of its state and a landing zone of its own
        (one test's view of a module's world; closing it stops nothing)."""
        view = copy.copy(self)
        view.parent = self
        view.state_path, view.store = copy_state(self.state_path, tmp / "state.duckdb")
        view.landing_dir = tmp / "landing"
        view.zone = LandingZone(view.landing_dir, fsync=False)
        view.products = dict(self.products)
        view._served, view._closers = [], []
        return view

    def close(self) -> None:
        if self.parent is not None:
            return
        for client in (self.clarus, self.shopify, self.netsuite):
            client.close()
        if self.handle is None:  # a local world: its sandboxes, senders and servers are ours
            if self.shopify_sb.webhook_sender is not None:
                self.shopify_sb.webhook_sender.flush(10)
            self.clarus_sb.close()
            self.shopify_sb.close()
            if self.netsuite_sb.webhook_sender is not None:
                self.netsuite_sb.webhook_sender.close()
            for served in self._served:
                served.stop()
        for closer in self._closers:
            closer()

    def __enter__(self) -> "World":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def clients(self) -> dict[str, Any]:
        """The connectors by system name, as `run_audit` and Dagster take them."""
        return {"clarus": self.clarus, "netsuite": self.netsuite, "shopify": self.shopify}

    def set_faults(self, faults: FaultConfig) -> None:
        """HTTP fault injection on every sandbox (the Clarus one has a method for it)."""
        self.clarus_sb.set_faults(faults)
        for sandbox in (self.shopify_sb, self.netsuite_sb):
            layer = sandbox.app
            while layer is not None:
                if isinstance(layer, FaultMiddleware):
                    layer.config = faults
                layer = getattr(layer, "app", None)

    # ------------------------------------------------------------------ Dagster

    def state_resource(self) -> StateStoreResource:
        return StateStoreResource(path=str(self.state_path))

    def resources(self, **overrides: Any) -> dict[str, Any]:
        """Dagster resources over this world: state, policies and the three connectors."""
        return {"state": self.state_resource(), "policies": PoliciesResource(path=str(SANDBOX_POLICIES)),
                **self.clients, **overrides}

    def definitions(self, defs: dg.Definitions, **overrides: Any) -> dg.Definitions:
        """A module's `defs` with this world's resources bound."""
        return dg.Definitions.merge(defs, dg.Definitions(resources=self.resources(**overrides)))

    def run_job(self, defs: dg.Definitions, job: str, *, run_config: Any = None, instance: dg.DagsterInstance | None = None,
                **overrides: Any) -> dg.ExecuteInProcessResult:
        """Run one of a module's jobs in process over this world."""
        return self.definitions(defs, **overrides).resolve_job_def(job).execute_in_process(
            instance=instance or dg.DagsterInstance.ephemeral(), run_config=run_config)

    def materialize(self, assets: list[Any], **overrides: Any) -> dg.ExecuteInProcessResult:
        return dg.materialize(assets, resources=self.resources(**overrides))

    # ------------------------------------------------------------------ webhooks in

    def land(self, topic: str, payload: dict, *, key: str | None = None, via: str = "webhook", source: str = "shopify") -> None:
        self.land_many([(topic, payload, key, via)], source=source)

    def land_many(self, deliveries: Iterable[tuple[str, dict, str | None, str]], *, source: str = "shopify") -> None:
        """Land webhooks through the landing zone and store them as events, in one state write."""
        relpaths = []
        for topic, payload, key, via in deliveries:
            envelope = Envelope(source=source, topic=topic, body=json.dumps(payload).encode(), via=via,
                                dedupe_key=key or f"{source}:webhook:{uuid.uuid4()}", headers={"x-shopify-topic": topic})
            relpaths.append(self.zone.land(envelope).relpath)
        with self.store.write() as con:
            store_events(con, load_landings(self.zone, relpaths))

    def ingest(self, *sources: str):
        """Wait for the sandboxes' webhooks to be delivered, then store what landed from `sources`
        (default Shopify and Clarus) as the ingest run does; returns its report."""
        for sandbox in (self.shopify_sb, self.clarus_sb):
            if sandbox.webhook_sender is not None:
                assert sandbox.webhook_sender.flush(20)
        zone = LandingZone(self.landing_dir)
        loaded = load_landings(zone, [r.relpath for s in (sources or ("shopify", "clarus")) for r in zone.list_landings(s)])
        with self.store.write() as con:
            return store_events(con, loaded)

    def shopify_headers(self, raw: bytes, topic: str, webhook_id: str | None = None) -> dict[str, str]:
        """The headers Shopify signs a webhook with (the test shop's secret)."""
        return {"Content-Type": "application/json", "X-Shopify-Topic": topic,
                "X-Shopify-Hmac-Sha256": shopify_signature(raw, _env()["SHOPIFY_WEBHOOK_SECRET"]),
                "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()), "X-Shopify-Shop-Domain": "sandbox.myshopify.com"}

    def post_shopify(self, topic: str, body: dict, webhook_id: str | None = None) -> None:
        """POST a signed Shopify webhook to the real receiver."""
        raw = json.dumps(body).encode()
        response = httpx.post(f"{self.receiver.url}/webhooks/shopify", content=raw,
                              headers=self.shopify_headers(raw, topic, webhook_id))
        assert response.status_code == 200, response.text

    # ------------------------------------------------------------------ an order, as the orders flow leaves it

    def items(self, n: int):
        """The first `n` catalogue items without quirks."""
        return [i for i in self.catalog.clean_variants() if i.quirk is None][:n]

    def place_order(self, lines, *, stock=None, commit=False, dispatched=False) -> dict:
        """lines: [(catalogue item, quantity)]: a Shopify order, its NetSuite sales order, a Clarus goods
        out and the state rows binding them. stock: SKU -> Clarus available (default plenty); commit:
        NetSuite commits the sales order; dispatched: Clarus COMPLETED, NetSuite and Shopify fulfilled."""
        from clarus_pipelines.sandbox.catalog_data import NETSUITE_WEB_CUSTOMER_ID

        order = self.shopify_sb.create_order(
            line_items=[{"variant_id": item.variant_id, "quantity": qty} for item, qty in lines],
            shipping_address=ADDRESS, shipping_lines=STANDARD, email="ada@example.com",
        )
        order_id, name = str(order["id"]), order["name"]
        so_id, _ = self.netsuite.ensure_sales_order(order_id, {
            "entity": {"id": NETSUITE_WEB_CUSTOMER_ID}, "otherrefnum": name, "orderStatus": "B",
            "item": {"items": [{"item": {"id": item.internal_id}, "quantity": qty, "rate": float(item.price)} for item, qty in lines]},
        })
        if commit:
            self.commit_erp()
        order_lines = []
        for (item, qty), line in zip(lines, order["line_items"]):
            sku = clean_sku(item.sku, POLICIES.sku_cleaning)
            if sku not in self.products:
                available = (stock or {}).get(sku, 100)
                self.products[sku] = str(self.clarus_sb.seed_product(sku, item.display_name, available=available)["id"])
            elif stock and sku in stock:
                self.clarus_sb.set_stock(sku, available=stock[sku])
            order_lines.append((str(line["id"]), sku, item, qty))
        carrier_id, service_id = self.clarus_sb.carrier_ids()[("ROYAL_MAIL", "TRACKED_48")]
        body = build_goods_out_body(
            reference=name, account_id=1, warehouse_id=1, expected_date_of_dispatch=utcnow(), external_system_reference1=order_id,
            carrier_id=carrier_id, carrier_service_id=service_id,
            lines=[{"product_id": self.products[sku], "quantity": qty, "external_system_reference1": line_id}
                   for line_id, sku, _, qty in order_lines],
            address={"name": "Ada Byron", "address_1": "1 Test Street", "postcode": "LS1 4AP", "country_code": "GB"},
        )
        goods_out_id, _ = self.clarus.ensure_goods_out(body)
        status = self.clarus_sb.goods_out(goods_out_id)["goods_out_status"]["id"]
        if dispatched:
            self.warehouse(goods_out_id, flush=False)
            status = 6
            self.commit_erp()
            self.netsuite.transform_to_item_fulfilment(
                so_id, [{"item_id": item.internal_id, "quantity": qty} for _, _, item, qty in order_lines], shipment_id=f"S-{order_id}")
            self.shopify.create_fulfillment(order_id, {int(line_id): qty for line_id, _, _, qty in order_lines},
                                            tracking_number="AB123456789GB", company="Royal Mail")
        now = utcnow()
        with self.store.write() as con:
            if self.order_payloads:
                con.execute(
                    "INSERT INTO orders (order_id, order_name, status, clarus_status, payload, received_at, updated_at)"
                    " VALUES (?, ?, 'ACKNOWLEDGED', ?, ?, ?, ?)",
                    [order_id, name, int(status), json.dumps(self.shopify_sb.order(int(order_id))), now, now])
            else:
                con.execute("INSERT INTO orders (order_id, order_name, status, received_at, updated_at)"
                            " VALUES (?, ?, 'ACKNOWLEDGED', ?, ?)", [order_id, name, now, now])
            con.executemany("INSERT INTO order_lines (order_id, line_id, sku, quantity) VALUES (?, ?, ?, ?)",
                            [(order_id, line_id, sku, qty) for line_id, sku, _, qty in order_lines])
            con.execute("INSERT INTO bindings (entity_type, our_id, clarus_id, netsuite_id, created_at, updated_at)"
                        " VALUES ('order', ?, ?, ?, ?, ?)", [order_id, goods_out_id, so_id, now, now])
            for _, sku, item, _ in order_lines:
                con.execute("INSERT INTO items (sku, sku_raw, netsuite_item_id, clarus_product_id, updated_at) VALUES (?, ?, ?, ?, ?)"
                            " ON CONFLICT DO NOTHING", [sku, item.sku, item.internal_id, self.products[sku], now])
        return {"order_id": order_id, "name": name, "so_id": so_id, "goods_out_id": goods_out_id,
                "lines": order_lines, "line_ids": [int(lid) for lid, _, _, _ in order_lines]}

    def commit_erp(self) -> None:
        """Two hours pass in NetSuite: it commits the sales orders waiting (a local world)."""
        self.ns_now[0] += 7200
        self.netsuite_sb.tick()

    def warehouse(self, goods_out_id, until=("COMPLETED",), max_steps: int = 40, *, flush: bool = True) -> dict:
        """The warehouse works the goods out in 5-minute steps until its status is in `until`;
        its webhooks are delivered before this returns."""
        for _ in range(max_steps):
            self.clarus_sb.advance(300)
            if self.clarus_sb.goods_out(goods_out_id)["goods_out_status"]["code"] in until:
                break
        if flush:
            assert self.clarus_sb.webhook_sender.flush(20)
        return self.clarus_sb.goods_out(goods_out_id)

    # ------------------------------------------------------------------ reading our state

    def order_row(self, order_id) -> dict:
        with self.store.read() as con:
            cur = con.execute("SELECT * FROM orders WHERE order_id = ?", [str(order_id)])
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return dict(zip(names, rows[0])) if rows else {}

    def journey(self, order_id) -> list[str]:
        """The order's states in its history, oldest first."""
        with self.store.read() as con:
            return [e["state"] for e in order_journey(con, str(order_id))]

    def causes(self, order_id) -> list[str]:
        with self.store.read() as con:
            return [e["cause"] for e in order_journey(con, str(order_id))]

    def events(self, order_id) -> list[str]:
        with self.store.read() as con:
            return [r[0] for r in con.execute("SELECT state FROM order_events WHERE order_id = ? ORDER BY event_id",
                                              [str(order_id)]).fetchall()]

    def history(self, order_id) -> list[tuple]:
        """(system, state, cause, details) of the order's events, oldest first."""
        with self.store.read() as con:
            return con.execute("SELECT system, state, cause, details::VARCHAR FROM order_events WHERE order_id = ?"
                               " ORDER BY event_id", [str(order_id)]).fetchall()

    def exceptions(self, code: str | None = None) -> list[dict]:
        """Open exceptions, of one code or all."""
        with self.store.read() as con:
            return [e for e in open_exceptions(con) if code is None or e["code"] == code]

    def exception(self, code: str, entity_id) -> tuple | None:
        """(status, resolved_by, message) of one exception, open or not."""
        with self.store.read() as con:
            return con.execute("SELECT status, resolved_by, message FROM exceptions WHERE code = ? AND entity_id = ?",
                               [code, str(entity_id)]).fetchone()
