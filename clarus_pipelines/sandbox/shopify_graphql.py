"""The Shopify sandbox's GraphQL Admin API, validated against Shopify's published schema.

`shopify_admin_2026-10.json.gz` is the introspection result of the Admin GraphQL API
2026-10 as Shopify publishes it (npm `@shopify/dev-mcp`, see `../shared/shopify/SOURCES.md`).
Every document is parsed and validated against it with graphql-core before anything runs,
so a query or mutation the real API would refuse (unknown field, wrong argument or input
type, deprecated-and-removed input) fails here too. On top of the schema, the rules
Shopify applies at run time and a schema cannot express:

- connections need `first` or `last` (at most 250);
- mutations Shopify marks idempotent (`inventorySetQuantities`, `refundCreate`, other
  inventory mutations) need `@idempotent(key:)`; a repeated key returns the first answer
  and changes nothing;
- `inventorySetQuantities` needs `changeFromQuantity` on every quantity (null skips the
  check; a mismatch is `CHANGE_FROM_QUANTITY_STALE`);
- query cost: each request's cost is computed from the document (objects 1, connections
  2 + `first` x their content, mutations 10) and taken from a bucket of points that
  refills at `restoreRate` per second; a request the bucket cannot pay is answered
  `THROTTLED`, and every answer reports `extensions.cost.throttleStatus`.

Resolvers read the sandbox's own model (`ShopifySandbox`), rendered as GraphQL objects
here; the REST renderings stay the single source of the numbers.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import threading
import time
from collections import OrderedDict
from contextvars import ContextVar
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    build_client_schema,
    execute,
    get_named_type,
    parse,
    validate,
)
from graphql.language import StringValueNode, VariableNode
from graphql.utilities import value_from_ast_untyped

from clarus_pipelines.sandbox.shopify_payments import ShopifyPayments

if TYPE_CHECKING:
    from clarus_pipelines.sandbox.shopify import ShopifySandbox

_BULK: ContextVar[bool] = ContextVar("shopify_bulk_operation", default=False)
BULK_MAX_CONNECTIONS = 5
BULK_MAX_DEPTH = 2
SCHEMA_VERSION = "2026-10"
SCHEMA_PATH = Path(__file__).with_name(f"shopify_admin_{SCHEMA_VERSION}.json.gz")
MAX_PAGE = 250
MAX_QUERY_COST = 1000
MUTATION_COST = 10
IDEMPOTENCY_KEYS_KEPT = 50_000  # a long demo must not grow without bound
# Mutations Shopify requires an idempotency key for (2026-04 and later).
IDEMPOTENT_MUTATIONS = frozenset({
    "inventorySetQuantities", "inventoryAdjustQuantities", "inventoryMoveQuantities", "refundCreate",
})
INVENTORY_REASONS = frozenset({
    "correction", "cycle_count_available", "damaged", "movement_created", "movement_updated", "movement_received",
    "movement_canceled", "other", "promotion", "quality_control", "received", "reservation_created",
    "reservation_deleted", "reservation_updated", "restock", "safety_stock", "shrinkage",
})


@lru_cache(maxsize=2)
def load_schema(path: str | Path = SCHEMA_PATH) -> GraphQLSchema:
    """Shopify's Admin GraphQL schema (cached per process)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return build_client_schema(json.load(fh)["data"])


def schema_problems(document: str) -> list[str]:
    """What Shopify's schema says is wrong with a document ([] when it is valid)."""
    try:
        ast = parse(document)
    except GraphQLError as exc:
        return [exc.message]
    return [e.message for e in validate(load_schema(), ast)]


@lru_cache(maxsize=1024)
def checked_document(schema: GraphQLSchema, query: str) -> tuple[DocumentNode | None, tuple[dict[str, Any], ...]]:
    """`query` parsed and validated against `schema`: (document, errors as Shopify formats them).

    Cached by the document's text: our connectors send the same few documents over and over, and
    validating one against the whole Admin schema costs milliseconds of CPU that the pipeline
    shares in a demo or a bench. A text is still judged on its own (an invalid one is refused
    every time it comes); the parsed document is only read afterwards, never changed.
    """
    try:
        document = parse(query)
    except GraphQLError as exc:
        return None, (exc.formatted,)
    return document, tuple(e.formatted for e in validate(schema, document))


@lru_cache(maxsize=256)
def root_fields(document: str) -> frozenset[str]:
    """The root fields a document selects (`orders`, `fulfillmentCreate`...); empty if it does not parse."""
    try:
        ast = parse(document)
    except GraphQLError:
        return frozenset()
    return frozenset(sel.name.value for d in ast.definitions if isinstance(d, OperationDefinitionNode)
                     for sel in d.selection_set.selections if isinstance(sel, FieldNode))


def gid(kind: str, value: Any) -> str:
    return f"gid://shopify/{kind}/{value}"


def gid_number(value: Any) -> int | None:
    """The numeric id in `gid://shopify/Kind/123` (or a plain number)."""
    text = str(value or "")
    tail = text.rsplit("/", 1)[-1].split("?", 1)[0]
    return int(tail) if tail.isdigit() else None


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"last_id": key}).encode()).decode().rstrip("=")


