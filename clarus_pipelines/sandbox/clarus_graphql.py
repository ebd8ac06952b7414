"""GraphQL read API of the Clarus sandbox: the list operations of the spec subset.

Clarus exposes one connection per resource, ``<resource> { all(filter:, first:, after:) }``
with relay-style ``edges { cursor node }`` and ``pageInfo { hasNextPage endCursor }``.
The schema below declares the documented fields and filter input types (names as in the
spec's example queries, e.g. ``GoodsOutsFilterType``) plus the extra fields this project
reads (``updated_at``, ``external_system_reference1``, lines, shipments, tracking).
graphql-core parses, validates and executes queries, so a query asking for an unknown
field or passing a mistyped variable fails like it would against Clarus.

The sandbox supplies data through `Listing`s: rows sorted by id, filter getters and a
record builder. Filtering and paging happen here; cursors are opaque and id-based, so a
page sequence stays consistent while records are added.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from graphql import GraphQLError, GraphQLSchema, build_schema, graphql_sync, parse
from graphql.language import FieldNode, OperationDefinitionNode

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25

# root field -> spec operation (path "/graphql#<operation>")
ROOT_OPERATIONS: dict[str, str] = {
    "goods_outs": "ListGoodsOuts",
    "goods_out_lines": "ListGoodsOutLines",
    "products": "ListProducts",
    "stock_balances": "ListStockBalances",
    "shipments": "ListShipments",
    "packages": "ListPackages",
    "transactions": "ListTransactions",
    "goods_in_receipts": "ListGoodsInReceipts",
    "carriers": "ListCarriers",
    "carrier_services": "ListCarrierServices",
}

SDL = """
input StringInputType { eq: String, ilike: String, like: String, in: [String!], between: [String!] }
input IdInputType { eq: ID, gt: ID, gteq: ID, lt: ID, lteq: ID, in: [ID!], filled: Boolean }
input DatetimeInputType { eq: String, from: String, to: String, between: [String!] }
input DecimalInputType { eq: Float, gt: Float, gteq: Float, lt: Float, lteq: Float, between: [Float!] }
input BooleanInputType { eq: Boolean! }
input StatusCodeInputType { eq: String, in: [String!] }
input SubtypeTypeInputType { eq: String, in: [String!] }

type PageInfo { hasNextPage: Boolean!, hasPreviousPage: Boolean!, startCursor: String, endCursor: String }

