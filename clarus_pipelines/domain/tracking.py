"""Carrier tracking numbers: naming carriers, normalising numbers, checking formats.

A dispatched parcel's tracking number reaches the customer as a link. A number that
does not fit its carrier's format (a typo, a label from the wrong account, a reference
pasted in the wrong field) gives the customer a dead link, so every number is checked:

1. the carrier name as Clarus (or a person) spelt it is mapped to one code
   (``"Royal Mail"``, ``"royalmail"``, ``"RM"`` -> ``ROYAL_MAIL``; ``"Hermes"`` -> ``EVRI``);
2. the number is normalised: spaces, hyphens and dots removed, upper-cased; a DPD
   28-character label barcode is reduced to the 14-digit parcel number inside it;
3. the number must fully match one of the carrier's shapes: the built-in ones below, or,
   when ``policies.tracking_patterns`` names the carrier, that pattern instead;
4. where the carrier publishes a check digit for that shape (UPU S10 for Royal Mail,
   UPS 1Z, DHL Express waybills, FedEx Express and Ground, DPD label barcodes), it must
   be right.

A carrier we have no shape for is not guessed at: its numbers are "unchecked", never
reported as invalid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from clarus_pipelines.policies import Policies

Status = Literal["ok", "missing", "invalid", "unchecked"]

# ------------------------------------------------------------------ check digits


def _s10_ok(number: str) -> bool:
    """UPU S10 (Royal Mail's 13-character numbers): weights 8,6,4,2,3,5,9,7 mod 11."""
    digits = number[2:10]
    total = sum(int(d) * w for d, w in zip(digits, (8, 6, 4, 2, 3, 5, 9, 7)))
    remainder = total % 11
    check = 0 if remainder == 1 else 5 if remainder == 0 else 11 - remainder
    return check == int(number[10])


def _ups_ok(number: str) -> bool:
    """UPS 1Z: mod 10 over characters 3-17, letters as (ord - 3) % 10, odd positions doubled."""
    total = 0
    for index, char in enumerate(number[2:17]):
        value = int(char) if char.isdigit() else (ord(char) - 3) % 10
        total += value * 2 if index % 2 else value
    check = (10 - total % 10) % 10
    return number[17].isdigit() and check == int(number[17])


def _mod7_ok(number: str) -> bool:
    """DHL Express waybill: the last digit is the rest of the number modulo 7."""
    return int(number[:-1]) % 7 == int(number[-1])


def _fedex_express_ok(number: str) -> bool:
    """FedEx Express 12 digits: weights 3,1,7 over the first 11, mod 11 then mod 10."""
    total = sum(int(d) * w for d, w in zip(number[:11], (3, 1, 7) * 4))
    return total % 11 % 10 == int(number[11])


def _mod10_ok(sequence: str, check: str, even_weight: int, odd_weight: int) -> bool:
    total = sum(int(d) * (odd_weight if i % 2 else even_weight) for i, d in enumerate(sequence))
    return (10 - total % 10) % 10 == int(check)


def _fedex_ground_ok(number: str) -> bool:
    """FedEx Ground 15 digits: mod 10, weights 1 and 3 alternating."""
    return _mod10_ok(number[:14], number[14], 1, 3)


def _fedex_96_ok(number: str) -> bool:
    """FedEx Ground '96' 22 digits: mod 10 (weights 1, 3) over the 14-digit serial."""
    return _mod10_ok(number[7:21], number[21], 1, 3)


_MOD36_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _mod37_36_check(sequence: str) -> str:
    """ISO 7064 MOD 37,36 check character, as DPD's parcel label specification uses."""
    modulus = 36
    check = modulus
    for char in sequence:
        check += _MOD36_ALPHABET.index(char)
        if check > modulus:
            check -= modulus
        check *= 2
        if check > modulus:
            check -= modulus + 1
    check = (modulus + 1 - check) % modulus
    return _MOD36_ALPHABET[check]


def _dpd_barcode_ok(number: str) -> bool:
    return _mod37_36_check(number[:-1]) == number[-1]


# --------------------------------------------------------------------- formats


@dataclass(frozen=True)
class TrackingFormat:
    """One shape a carrier's numbers take, with its check digit rule if any."""

    name: str
    pattern: str
    check_digit: Callable[[str], bool] | None = None

    def matches(self, number: str) -> bool:
        return re.fullmatch(self.pattern, number) is not None


@dataclass(frozen=True)
class Carrier:
    code: str
    shopify_company: str  # as Shopify's list of supported tracking companies spells it
    url_template: str  # {number} is replaced by the tracking number
    formats: tuple[TrackingFormat, ...]


CARRIERS: dict[str, Carrier] = {
    c.code: c
    for c in (
        Carrier(
            "ROYAL_MAIL", "Royal Mail", "https://www.royalmail.com/track-your-item#/tracking-results/{number}",
            (TrackingFormat("Royal Mail (UPU S10)", r"[A-Z]{2}\d{9}GB", _s10_ok),),
        ),
        Carrier(
            "DPD", "DPD UK", "https://track.dpd.co.uk/parcels/{number}",
            (
                TrackingFormat("DPD parcel number", r"\d{14}"),
                TrackingFormat("DPD label barcode", r"\d{27}[0-9A-Z]", _dpd_barcode_ok),
            ),
        ),
        Carrier(
            "DHL", "DHL Express", "https://www.dhl.com/gb-en/home/tracking.html?tracking-id={number}",
            (
                TrackingFormat("DHL Express waybill", r"\d{10,11}", _mod7_ok),
                TrackingFormat("DHL piece id", r"J[A-Z]{2,3}\d{9,10}"),
                TrackingFormat("DHL Parcel UK", r"JD\d{18}"),
            ),
        ),
        Carrier(
            "UPS", "UPS", "https://www.ups.com/track?tracknum={number}",
            (TrackingFormat("UPS 1Z", r"1Z[0-9A-Z]{16}", _ups_ok),),
        ),
        Carrier(
            "EVRI", "Evri", "https://www.evri.com/track/parcel/{number}",
            # Evri prints a 16-character barcode number and publishes no check digit.
            (TrackingFormat("Evri parcel barcode", r"[A-Z0-9]{16}"),),
        ),
        Carrier(
            "FEDEX", "FedEx", "https://www.fedex.com/fedextrack/?trknbr={number}",
            (
                TrackingFormat("FedEx Express", r"\d{12}", _fedex_express_ok),
                TrackingFormat("FedEx Ground", r"\d{15}", _fedex_ground_ok),
                TrackingFormat("FedEx Ground 96", r"96\d{20}", _fedex_96_ok),
            ),
        ),
    )
}

_ALIASES = {
    "ROYALMAIL": "ROYAL_MAIL", "RM": "ROYAL_MAIL", "RMG": "ROYAL_MAIL", "ROYAL_MAIL_TRACKED": "ROYAL_MAIL",
    "DPD_UK": "DPD", "DPDUK": "DPD", "DPD_LOCAL": "DPD",
    "DHL_EXPRESS": "DHL", "DHLEXPRESS": "DHL", "DHL_PARCEL": "DHL", "DHL_PARCEL_UK": "DHL", "DHL_ECOMMERCE": "DHL",
    "UNITED_PARCEL_SERVICE": "UPS",
    "HERMES": "EVRI", "MYHERMES": "EVRI", "HERMES_UK": "EVRI", "EVRI_UK": "EVRI",
    "FED_EX": "FEDEX", "FEDERAL_EXPRESS": "FEDEX", "FEDEX_UK": "FEDEX",
}


def normalise_carrier(name: str | None) -> str | None:
    """The carrier code for a name as any system spells it ("Royal Mail" -> "ROYAL_MAIL")."""
    if name is None:
        return None
    code = re.sub(r"[^A-Z0-9]+", "_", str(name).strip().upper()).strip("_")
    if not code:
        return None
    return _ALIASES.get(code, _ALIASES.get(code.replace("_", ""), code))


def normalise_tracking_number(value: object) -> str | None:
    """Upper-cased with spaces, hyphens and dots removed; None when nothing is left.

    A number that reached us as a JSON number (Shopify's own sample does this) is
    accepted as its digits; a float would have lost digits already and is refused.
    """
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"a tracking number must be text, got {type(value).__name__} {value!r}")
    text = re.sub(r"[\s\-.]+", "", str(value)).upper()
    if text.startswith("%") and len(text) == 29:  # DPD barcodes are printed with a leading '%'
        text = text[1:]
    return text or None