def _uncursor(token: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["last_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GraphQLError(f"Invalid cursor for current pagination sort: {token!r}") from exc


def connection(items: Sequence[Any], *, first: int | None = None, last: int | None = None, after: str | None = None,
               before: str | None = None, reverse: bool = False, key: Callable[[Any], Any] | None = None,
               **_: Any) -> dict[str, Any]:
    """A Relay connection over `items` (already in their sort order), as Shopify pages them.
    Inside a bulk operation a connection without `first`/`last` returns everything."""
    if first is None and last is None:
        if not _BULK.get():
            raise GraphQLError("you must provide one of first or last")
        first = len(items)
    for name, size in (("first", first), ("last", last)):
        if size is not None and not 0 <= size <= MAX_PAGE and not _BULK.get():
            raise GraphQLError(f"The '{name}' argument must be between 0 and {MAX_PAGE}.")
    key = key or (lambda item: item.get("id") if isinstance(item, Mapping) else id(item))
    ordered = list(reversed(items)) if reverse else list(items)
    keys = [key(item) for item in ordered]
    start, stop = 0, len(ordered)
    if after is not None:
        anchor = _uncursor(after)
        start = keys.index(anchor) + 1 if anchor in keys else len(ordered)
    if before is not None:
        anchor = _uncursor(before)
        stop = keys.index(anchor) if anchor in keys else stop
    window = ordered[start:stop]
    if first is not None:
        page, more_after = window[:first], len(window) > first
        more_before = start > 0
    else:
        page, more_before = window[max(0, len(window) - (last or 0)):], len(window) > (last or 0)
        more_after = stop < len(ordered)
    cursors = [_cursor(key(item)) for item in page]
    return {
        "edges": [{"cursor": c, "node": n} for c, n in zip(cursors, page)],
        "nodes": page,
        "pageInfo": {"hasNextPage": more_after, "hasPreviousPage": more_before,
                     "startCursor": cursors[0] if cursors else None, "endCursor": cursors[-1] if cursors else None},
    }


def default_resolver(source: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
    """Dict lookup by the GraphQL name, then its snake_case; callables get the arguments;
    a list under a `...Connection` type is paged like Shopify pages it."""
    if isinstance(source, Mapping):
        name = info.field_name
        value = source[name] if name in source else source.get(_snake(name))
    else:
        value = getattr(source, info.field_name, None)
    if callable(value):
        value = value(**args)
    if isinstance(value, list) and get_named_type(info.return_type).name.endswith("Connection"):
        return connection(value, **args)
    return value


# ---------------------------------------------------------------------------- cost


class CostBucket:
    """Shopify's calculated-query-cost leaky bucket (points, refilled at `restore_rate`/s)."""

    def __init__(self, maximum: float = 2000.0, restore_rate: float = 100.0, clock: Callable[[], float] = time.monotonic):
        self.maximum, self.restore_rate, self.clock = float(maximum), float(restore_rate), clock
        self._available, self._at = float(maximum), None
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        if self._at is not None:
            self._available = min(self.maximum, self._available + (now - self._at) * self.restore_rate)
        self._at = now

    def take(self, cost: float) -> tuple[bool, float]:
        with self._lock:
            self._refill()
            if cost > self._available:
                return False, self._available
            self._available -= cost
            return True, self._available

    def refund(self, points: float) -> float:
        with self._lock:
            self._available = min(self.maximum, self._available + points)
            return self._available

    def reset(self) -> None:
        with self._lock:
            self._available, self._at = self.maximum, None

    def status(self, available: float) -> dict[str, float]:
        return {"maximumAvailable": self.maximum, "currentlyAvailable": int(available), "restoreRate": self.restore_rate}


def _arg(node: FieldNode, name: str, variables: Mapping[str, Any]) -> Any:
    for argument in node.arguments or ():
        if argument.name.value == name:
            if isinstance(argument.value, VariableNode):
                return variables.get(argument.value.name.value)
            return value_from_ast_untyped(argument.value, variables)
    return None


def query_cost(schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode,
               variables: Mapping[str, Any]) -> int:
    """Shopify's requested cost: scalars 0, objects 1, connections 2 + size x content, mutations 10."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}

    def selection_cost(selections: Any, parent: Any) -> int:
        total = 0
        for sel in selections or ():
            if isinstance(sel, FragmentSpreadNode):
                frag = fragments[sel.name.value]
                total += selection_cost(frag.selection_set.selections, schema.get_type(frag.type_condition.name.value))
            elif isinstance(sel, InlineFragmentNode):
                target = schema.get_type(sel.type_condition.name.value) if sel.type_condition else parent
                total += selection_cost(sel.selection_set.selections, target)
            elif isinstance(sel, FieldNode):
                fields = getattr(parent, "fields", {}) or {}
                definition = fields.get(sel.name.value)
                if definition is None:
                    continue
                named = get_named_type(definition.type)
                if sel.selection_set is None:
                    continue
                inner = selection_cost(sel.selection_set.selections, named)
                if named.name.endswith("Connection"):
                    size = _arg(sel, "first", variables) or _arg(sel, "last", variables) or 0
                    total += 2 + int(size) * inner
                else:
                    total += 1 + inner
        return total

    if operation.operation == OperationType.MUTATION:
        return MUTATION_COST * sum(1 for s in operation.selection_set.selections if isinstance(s, FieldNode))
    return selection_cost(operation.selection_set.selections, schema.query_type)


def _objects(value: Any) -> int:
    """Objects in an answer: Shopify charges what was returned and refunds the rest of the request."""
    if isinstance(value, Mapping):
        return 1 + sum(_objects(v) for v in value.values())
    if isinstance(value, list):
        return sum(_objects(v) for v in value)
    return 0


def idempotency_keys(operation: OperationDefinitionNode, variables: Mapping[str, Any]) -> dict[str, str | None]:
    """Root mutation field (response key) -> its `@idempotent(key:)` value (None when missing)."""
    keys: dict[str, str | None] = {}
    for sel in operation.selection_set.selections:
        if not isinstance(sel, FieldNode) or sel.name.value not in IDEMPOTENT_MUTATIONS:
            continue
        key = None
        for directive in sel.directives or ():
            if directive.name.value == "idempotent":
                for argument in directive.arguments or ():
                    if argument.name.value == "key":
                        value = argument.value
                        if isinstance(value, VariableNode):
                            key = variables.get(value.name.value)
                        elif isinstance(value, StringValueNode):
                            key = value.value
        keys[(sel.alias or sel.name).value] = key
    return keys


# ---------------------------------------------------------------------------- the API


class ShopifyGraphQL:
    """`POST /admin/api/<version>/graphql.json` over a `ShopifySandbox` (call under its lock)."""

    def __init__(self, shop: "ShopifySandbox", *, bucket: CostBucket):
        self.shop = shop
        self.schema = load_schema()
        self.bucket = bucket
        self.idempotent_results: OrderedDict[tuple[str, str], Any] = OrderedDict()  # the newest keys are kept
        self.webhook_subscriptions: dict[int, dict[str, Any]] = {}
        self.throttled: list[dict[str, Any]] = []  # THROTTLED answers given (for tests and the request log)
        self.applied_changes: list[dict[str, Any]] = []  # inventory quantities applied (a replayed key adds none)
        self.bulk_operations: dict[int, dict[str, Any]] = {}
        self.bulk_results: dict[int, bytes] = {}  # JSONL served at /bulk-results/<n>.jsonl
        self.bulk_downloads: list[dict[str, Any]] = []
        self.base_url = "http://localhost"  # set per request: where bulk results are downloaded
        self._subscription_ids = iter(range(1_100_000_000_001, 10**15))
        self._preset_subscriptions_made = False
        self.payments = ShopifyPayments(shop)  # shopifyPaymentsAccount: payouts and balance transactions

    def reset(self) -> None:
        self.bulk_operations.clear()
        self.bulk_results.clear()
        self.idempotent_results.clear()
        self.throttled.clear()
        self.applied_changes.clear()
        self.payments.reset()
        self.bucket.reset()

    # -------------------------------------------------------------- request

    def handle(self, body: Any) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one request body, as Shopify answers it."""
        if not isinstance(body, Mapping) or not isinstance(body.get("query"), str):
            return 400, {"errors": {"query": "Required parameter missing or invalid"}}
        variables = body.get("variables") or {}
        if not isinstance(variables, Mapping):
            return 400, {"errors": {"variables": "must be an object"}}
        document, problems = checked_document(self.schema, body["query"])
        if problems or document is None:
            return 200, {"errors": copy.deepcopy(list(problems))}
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        wanted = body.get("operationName")
        operation = next((o for o in operations if wanted is None or (o.name and o.name.value == wanted)), None)
        if operation is None:
            return 200, {"errors": [{"message": f"Unknown operation named \"{wanted}\"."}]}
        cost = query_cost(self.schema, document, operation, variables)
        if cost > MAX_QUERY_COST:
            return 200, {"errors": [{"message": f"Query cost is {cost}, which exceeds the single query max cost limit "
                                                f"({MAX_QUERY_COST}).", "extensions": {"code": "MAX_COST_EXCEEDED", "cost": cost,
                                                                                       "maxCost": MAX_QUERY_COST}}]}
        allowed, available = self.bucket.take(cost)
        extensions: dict[str, Any] = {"cost": {"requestedQueryCost": cost, "actualQueryCost": None,
                                               "throttleStatus": self.bucket.status(available)}}
        if not allowed:
            self.throttled.append({"at": self.bucket.clock(), "requested": cost, "available": available})
            return 200, {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED",
                                     "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                         "extensions": extensions}
        missing = [name for name, key in idempotency_keys(operation, variables).items() if not key]
        if missing:
            return 200, {"errors": [{"message": f"The @idempotent directive is required for this mutation ({name}).",
                                     "path": [name], "extensions": {"code": "BAD_REQUEST"}} for name in missing],
                         "extensions": extensions}
        self._keys = idempotency_keys(operation, variables) if operation.operation == OperationType.MUTATION else {}
        root = self._mutation_root() if operation.operation == OperationType.MUTATION else self._query_root()
        result = execute(self.schema, document, root_value=root, variable_values=dict(variables),
                         operation_name=wanted, field_resolver=default_resolver)
        actual = cost if operation.operation == OperationType.MUTATION else min(cost, _objects(result.data))
        extensions["cost"].update(actualQueryCost=actual, throttleStatus=self.bucket.status(self.bucket.refund(cost - actual)))
        answer: dict[str, Any] = {}
        if result.errors:
            answer["errors"] = [e.formatted for e in result.errors]
        answer["data"] = result.data
        answer["extensions"] = extensions
        return 200, answer

    # -------------------------------------------------------------- rendering

    def _money(self, amount: Any) -> dict[str, Any]:
        bag = {"amount": str(amount), "currencyCode": self.shop.currency}
        return {"shopMoney": bag, "presentmentMoney": dict(bag)}

    @staticmethod
    def _rest_money(money_set: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not money_set:
            return None
        return {k: {"amount": v["amount"], "currencyCode": v["currency_code"]} for k, v in
                (("shopMoney", money_set["shop_money"]), ("presentmentMoney", money_set["presentment_money"]))}

    def _line(self, line: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": gid("LineItem", line["id"]), "sku": line.get("sku"), "quantity": line["quantity"],
            "currentQuantity": line["current_quantity"], "title": line["title"], "name": line["name"],
            "variantTitle": line.get("variant_title"), "requiresShipping": line["requires_shipping"],
            "isGiftCard": line["gift_card"], "unfulfilledQuantity": line["fulfillable_quantity"],
            "variant": {"id": gid("ProductVariant", line["variant_id"]), "legacyResourceId": str(line["variant_id"])}
            if line.get("variant_id") else None,
            "product": {"id": gid("Product", line["product_id"]), "legacyResourceId": str(line["product_id"])}
            if line.get("product_id") else None,
            "originalUnitPriceSet": self._rest_money(line["price_set"]),
            "customAttributes": [{"key": p["name"], "value": p.get("value")} for p in line.get("properties") or []],
        }

    def _shipping_line(self, sl: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": gid("ShippingLine", sl["id"]), "code": sl.get("code"), "title": sl.get("title") or "",
                "isRemoved": bool(sl.get("is_removed")), "source": sl.get("source"),
                "originalPriceSet": self._rest_money(sl["price_set"])}

    def _fulfillment(self, record: Mapping[str, Any]) -> dict[str, Any]:
        numbers = record.get("tracking_numbers") or []
        urls = record.get("tracking_urls") or []
        return {
            "id": gid("Fulfillment", record["id"]), "legacyResourceId": str(record["id"]), "name": record["name"],
            "status": str(record["status"]).upper(), "createdAt": record["created_at"], "updatedAt": record["updated_at"],
            "trackingInfo": lambda first=None: [
                {"company": record.get("tracking_company"), "number": n, "url": urls[i] if i < len(urls) else None}
                for i, n in enumerate(numbers)][:first],
            "fulfillmentLineItems": [{"id": gid("FulfillmentLineItem", f"{record['id']}{i}"), "quantity": li["quantity"],
                                      "lineItem": self._line(li)} for i, li in enumerate(record.get("line_items") or [])],
            "order": lambda: self._order(self.shop._orders[record["order_id"]]),
        }

    def _refund(self, refund: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": gid("Refund", refund["id"]), "legacyResourceId": str(refund["id"]), "createdAt": refund["created_at"],
            "note": refund.get("note"), "order": lambda: self._order(self.shop._orders[refund["order_id"]]),
            "return": None,
            "totalRefundedSet": self._money(sum(float(t["amount"]) for t in refund.get("transactions") or [])),
            "refundLineItems": [{
                "id": gid("RefundLineItem", r["id"]), "quantity": r["quantity"], "restockType": r["restock_type"].upper(),
                "restocked": r["restock_type"] in ("cancel", "return", "legacy_restock"), "lineItem": self._line(r["line_item"]),
                "location": {"id": gid("Location", r["location_id"])} if r.get("location_id") else None,
                "subtotalSet": self._rest_money(r["subtotal_set"]), "totalTaxSet": self._rest_money(r["total_tax_set"]),
                "priceSet": self._rest_money(r["line_item"]["price_set"]),
            } for r in refund.get("refund_line_items") or []],
            "refundShippingLines": [{
                "id": gid("RefundShippingLine", s["id"]), "shippingLine": self._shipping_line(s["shipping_line"]),
                "subtotalAmountSet": self._rest_money(s["subtotal_amount_set"]), "taxAmountSet": self._money("0.00"),
            } for s in refund.get("refund_shipping_lines") or []],
            "orderAdjustments": [{
                "id": gid("OrderAdjustment", a["id"]), "reason": "REFUND_DISCREPANCY",
                "amountSet": self._rest_money(a["amount_set"]), "taxAmountSet": self._rest_money(a["tax_amount_set"]),
            } for a in refund.get("order_adjustments") or [] if a.get("kind") == "refund_discrepancy"],
            "transactions": [{
                "id": gid("OrderTransaction", t["id"]), "kind": t["kind"].upper(), "status": t["status"].upper(),
                "gateway": t.get("gateway"), "amountSet": self._money(t["amount"]), "createdAt": t["created_at"],
                "processedAt": t.get("processed_at"),
            } for t in refund.get("transactions") or []],
        }

    def _fulfillment_order(self, order: Any) -> dict[str, Any]:
        fo = self.shop._render_fulfillment_order(order)
        rendered = {ln.id: self.shop._render_line(ln) for ln in order.lines}
        return {
            "id": gid("FulfillmentOrder", fo["id"]), "status": fo["status"].upper(),
            "order": lambda: self._order(order),
            "lineItems": [{
                "id": gid("FulfillmentOrderLineItem", item["id"]), "totalQuantity": item["quantity"],
                "remainingQuantity": item["fulfillable_quantity"], "lineItem": self._line(rendered[item["line_item_id"]]),
            } for item in fo["line_items"] if item["line_item_id"] in rendered],
        }

    def _order(self, order: Any) -> dict[str, Any]:
        rest = self.shop._render_order(order)
        status = rest["fulfillment_status"]
        return {
            "id": gid("Order", order.id), "legacyResourceId": str(order.id), "name": rest["name"], "email": rest["email"],
            "phone": rest["phone"], "createdAt": rest["created_at"], "updatedAt": rest["updated_at"],
            "processedAt": rest["processed_at"], "cancelledAt": rest["cancelled_at"], "closedAt": rest["closed_at"],
            "cancelReason": rest["cancel_reason"].upper() if rest["cancel_reason"] else None,
            "displayFinancialStatus": rest["financial_status"].upper(),
            "displayFulfillmentStatus": {None: "UNFULFILLED", "partial": "PARTIALLY_FULFILLED"}.get(status, str(status).upper()),
            "currencyCode": rest["currency"], "note": rest["note"],
            "tags": [t.strip() for t in (rest["tags"] or "").split(",") if t.strip()],
            "totalPriceSet": self._rest_money(rest["total_price_set"]),
            "shippingAddress": self._address(rest["shipping_address"]),
            "lineItems": [self._line(li) for li in rest["line_items"]],
            "shippingLines": lambda includeRemovals=False, **page: connection(
                [self._shipping_line(sl) for sl in rest["shipping_lines"] if includeRemovals or not sl.get("is_removed")], **page),
            "fulfillments": lambda first=None, query=None: [self._fulfillment(f) for f in rest["fulfillments"]][:first],
            "refunds": lambda first=None: [self._refund(r) for r in rest["refunds"]][:first],
            "fulfillmentOrders": lambda displayable=None, query=None, **page: connection([self._fulfillment_order(order)], **page),
        }

    @staticmethod
    def _address(address: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not address:
            return None
        names = " ".join(str(address[k]) for k in ("first_name", "last_name") if address.get(k))
        return {"name": address.get("name") or names or None, "firstName": address.get("first_name"),
                "lastName": address.get("last_name"), "company": address.get("company"), "address1": address.get("address1"),
                "address2": address.get("address2"), "city": address.get("city"), "province": address.get("province"),
                "provinceCode": address.get("province_code"), "zip": address.get("zip"), "country": address.get("country"),
                "countryCodeV2": address.get("country_code"), "phone": address.get("phone")}

    def _variant(self, rest: Mapping[str, Any], product_title: str | None) -> dict[str, Any]:
        return {
            "id": gid("ProductVariant", rest["id"]), "legacyResourceId": str(rest["id"]), "sku": rest.get("sku"),
            "title": rest["title"], "barcode": rest.get("barcode"), "price": rest["price"],
            "inventoryQuantity": rest["inventory_quantity"],
            "product": {"id": gid("Product", rest["product_id"]), "legacyResourceId": str(rest["product_id"]),
                        "title": product_title},
            "inventoryItem": {"id": gid("InventoryItem", rest["inventory_item_id"]),
                              "legacyResourceId": str(rest["inventory_item_id"]), "sku": rest.get("sku"), "tracked": True},
        }

    def _location(self) -> dict[str, Any]:
        shop = self.shop
        return {"id": gid("Location", shop.location_id), "legacyResourceId": str(shop.location_id), "name": "Clarus DC",
                "isActive": True, "inventoryLevels": lambda includeInactive=None, query=None, **page: connection(
                    [self._level(k, v) for k, v in sorted(shop._inventory.items())], **page)}

    def _level(self, key: tuple[int, int], level: Mapping[str, Any]) -> dict[str, Any]:
        item_id, location_id = key
        updated = self.shop._iso(level["updated_at"])
        return {
            "id": gid("InventoryLevel", f"{location_id}?inventory_item_id={item_id}"), "isActive": True,
            "canDeactivate": False, "createdAt": updated, "updatedAt": updated,
            "item": {"id": gid("InventoryItem", item_id), "legacyResourceId": str(item_id)},
            "location": {"id": gid("Location", location_id), "legacyResourceId": str(location_id)},
            "quantities": lambda names: [{"id": gid("InventoryQuantity", f"{item_id}-{n}"), "name": n,
                                          "quantity": level["available"], "updatedAt": updated}
                                         for n in names if n in ("available", "on_hand")],
        }

    # -------------------------------------------------------------- queries

    def _query_root(self) -> dict[str, Any]:
        shop = self.shop
        return {
            "shop": lambda: {"name": "Clarus Sandbox Co", "myshopifyDomain": shop.shop_domain,
                             "currencyCode": shop.currency, "ianaTimezone": "Europe/London"},
            "orders": self._orders,
            "order": lambda id: self._order(shop._orders[gid_number(id)]) if gid_number(id) in shop._orders else None,
            "fulfillment": lambda id: (self._fulfillment(shop._fulfillments[gid_number(id)].record)
                                       if gid_number(id) in shop._fulfillments else None),
            "fulfillmentOrder": lambda id: (self._fulfillment_order(shop._orders[shop._fo_index[gid_number(id)]])
                                            if gid_number(id) in shop._fo_index else None),
            "productVariants": self._variants,
            "location": lambda id=None: self._location() if id is None or gid_number(id) == shop.location_id else None,
            "locations": lambda includeInactive=None, includeLegacy=None, query=None, sortKey=None, **page:
                connection([self._location()], **page),
            "webhookSubscriptions": self._webhook_subscriptions,
            "currentBulkOperation": lambda type="QUERY": next(
                (op for _, op in sorted(self.bulk_operations.items(), reverse=True) if op["type"] == type), None),
            "bulkOperation": lambda id: self.bulk_operations.get(gid_number(id) or 0),
            "shopifyPaymentsAccount": self.payments.account,
        }

    @staticmethod
    def _search_terms(query: str | None) -> list[tuple[str, str, str]]:
        """`updated_at:>='2026-01-01T00:00:00Z' sku:ABC` -> [(field, op, value)] (AND only)."""
        terms = []
        for token in (query or "").split():
            if ":" not in token:
                raise GraphQLError(f"Unsupported search term {token!r}")
            name, rest = token.split(":", 1)
            op = next((o for o in (">=", "<=", ">", "<") if rest.startswith(o)), "")
            terms.append((name, op, rest[len(op):].strip("'\"")))
        return terms

    def _orders(self, query: str | None = None, sortKey: str | None = None, savedSearchId: Any = None,
                **page: Any) -> dict[str, Any]:
        from clarus_pipelines.sandbox.shopify import _parse_time

        orders = sorted(self.shop._orders.values(), key=lambda o: o.id)
        for name, op, value in self._search_terms(query):
            if name in ("updated_at", "created_at"):
                try:
                    bound = _parse_time(value)
                except ValueError as exc:
                    raise GraphQLError(f"Invalid date in search term {name}:{op}{value}") from exc
                compare: dict[str, Callable[[datetime, datetime], bool]] = {
                    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
                    "": lambda a, b: a == b}
                orders = [o for o in orders if compare[op](getattr(o, name), bound)]
            elif name == "id":
                orders = [o for o in orders if str(o.id) == value]
            elif name == "status":
                continue  # the sandbox keeps every order open or cancelled; all are returned
            else:
                raise GraphQLError(f"Unsupported search field {name!r} in the sandbox")
        if sortKey == "UPDATED_AT":
            orders.sort(key=lambda o: (o.updated_at, o.id))
        return connection([self._order(o) for o in orders], key=lambda o: o["legacyResourceId"], **page)

    def _variants(self, query: str | None = None, sortKey: str | None = None, savedSearchId: Any = None,
                  **page: Any) -> dict[str, Any]:
        products = self.shop._render_products()
        variants = [self._variant(v, p["title"]) for p in products for v in p["variants"]]
        variants.sort(key=lambda v: int(v["legacyResourceId"]))
        for name, _, value in self._search_terms(query):
            if name == "sku":
                variants = [v for v in variants if v["sku"] == value]
            elif name == "inventory_item_id":
                variants = [v for v in variants if v["inventoryItem"]["legacyResourceId"] == value]
            else:
                raise GraphQLError(f"Unsupported search field {name!r} in the sandbox")
        return connection(variants, key=lambda v: v["legacyResourceId"], **page)

    def _preset_subscriptions(self) -> None:
        """The shop as its owner left it: one subscription per topic the sandbox sends, pointing at
        its webhook URL (none without one). Made on first use, so a test may change the topics first."""
        if self._preset_subscriptions_made:
            return
        self._preset_subscriptions_made = True
        if self.shop.webhook_url:
            for topic in self.shop.SUBSCRIBED_TOPICS:
                self._webhook_create(topic.upper().replace("/", "_"), {"uri": self.shop.webhook_url})

    def _webhook_subscriptions(self, topics: list[str] | None = None, uri: str | None = None, format: str | None = None,
                               callbackUrl: str | None = None, query: str | None = None, sortKey: str | None = None,
                               **page: Any) -> dict[str, Any]:
        self._preset_subscriptions()
        subs = [s for _, s in sorted(self.webhook_subscriptions.items())
                if (not topics or s["topic"] in topics) and (uri is None or s["uri"] == uri)]
        return connection(subs, key=lambda s: s["legacyResourceId"], **page)

    # -------------------------------------------------------------- mutations

    def _mutation_root(self) -> dict[str, Any]:
        return {
            "fulfillmentCreate": self._fulfillment_create,
            "fulfillmentTrackingInfoUpdate": self._tracking_update,
            "inventorySetQuantities": self._idempotent("inventorySetQuantities", self._inventory_set),
            "inventoryAdjustQuantities": self._idempotent("inventoryAdjustQuantities", self._inventory_adjust),
            "bulkOperationRunQuery": self._bulk_run_query,
            "webhookSubscriptionCreate": self._webhook_create,
            "webhookSubscriptionDelete": self._webhook_delete,
        }

    def _idempotent(self, name: str, apply: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def run(**args: Any) -> dict[str, Any]:
            key = self._keys.get(name) or next(iter(self._keys.values()), None)
            remembered = self.idempotent_results.get((name, str(key)))
            if remembered is not None:
                if remembered[0] != args:
                    return {"userErrors": [{"field": None, "code": "IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
                                            "message": "The idempotency key was already used with different parameters."}]}
                return remembered[1]
            result = apply(**args)
            self.idempotent_results[(name, str(key))] = (args, result)
            while len(self.idempotent_results) > IDEMPOTENCY_KEYS_KEPT:
                self.idempotent_results.popitem(last=False)
            return result
        return run

    @staticmethod
    def _user_errors(status: int, body: Mapping[str, Any], field: list[str]) -> list[dict[str, Any]]:
        errors = body.get("errors")
        messages = errors if isinstance(errors, list) else [json.dumps(errors) if not isinstance(errors, str) else errors]
        return [{"field": field, "message": str(m)} for m in messages]

    def _fulfillment_create(self, fulfillment: Mapping[str, Any], message: str | None = None) -> dict[str, Any]:
        groups = []
        for group in fulfillment.get("lineItemsByFulfillmentOrder") or []:
            item: dict[str, Any] = {"fulfillment_order_id": gid_number(group["fulfillmentOrderId"])}
            if group.get("fulfillmentOrderLineItems"):
                item["fulfillment_order_line_items"] = [
                    {"id": gid_number(li["id"]), "quantity": li["quantity"]} for li in group["fulfillmentOrderLineItems"]]
            groups.append(item)
        tracking = fulfillment.get("trackingInfo") or {}
        status, body = self.shop._create_fulfillment({
            "line_items_by_fulfillment_order": groups,
            "tracking_info": {"number": tracking.get("number") or next(iter(tracking.get("numbers") or []), None),
                              "company": tracking.get("company"),
                              "url": tracking.get("url") or next(iter(tracking.get("urls") or []), None)},
        })
        if status >= 400:
            return {"fulfillment": None, "userErrors": self._user_errors(status, body, ["fulfillment"])}
        return {"fulfillment": self._fulfillment(body["fulfillment"]), "userErrors": []}

    def _tracking_update(self, fulfillmentId: str, trackingInfoInput: Mapping[str, Any],
                         notifyCustomer: bool | None = None) -> dict[str, Any]:
        number = trackingInfoInput.get("number") or next(iter(trackingInfoInput.get("numbers") or []), None)
        url = trackingInfoInput.get("url") or next(iter(trackingInfoInput.get("urls") or []), None)
        status, body = self.shop._update_tracking(gid_number(fulfillmentId) or 0, {
            "tracking_info": {"number": number, "company": trackingInfoInput.get("company"), "url": url}})
        if status >= 400:
            return {"fulfillment": None, "userErrors": [{"field": ["fulfillmentId"], "message": "Fulfillment does not exist."}]}
        return {"fulfillment": self._fulfillment(body["fulfillment"]), "userErrors": []}

    def _inventory_changes(self, name: str, reason: str, rows: Sequence[Mapping[str, Any]], field: str,
                           apply: Callable[[Mapping[str, Any], int], int]) -> dict[str, Any]:
        """Validate every row first (a refused mutation changes nothing), then apply all."""
        shop = self.shop
        errors: list[dict[str, Any]] = []
        if name not in ("available", "on_hand"):
            errors.append({"field": ["input", "name"], "message": "The quantity name must be available or on_hand.",
                           "code": "INVALID_NAME"})
        if reason not in INVENTORY_REASONS:
            errors.append({"field": ["input", "reason"], "message": "The specified reason is invalid.", "code": "INVALID_REASON"})
        keys: list[tuple[int, int]] = []
        for i, row in enumerate(rows):
            key = (gid_number(row["inventoryItemId"]) or 0, gid_number(row["locationId"]) or 0)
            if "changeFromQuantity" not in row:
                errors.append({"field": ["input", field, str(i), "changeFromQuantity"], "code": "CHANGE_FROM_QUANTITY_STALE",
                               "message": "changeFromQuantity must be passed (null to skip the check)."})
            elif key[1] != shop.location_id:
                errors.append({"field": ["input", field, str(i), "locationId"], "code": "INVALID_LOCATION",
                               "message": "The specified location could not be found."})
            elif key not in shop._inventory:
                errors.append({"field": ["input", field, str(i), "inventoryItemId"], "code": "INVALID_INVENTORY_ITEM",
                               "message": "The specified inventory item could not be found."})
            elif row["changeFromQuantity"] is not None and row["changeFromQuantity"] != shop._inventory[key]["available"]:
                errors.append({"field": ["input", field, str(i), "changeFromQuantity"], "code": "CHANGE_FROM_QUANTITY_STALE",
                               "message": "The specified compare quantity does not match the current quantity."})
            elif key in keys:
                errors.append({"field": ["input", field, str(i)], "code": "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR",
                               "message": "The combination of inventoryItemId and locationId must be unique."})
            keys.append(key)
        if len(rows) > MAX_PAGE:
            errors.append({"field": ["input", field], "message": f"At most {MAX_PAGE} quantities per request.",
                           "code": "INVALID_QUANTITY_TOO_HIGH"})
        if errors:
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        now = shop.clock()
        changes = []
        for key, row in zip(keys, rows):
            level = shop._inventory[key]
            before = level["available"]
            level.update(available=apply(row, before), updated_at=now)
            self.applied_changes.append({"inventory_item_id": key[0], "location_id": key[1], "available": level["available"]})
            changes.append({"name": name, "delta": level["available"] - before, "quantityAfterChange": level["available"],
                            "item": {"id": gid("InventoryItem", key[0]), "legacyResourceId": str(key[0])},
                            "location": {"id": gid("Location", key[1]), "legacyResourceId": str(key[1])}})
        group_id = gid("InventoryAdjustmentGroup", shop._next("adjustment"))
        return {"inventoryAdjustmentGroup": {"id": group_id, "reason": reason, "createdAt": shop._iso(now),
                                             "changes": lambda **_: changes}, "userErrors": []}

    def _inventory_set(self, input: Mapping[str, Any]) -> dict[str, Any]:
        return self._inventory_changes(input["name"], input["reason"], input["quantities"], "quantities",
                                       lambda row, before: int(row["quantity"]))

    def _inventory_adjust(self, input: Mapping[str, Any]) -> dict[str, Any]:
        return self._inventory_changes(input["name"], input["reason"], input["changes"], "changes",
                                       lambda row, before: before + int(row["delta"]))

    # -------------------------------------------------------------- bulk operations

    def _bulk_problems(self, document: DocumentNode) -> list[str]:
        """Shopify's bulk query rules: one top-level connection (not node/nodes), at most five
        connections, nested at most two deep, each nested one under a parent selecting `id`."""
        problems = [e.message for e in validate(self.schema, document)]
        if problems:
            return problems
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) != 1 or operations[0].operation != OperationType.QUERY:
            return ["Bulk queries must contain exactly one query operation."]
        roots = [sel for sel in operations[0].selection_set.selections if isinstance(sel, FieldNode)]
        if len(roots) != 1 or roots[0].name.value in ("node", "nodes"):
            return ["Bulk queries must select a single top-level connection field (not node or nodes)."]
        found: list[int] = []
        problems = []

        def walk(selections: Any, parent: Any, depth: int) -> None:
            names = {sel.name.value for sel in selections or () if isinstance(sel, FieldNode) and sel.alias is None}
            for sel in selections or ():
                if not isinstance(sel, FieldNode) or sel.selection_set is None:
                    continue
                definition = (getattr(parent, "fields", {}) or {}).get(sel.name.value)
                if definition is None:
                    continue
                named = get_named_type(definition.type)
                is_connection = named.name.endswith("Connection")
                if is_connection:
                    found.append(depth + 1)
                    if depth >= 1 and "id" not in names:
                        problems.append(f"The parent of the nested connection '{sel.name.value}' must select 'id'.")
                walk(sel.selection_set.selections, named, depth + 1 if is_connection else depth)

        walk(operations[0].selection_set.selections, self.schema.query_type, 0)
        if not found or found[0] != 1:
            problems.append("Bulk queries must contain at least one connection.")
        if len(found) > BULK_MAX_CONNECTIONS:
            problems.append(f"Bulk queries cannot contain more than {BULK_MAX_CONNECTIONS} connections.")
        if max(found, default=0) > BULK_MAX_DEPTH:
            problems.append(f"Bulk queries cannot contain connections nested more than {BULK_MAX_DEPTH} levels deep.")
        return problems

    @staticmethod
    def _jsonl_lines(data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Shopify's bulk JSONL: every node of every connection on its own line; nested ones
        carry `__parentId`. Lists that are not connections stay inside their object."""
        lines: list[dict[str, Any]] = []

        def nodes_of(value: Mapping[str, Any]) -> list[Any]:
            if "edges" in value:
                return [edge.get("node") for edge in value.get("edges") or []]
            return list(value.get("nodes") or [])

        def emit(node: Mapping[str, Any], parent: str | None) -> None:
            line: dict[str, Any] = {}
            children: list[Any] = []
            for key, value in node.items():
                if isinstance(value, Mapping) and ("edges" in value or "nodes" in value):
                    children.extend(nodes_of(value))
                else:
                    line[key] = value
            if parent is not None:
                line["__parentId"] = parent
            lines.append(line)
            for child in children:
                emit(child, node.get("id"))

        for root in data.values():
            for node in nodes_of(root or {}):
                emit(node, None)
        return lines

    def _bulk_run_query(self, query: str, groupObjects: bool) -> dict[str, Any]:
        try:
            document = parse(query)
        except GraphQLError as exc:
            return {"bulkOperation": None, "userErrors": [{"field": ["query"], "message": exc.message, "code": "INVALID"}]}
        problems = self._bulk_problems(document)
        if problems:
            return {"bulkOperation": None,
                    "userErrors": [{"field": ["query"], "message": m, "code": "INVALID"} for m in problems]}
        token = _BULK.set(True)
        try:
            result = execute(self.schema, document, root_value=self._query_root(), field_resolver=default_resolver)
        finally:
            _BULK.reset(token)
        number = len(self.bulk_operations) + 1
        now = self.shop._iso(self.shop.clock())
        op: dict[str, Any] = {"id": gid("BulkOperation", number), "type": "QUERY", "query": query, "createdAt": now,
                              "completedAt": now, "partialDataUrl": None}
        if result.errors:
            op.update(status="FAILED", errorCode="INTERNAL_SERVER_ERROR", objectCount="0", rootObjectCount="0",
                      fileSize=None, url=None)
        else:
            lines = self._jsonl_lines(result.data or {})
            body = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode("utf-8")
            self.bulk_results[number] = body
            op.update(status="COMPLETED", errorCode=None, objectCount=str(len(lines)),
                      rootObjectCount=str(sum(1 for line in lines if "__parentId" not in line)),
                      fileSize=str(len(body)), url=f"{self.base_url}/bulk-results/{number}.jsonl" if lines else None)
        self.bulk_operations[number] = op
        return {"bulkOperation": op, "userErrors": []}

    def _webhook_create(self, topic: str, webhookSubscription: Mapping[str, Any]) -> dict[str, Any]:
        self._preset_subscriptions()
        uri = webhookSubscription.get("uri")
        if not uri:
            return {"webhookSubscription": None, "userErrors": [{"field": ["webhookSubscription", "uri"],
                                                                  "message": "Address can't be blank"}]}
        if any(s["topic"] == topic and s["uri"] == uri for s in self.webhook_subscriptions.values()):
            return {"webhookSubscription": None, "userErrors": [{"field": ["webhookSubscription", "uri"],
                                                                  "message": "Address for this topic has already been taken"}]}
        number = next(self._subscription_ids)
        now = self.shop._iso(self.shop.clock())
        sub = {"id": gid("WebhookSubscription", number), "legacyResourceId": str(number), "topic": topic, "uri": uri,
               "format": webhookSubscription.get("format") or "JSON", "includeFields": webhookSubscription.get("includeFields") or [],
               "filter": webhookSubscription.get("filter"), "name": webhookSubscription.get("name"),
               "metafieldNamespaces": [], "metafields": [], "createdAt": now, "updatedAt": now,
               "apiVersion": {"handle": self.shop.api_version, "displayName": self.shop.api_version, "supported": True}}
        self.webhook_subscriptions[number] = sub
        return {"webhookSubscription": sub, "userErrors": []}

    def _webhook_delete(self, id: str) -> dict[str, Any]:
        self._preset_subscriptions()
        number = gid_number(id)
        if number not in self.webhook_subscriptions:
            return {"deletedWebhookSubscriptionId": None, "userErrors": [{"field": ["id"],
                                                                          "message": "Webhook subscription does not exist"}]}
        del self.webhook_subscriptions[number]
        return {"deletedWebhookSubscriptionId": id, "userErrors": []}