type Account { id: ID!, code: String, name: String }
type Warehouse { id: ID!, code: String, name: String }
type Location { id: ID!, code: String }
type User { id: ID! }
type StorageUnitType { id: ID!, code: String }
type GoodsOutStatus { id: ID!, code: String!, name: String! }
type Address {
  name: String, address_1: String, address_2: String, address_3: String, address_4: String, address_5: String,
  code: String, country_code: String, postcode: String, email_address: String, phone_number: String
}
type Carrier {
  id: ID!, code: String!, name: String, description: String, active: Boolean, carrier_type: String,
  carrier_externally_registered: Boolean, external_system_reference1: String, created_at: String
}
type CarrierService { id: ID!, code: String!, name: String, active: Boolean, is_default: Boolean, carrier: Carrier }
type Product {
  id: ID!, code: String, barcode: String, case_barcode: String, description: String, long_description: String,
  product_type: String, units_per_case: Int, shelf_life_min: Int, shelf_life_max: Int, commodity_code: String,
  country_of_manufacture: String, stock_unit_type_id: ID, stop: Boolean, obsolete: Int,
  external_system_reference1: String, external_system_reference2: String, external_system_reference3: String,
  created_at: String, updated_at: String
}
type GoodsOutRef {
  id: ID!, reference: String, external_system_reference1: String, goods_out_status: GoodsOutStatus
}
type GoodsOutLine {
  id: ID!, order_quantity: Float, allocated_quantity: Float, pick_quantity: Float, dispatch_quantity: Float,
  short_status: String, product: Product, goods_out: GoodsOutRef, carrier: Carrier,
  external_system_reference1: String, external_system_reference2: String, external_system_reference3: String,
  alt_line_reference: String, created_at: String, updated_at: String
}
type ShipmentRef { id: ID!, reference: String, tracking_number: String }
type Package {
  id: ID!, reference: String, tracking_number: String, weight: Float, shipment: ShipmentRef,
  storage_unit_type: StorageUnitType
}
type ShipmentLine { goods_out_line_id: ID, external_system_reference1: String, product: Product, quantity: Float }
type Shipment {
  id: ID!, reference: String, name: String, status: String, delivery_notes: String, collection_datetime: String,
  label_filename: String, packages_count: Int, tracking_number: String, carrier: Carrier,
  carrier_service: CarrierService, warehouse: Warehouse, goods_out: GoodsOutRef, packages: [Package!],
  lines: [ShipmentLine!], dispatched_at: String,
  external_system_reference1: String, external_system_reference2: String, external_system_reference3: String,
  created_at: String, updated_at: String
}
type GoodsOut {
  id: ID!, reference: String!, goods_out_type: String, priority: Int, expected_date_of_dispatch: String,
  actual_date_of_dispatch: String, goods_out_status: GoodsOutStatus!, account: Account, warehouse: Warehouse,
  carrier: Carrier, carrier_service: CarrierService, delivery_address: Address,
  external_system_reference1: String, external_system_reference2: String, external_system_reference3: String,
  order_notes: String, delivery_notes: String, lines: [GoodsOutLine!], shipments: [Shipment!],
  created_at: String, updated_at: String
}
type StockBalance {
  id: ID!, available: Float, allocated: Float, ordered: Float, received: Float, picked: Float, on_hand: Float,
  product: Product, account: Account, warehouse: Warehouse, updated_at: String
}
type GoodsInReceiptRef { id: ID!, reference: String }
type Transaction {
  id: ID!, subtype: String, category: String, quantity: Float, created_at: String, product: Product,
  account: Account, warehouse: Warehouse, goods_out: GoodsOutRef, goods_in_receipt: GoodsInReceiptRef,
  location_from: Location, location_to: Location, completing_user: User
}
type GoodsInReceiptLine {
  id: ID!, product: Product, expected_quantity: Float, received_quantity: Float, external_system_reference1: String
}
type GoodsInReceipt {
  id: ID!, reference: String, status: String, receipt_type: String, expected_date_of_receipt: String,
  actual_date_of_receipt: String, notes: String, account: Account, warehouse: Warehouse,
  external_system_reference1: String, external_system_reference2: String, external_system_reference3: String,
  lines: [GoodsInReceiptLine!], created_at: String, updated_at: String
}