def _canonical_number(carrier: str | None, number: str) -> str:
    if carrier == "DPD" and re.fullmatch(r"\d{27}[0-9A-Z]", number):
        return number[7:21]  # the parcel number inside the label barcode
    return number


@dataclass(frozen=True)
class TrackingCheck:
    """The verdict on one (carrier, tracking number) pair."""

    status: Status
    carrier: str | None  # normalised carrier code
    number: str | None  # normalised tracking number (what we store and send)
    format: str | None  # the shape it matched
    reason: str  # human-readable, safe to show and log
    url: str | None  # the carrier's tracking page for it

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unchecked")


class TrackingRules:
    """The carriers' formats with `policies.tracking_patterns` applied."""

    def __init__(self, patterns: Mapping[str, str] | None = None):
        self.patterns = {normalise_carrier(k) or k: v for k, v in (patterns or {}).items()}

    @classmethod
    def from_policies(cls, policies: Policies | None) -> "TrackingRules":
        return cls(policies.tracking_patterns if policies else None)

    def known(self, carrier: str | None) -> bool:
        return carrier in CARRIERS or carrier in self.patterns

    def check(self, carrier_name: str | None, tracking_number: object) -> TrackingCheck:
        carrier = normalise_carrier(carrier_name)
        raw = normalise_tracking_number(tracking_number)
        if raw is None:
            return TrackingCheck("missing", carrier, None, None, "no tracking number", None)
        number = _canonical_number(carrier, raw)
        url = tracking_url(carrier, number)
        if not self.known(carrier):
            return TrackingCheck(
                "unchecked", carrier, number, None,
                f"no tracking format known for carrier {carrier_name!r}; add one under tracking_patterns", url,
            )
        builtin = CARRIERS[carrier].formats if carrier in CARRIERS else ()
        configured = self.patterns.get(carrier)
        if configured is not None and re.fullmatch(configured, raw) is None and re.fullmatch(configured, number) is None:
            return TrackingCheck(
                "invalid", carrier, number, None,
                f"{_describe(number).capitalize()} does not fit the {carrier} format configured in tracking_patterns", url,
            )
        shape = next((f for f in builtin if f.matches(raw)), None)
        if shape is None and configured is None:
            expected = ", ".join(f.name for f in builtin)
            return TrackingCheck(
                "invalid", carrier, number, None, f"{_describe(number).capitalize()} fits no {carrier} format ({expected})", url
            )
        if shape is not None and shape.check_digit is not None and not shape.check_digit(raw):
            return TrackingCheck(
                "invalid", carrier, number, shape.name, f"{shape.name} with a wrong check digit", url
            )
        name = shape.name if shape else f"{carrier} (tracking_patterns)"
        return TrackingCheck("ok", carrier, number, name, f"fits {name}", url)


def _describe(number: str) -> str:
    kind = "digit" if number.isdigit() else "character"
    return f"{len(number)}-{kind} number"


def tracking_url(carrier: str | None, number: str | None) -> str | None:
    """The carrier's public tracking page for a number, or None for an unknown carrier."""
    if not number or carrier not in CARRIERS:
        return None
    return CARRIERS[carrier].url_template.format(number=number)


def shopify_tracking_company(carrier: str | None, fallback: str | None = None) -> str | None:
    """The name Shopify recognises for a carrier (so it shows its own tracking link)."""
    if carrier in CARRIERS:
        return CARRIERS[carrier].shopify_company
    return fallback or carrier


def check_many(
    rows: Iterable[tuple[str | None, object]], rules: TrackingRules
) -> list[TrackingCheck]:
    """`rules.check` over (carrier, tracking number) pairs, in order."""
    return [rules.check(carrier, number) for carrier, number in rows]
