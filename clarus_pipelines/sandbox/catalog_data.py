"""The sandbox brand's catalogue: one seeded item master shared by NetSuite and Shopify.

NetSuite holds the item master (internal id, `itemId` = SKU, `upcCode`, display name);
Shopify sells variants of it. The data carries the real-world flaws the pipelines must
catch, in fixed, known places:

- all-digit SKUs with leading zeros ("000123"), two of which reached Shopify with the
  zeros stripped ("123") by a spreadsheet import;
- SKUs with characters Clarus rejects ("TEE#OLV-M") or stray spaces (" BELT-BLK-90");
- one Shopify variant SKU typed in lower case;
- barcodes: mostly valid GTIN-13/12/8, a few with a wrong check digit, a few missing;
- Shopify variants whose SKU is not in the master at all.

`build_catalog(seed)` is deterministic: the same seed gives the same ids, names,
barcodes, prices and stock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache

from clarus_pipelines.domain.barcodes import gtin_check_digit

SHOPIFY_LOCATION_ID = 655441491  # matches config/sandbox.yaml tenant.shopify_location_ids
NETSUITE_LOCATION_ID = "1"
NETSUITE_WEB_CUSTOMER_ID = "110"  # "Anonymous Customer" in NetSuite's published examples
GOODWILL_ITEM_ID = "900"  # other charge items for credit memos without goods
SHIPPING_REFUND_ITEM_ID = "901"

# Fixed quirks: (netsuite itemId, shopify sku or None when not sold online, quirk)
_QUIRKY_ITEMS: list[tuple[str, str | None, str, str]] = [
    ("000123", "000123", "Everyday Socks 3-pack - Ecru", "leading_zeros"),
    ("000456", "456", "Everyday Socks 3-pack - Navy", "zeros_stripped_in_shopify"),
    ("001789", "1789", "Wool Hiking Socks - Olive", "zeros_stripped_in_shopify"),
    ("002024", "002024", "Gift Box - Kraft", "leading_zeros"),
    ("000089", "000089", "Laundry Bag - Natural", "leading_zeros"),
    ("007001", "007001", "Care Kit - Cedar", "leading_zeros"),
    ("TEE#OLV-M", "TEE#OLV-M", "Organic Cotton Tee - Olive / M", "invalid_chars"),
    ("SCARF&SILK-RST", "SCARF&SILK-RST", "Silk Scarf - Rust", "invalid_chars"),
    (" BELT-BLK-90", "BELT-BLK-90", "Leather Belt - Black / 90", "stray_spaces"),
    ("MUG-ECR-350 ", "MUG-ECR-350", "Stoneware Mug - Ecru / 350ml", "stray_spaces"),
    ("TOTE-NAT-OS", "tote-nat-os", "Canvas Tote - Natural", "lower_case_in_shopify"),
]

# Variants created in Shopify that the item master never heard of.
_SHOPIFY_ONLY: list[tuple[str, str]] = [
    ("TEE-NAV-XXL", "Organic Cotton Tee - Navy / XXL"),
    ("SAMPLE-SWATCH-SET", "Fabric Swatch Set"),
    ("BUNDLE-XMAS-01", "Winter Bundle"),
]

_PRODUCTS: list[tuple[str, str, list[str], list[str], Decimal]] = [
    # (sku stem, product title, colours, sizes, price)
    ("TEE", "Organic Cotton Tee", ["NAV", "BLK", "ECR"], ["S", "M", "L", "XL"], Decimal("28.00")),
    ("JMP", "Merino Crew Jumper", ["NAV", "OLV", "RST"], ["S", "M", "L"], Decimal("89.00")),
    ("SHIRT", "Linen Shirt", ["WHT", "BLU"], ["M", "L"], Decimal("65.00")),
    ("BEANIE", "Wool Beanie", ["BLK", "MUS", "OLV"], ["OS"], Decimal("24.00")),
    ("SOCK", "Cashmere Socks", ["GRY", "NAV"], ["S", "L"], Decimal("18.00")),
]
_COLOUR_NAMES = {
    "NAV": "Navy", "BLK": "Black", "ECR": "Ecru", "OLV": "Olive", "RST": "Rust", "WHT": "White",
    "BLU": "Sky Blue", "MUS": "Mustard", "GRY": "Grey",
}


@dataclass(frozen=True)
class CatalogItem:
    """One item of the master and, when sold online, its Shopify variant."""

    internal_id: str  # NetSuite internal id
    sku: str  # NetSuite itemId exactly as stored (flaws included)
    display_name: str
    upc: str | None  # NetSuite upcCode (barcode); may have a wrong check digit
    price: Decimal
    shopify_sku: str | None  # the variant's SKU in Shopify; None when not on Shopify
    product_id: int | None
    variant_id: int | None
    inventory_item_id: int | None
    initial_available: int
    quirk: str | None = None  # None for a clean item
    in_master: bool = True

    @property
    def sold_online(self) -> bool:
        return self.variant_id is not None


@dataclass(frozen=True)
class Catalog:
    items: tuple[CatalogItem, ...]  # the NetSuite item master (in_master=True) and Shopify-only variants
    seed: int
    products: dict[int, str] = field(default_factory=dict)  # Shopify product id -> title

    @property
    def master(self) -> list[CatalogItem]:
        return [i for i in self.items if i.in_master]

    @property
    def variants(self) -> list[CatalogItem]:
        return [i for i in self.items if i.sold_online]

    def clean_variants(self) -> list[CatalogItem]:
        """Variants whose Shopify SKU matches the master (after the standard cleaning)."""
        return [i for i in self.variants if i.in_master and i.quirk not in ("zeros_stripped_in_shopify",)]

    def zero_stripped_variants(self) -> list[CatalogItem]:
        return [i for i in self.variants if i.quirk == "zeros_stripped_in_shopify"]

    def unknown_variants(self) -> list[CatalogItem]:
        return [i for i in self.variants if not i.in_master]

    def by_variant_id(self, variant_id: int) -> CatalogItem | None:
        return next((i for i in self.variants if i.variant_id == variant_id), None)

    def by_shopify_sku(self, sku: str) -> CatalogItem | None:
        return next((i for i in self.variants if i.shopify_sku == sku), None)

    def by_internal_id(self, internal_id: str) -> CatalogItem | None:
        return next((i for i in self.master if i.internal_id == internal_id), None)


def _gtin(rng: random.Random, length: int, *, valid: bool = True) -> str:
    prefix = {13: "50", 12: "0", 8: "50"}[length]  # 50: GS1 UK
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - 1 - len(prefix)))
    check = gtin_check_digit(body)
    if not valid:
        check = (check + rng.randint(1, 9)) % 10
    return body + str(check)


@lru_cache(maxsize=16)
def build_catalog(seed: int = 0) -> Catalog:
    """The seeded catalogue (cached: it is immutable)."""
    rng = random.Random(f"catalog:{seed}")
    rows: list[tuple[str, str | None, str, str | None, Decimal, str | None, bool]] = []
    for stem, title, colours, sizes, price in _PRODUCTS:
        for colour in colours:
            for size in sizes:
                sku = f"{stem}-{colour}-{size}"
                name = f"{title} - {_COLOUR_NAMES[colour]}" + ("" if size == "OS" else f" / {size}")
                rows.append((sku, sku, name, title, price, None, True))
    for sku, shopify_sku, name, quirk in _QUIRKY_ITEMS:
        price = Decimal(rng.choice(["12.00", "15.00", "22.00", "35.00", "45.00"]))
        rows.append((sku, shopify_sku, name, name.split(" - ")[0], price, quirk, True))
    rows.append(("JMP-RST-XL", None, "Merino Crew Jumper - Rust / XL", None, Decimal("89.00"), "not_sold_online", True))
    for sku, name in _SHOPIFY_ONLY:
        rows.append((sku, sku, name, name.split(" - ")[0], Decimal("30.00"), "not_in_master", False))

    bad_barcode_at = set(rng.sample(range(len(rows)), 3))
    no_barcode_at = set(rng.sample(sorted(set(range(len(rows))) - bad_barcode_at), 2))
    product_ids: dict[str, int] = {}
    items: list[CatalogItem] = []
    next_internal = 200
    next_variant = 44_000_000_001
    for index, (sku, shopify_sku, name, product_title, price, quirk, in_master) in enumerate(rows):
        if index in no_barcode_at:
            upc = None
        else:
            length = rng.choices([13, 12, 8], weights=[8, 2, 1])[0]
            upc = _gtin(rng, length, valid=index not in bad_barcode_at)
        if in_master:
            internal_id = str(next_internal)
            next_internal += 1
        else:
            internal_id = ""
        if shopify_sku is not None and product_title is not None:
            product_id = product_ids.setdefault(product_title, 8_100_000_001 + len(product_ids))
            variant_id = next_variant
            next_variant += 1
        else:
            product_id = variant_id = None
        items.append(
            CatalogItem(
                internal_id=internal_id, sku=sku, display_name=name, upc=upc, price=price,
                shopify_sku=shopify_sku, product_id=product_id, variant_id=variant_id,
                inventory_item_id=(variant_id + 1_000_000_000) if variant_id else None,
                initial_available=rng.randint(0, 60), quirk=quirk if quirk else None, in_master=in_master,
            )
        )
    return Catalog(items=tuple(items), seed=seed, products={pid: title for title, pid in product_ids.items()})