input GoodsOutsFilterType {
  id: IdInputType, reference: StringInputType, goods_out_status_code: StringInputType, goods_out_type: StringInputType,
  account_id: IdInputType, warehouse_id: IdInputType, carrier_id: IdInputType,
  expected_date_of_dispatch: DatetimeInputType, external_system_reference1: StringInputType,
  external_system_reference2: StringInputType, external_system_reference3: StringInputType,
  product_code: StringInputType, created_at: DatetimeInputType, updated_at: DatetimeInputType
}
input GoodsOutLineFilterType {
  id: IdInputType, goods_out_id: IdInputType, product_id: IdInputType, account_id: IdInputType,
  warehouse_id: IdInputType, goods_out_status_code: StatusCodeInputType, carrier_id: IdInputType,
  order_quantity: DecimalInputType, pick_quantity: DecimalInputType, product_code: StringInputType,
  goods_out_reference: StringInputType, external_system_reference1: StringInputType,
  created_at: DatetimeInputType, updated_at: DatetimeInputType
}
input ProductsFilterType {
  id: IdInputType, code: StringInputType, barcode: StringInputType, all_codes: StringInputType,
  description: StringInputType, account_id: IdInputType, product_type: StringInputType,
  external_system_reference1: StringInputType, created_at: DatetimeInputType, updated_at: DatetimeInputType
}
input StockBalancesFilterType {
  product_id: IdInputType, product_code: StringInputType, account_id: IdInputType, warehouse_id: IdInputType,
  available: DecimalInputType, allocated: DecimalInputType, picked: DecimalInputType, updated_at: DatetimeInputType
}
input ShipmentFilterType {
  id: IdInputType, reference: StringInputType, status: StringInputType, carrier_id: IdInputType,
  warehouse_id: IdInputType, goods_out_id: IdInputType, tracking_number: StringInputType,
  created_at: DatetimeInputType, updated_at: DatetimeInputType
}
input PackageFilterType {
  id: IdInputType, shipment_id: IdInputType, shipment_reference: StringInputType, storage_unit_id: IdInputType,
  storage_unit_type_code: StringInputType, tracking_number: StringInputType
}
input TransactionFilterType {
  id: IdInputType, subtype: SubtypeTypeInputType, category: StringInputType, product_id: IdInputType,
  account_id: IdInputType, warehouse_id: IdInputType, created_at: DatetimeInputType, goods_out_id: IdInputType,
  goods_in_receipt_id: IdInputType, location_from_id: IdInputType, location_to_id: IdInputType
}
input InboundGoodFilterType {
  id: IdInputType, reference: StringInputType, status: StringInputType, account_id: IdInputType,
  warehouse_id: IdInputType, expected_date_of_receipt: DatetimeInputType,
  external_system_reference1: StringInputType, created_at: DatetimeInputType, updated_at: DatetimeInputType
}
input CarrierFilterType {
  id: IdInputType, code: StringInputType, name: StringInputType, active: BooleanInputType,
  carrier_type: StringInputType, carrier_externally_registered: BooleanInputType,
  external_system_reference1: StringInputType, created_at: DatetimeInputType
}
input CarrierServiceFilterType {
  id: IdInputType, code: StringInputType, name: StringInputType, active: BooleanInputType,
  carrier_id: IdInputType, carrier_code: StringInputType, external_preset_id: IdInputType
}
"""

# root field -> (node type, filter input type)
_CONNECTIONS: dict[str, tuple[str, str]] = {
    "goods_outs": ("GoodsOut", "GoodsOutsFilterType"),
    "goods_out_lines": ("GoodsOutLine", "GoodsOutLineFilterType"),
    "products": ("Product", "ProductsFilterType"),
    "stock_balances": ("StockBalance", "StockBalancesFilterType"),
    "shipments": ("Shipment", "ShipmentFilterType"),
    "packages": ("Package", "PackageFilterType"),
    "transactions": ("Transaction", "TransactionFilterType"),
    "goods_in_receipts": ("GoodsInReceipt", "InboundGoodFilterType"),
    "carriers": ("Carrier", "CarrierFilterType"),
    "carrier_services": ("CarrierService", "CarrierServiceFilterType"),
}


def _full_sdl() -> str:
    parts = [SDL]
    root_fields = []
    for root, (node, filter_type) in _CONNECTIONS.items():
        namespace = f"{node}Query"
        parts.append(
            f"type {node}Edge {{ cursor: String!, node: {node}! }}\n"
            f"type {node}Connection {{ edges: [{node}Edge!]!, pageInfo: PageInfo!, totalCount: Int! }}\n"
            f"type {namespace} {{ all(filter: {filter_type}, first: Int, after: String, include_archived: Boolean): {node}Connection! }}\n"
        )
        root_fields.append(f"  {root}: {namespace}!")
    parts.append("type Query {\n" + "\n".join(root_fields) + "\n}\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- filtering

FilterKind = str  # "id" | "str" | "num" | "dt" | "bool"


@dataclass(frozen=True)
class FilterField:
    kind: FilterKind
    get: Callable[[Any], Any]  # row -> value; may return a list (matches if any element matches)


@dataclass(frozen=True)
class Listing:
    """One resource as the GraphQL layer sees it."""

    rows: Callable[[], Sequence[Any]]  # rows sorted by ascending integer id
    row_id: Callable[[Any], int]
    record: Callable[[Any], dict]
    filters: dict[str, FilterField]


def parse_datetime(value: str) -> float:
    text = value.strip()
    if len(text) == 10:  # a bare date
        text += "T00:00:00"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise GraphQLError(f"invalid date-time {value!r}; use ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _normalise(kind: FilterKind, value: Any) -> Any:
    if value is None:
        return None
    if kind == "id":
        text = str(value)
        return int(text) if text.lstrip("-").isdigit() else text
    if kind == "num":
        return float(value)
    if kind == "dt":
        return parse_datetime(value) if isinstance(value, str) else float(value)
    if kind == "bool":
        return bool(value)
    return str(value)


def _like(pattern: str, value: str, case_sensitive: bool) -> bool:
    if "%" in pattern or "_" in pattern:
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
        return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None
    return pattern in value if case_sensitive else pattern.lower() in value.lower()


def _matches_one(kind: FilterKind, value: Any, op: str, operand: Any) -> bool:
    if op == "filled":
        return (value not in (None, "")) == bool(operand)
    if value is None:
        return False
    if op in ("like", "ilike"):
        return _like(str(operand), str(value), case_sensitive=op == "like")
    if op == "in":
        return value in {_normalise(kind, o) for o in operand}
    if op == "between":
        if len(operand) != 2:
            raise GraphQLError("'between' takes exactly two values")
        low, high = (_normalise(kind, o) for o in operand)
        return low <= value <= high
    target = _normalise(kind, operand)
    try:
        if op == "eq":
            return value == target
        if op in ("gt",):
            return value > target
        if op in ("gteq", "from"):
            return value >= target
        if op == "lt":
            return value < target
        if op in ("lteq", "to"):
            return value <= target
    except TypeError:
        return False
    raise GraphQLError(f"unsupported filter operator {op!r}")


def _row_matches(row: Any, filters: dict[str, FilterField], criteria: dict[str, dict[str, Any]]) -> bool:
    for name, operators in criteria.items():
        if operators is None:
            continue
        field = filters.get(name)
        if field is None:
            raise GraphQLError(f"filter on {name!r} is not supported by this sandbox")
        raw = field.get(row)
        values = raw if isinstance(raw, list) else [raw]
        normalised = [_normalise(field.kind, v) for v in values]
        for op, operand in operators.items():
            if operand is None:
                continue
            if not any(_matches_one(field.kind, v, op, operand) for v in normalised or [None]):
                return False
    return True


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, _, value = base64.urlsafe_b64decode(padded.encode()).decode().partition(":")
        if kind != "id":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise GraphQLError(f"invalid cursor {cursor!r}") from None


def paginate(listing: Listing, filter: dict | None, first: int | None, after: str | None) -> dict:
    """A relay connection page of `listing` rows matching `filter`."""
    size = DEFAULT_PAGE_SIZE if first is None else first
    if size < 0:
        raise GraphQLError("'first' must be >= 0")
    size = min(size, MAX_PAGE_SIZE)
    after_id = decode_cursor(after) if after else None
    matching = [r for r in listing.rows() if _row_matches(r, listing.filters, filter or {})]
    remaining = [r for r in matching if after_id is None or listing.row_id(r) > after_id]
    page = remaining[:size]
    edges = [{"cursor": encode_cursor(listing.row_id(r)), "node": listing.record(r)} for r in page]
    return {
        "edges": edges,
        "pageInfo": {
            "hasNextPage": len(remaining) > len(page),
            "hasPreviousPage": after_id is not None and len(remaining) < len(matching),
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
        "totalCount": len(matching),
    }


# ----------------------------------------------------------------------------- schema and execution


def build_clarus_schema(listings: Callable[[str], Listing]) -> GraphQLSchema:
    """The executable schema; `listings(root_field)` returns the current `Listing`."""
    schema = build_schema(_full_sdl())
    query_type = schema.query_type
    assert query_type is not None
    for root, (node, _) in _CONNECTIONS.items():
        query_type.fields[root].resolve = lambda *_args, _root=root: {"root": _root}
        namespace = schema.get_type(f"{node}Query")
        namespace.fields["all"].resolve = (  # type: ignore[union-attr]
            lambda parent, info, filter=None, first=None, after=None, include_archived=None, _root=root:
            paginate(listings(_root), filter, first, after)
        )
    return schema


def root_fields(query: str, operation_name: str | None = None) -> list[str]:
    """Top-level fields the query selects (parse only; empty if it does not parse)."""
    try:
        document = parse(query)
    except GraphQLError:
        return []
    fields: list[str] = []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        if operation_name and (definition.name is None or definition.name.value != operation_name):
            continue
        for selection in definition.selection_set.selections:
            if isinstance(selection, FieldNode):
                fields.append(selection.name.value)
    return fields


def spec_operation(query: str, operation_name: str | None = None) -> str | None:
    """The spec's GraphQL operation (e.g. ``ListGoodsOuts``) a query document runs."""
    for field in root_fields(query, operation_name):
        if field in ROOT_OPERATIONS:
            return ROOT_OPERATIONS[field]
    return None


def execute(schema: GraphQLSchema, query: str, variables: dict | None, operation_name: str | None) -> dict:
    """Run a query; the result as Clarus answers it (``data`` and/or ``errors``)."""
    result = graphql_sync(schema, query, variable_values=variables, operation_name=operation_name)
    # a request that fails validation has no "data" entry at all (GraphQL spec, "Response")
    body: dict[str, Any] = {} if result.data is None else {"data": result.data}
    if result.errors:
        body["errors"] = [e.formatted for e in result.errors]
    return body
