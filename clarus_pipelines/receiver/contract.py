"""What an acceptable webhook body is: one contract, checked at the door and relied on by ingest.

Whatever the receiver acknowledges, ingest can store. A body is acceptable when it is
UTF-8 without a byte-order mark, parses as one JSON object, nests at most `MAX_DEPTH`
levels, uses no NaN/Infinity, and no string (key or value) holds a lone UTF-16 surrogate
(`"\\ud83d"`, what JavaScript emits for an emoji cut in half): DuckDB's JSON type and
Arrow refuse those, so one such body would otherwise stop ingestion. A topic is
acceptable when it has the form `<resource>/<event>` in lower case (or is `unknown`), so
its landing folder is one every reader scans.

Anything else is refused with a `BodyRefused` carrying a short reason; the receiver
answers 400 and keeps the body in quarantine, ingest sets the landing aside.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import orjson
import simdjson

MAX_DEPTH = 64
UNKNOWN_TOPIC = "unknown"
TOPIC_FORM = re.compile(r"[a-z][a-z0-9_]{0,62}/[a-z][a-z0-9_]{0,62}")
_BOM = b"\xef\xbb\xbf"
# A lone surrogate can only come from a \uD800-\uDFFF escape (the body is strict UTF-8), so a
# body without one needs no string check; one with an escaped backslash before "u" is merely checked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyRefused(ValueError):
    """A body or topic outside the contract; `reason` is short and holds no body content."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _no_constants(name: str) -> Any:
    raise BodyRefused(f"JSON constant {name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)  # built once: json.loads with options builds one per call


def _check_tree(value: Any, *, strings: bool = True) -> None:
    """Depth and (with `strings`) string checks without recursion (a deep body must not blow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise BodyRefused(f"JSON nested deeper than {MAX_DEPTH} levels")
            if strings:
                for key, child in node.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in node.values() if type(child) in _CONTAINERS)
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise BodyRefused(f"JSON nested deeper than {MAX_DEPTH} levels")
            if strings:
                stack.extend((child, depth + 1) for child in node)
            else:
                stack.extend((child, depth + 1) for child in node if type(child) in _CONTAINERS)
        elif isinstance(node, str):
            _check_text(node)


_CONTAINERS = (dict, list)  # what json.loads builds (exact types: the fast path skips every scalar)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyRefused("JSON string holds a lone UTF-16 surrogate") from None


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or `BodyRefused` saying why it is outside the contract."""
    if body.startswith(_BOM):
        raise BodyRefused("body starts with a byte-order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRefused(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        payload = _DECODER.decode(text)
    except RecursionError:
        raise BodyRefused(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except BodyRefused:
        raise
    except ValueError as exc:
        raise BodyRefused(f"malformed JSON: {exc}"[:200]) from None
    if not isinstance(payload, dict):
        raise BodyRefused(f"JSON body must be an object, got {type(payload).__name__}")
    # nesting can only be deeper than MAX_DEPTH with more than MAX_DEPTH opening brackets
    deep = body.count(b"{") + body.count(b"[") > MAX_DEPTH
    strings = _SURROGATE_ESCAPE.search(body) is not None
    if deep or strings:
        _check_tree(payload, strings=strings)
    return payload


_PARSERS = threading.local()  # a simdjson parser is reused, one per thread (it is not thread-safe)


def _valid_object(body: bytes) -> bool:
    """True when simdjson validates `body` as one JSON object (UTF-8 included), building no
    Python objects: several times faster than any parser that does."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = simdjson.Parser()
    try:
        document = parser.parse(body)
    except Exception:  # noqa: BLE001 - whatever simdjson refuses, parse_body decides and names
        return False
    valid = isinstance(document, simdjson.Object)
    del document  # the parser's buffer is reused by the next parse
    return valid


def check_body(body: bytes) -> None:
    """`parse_body`'s verdict without keeping the value: the receiver needs no payload for a
    source whose topic and dedupe key are in its headers.

    simdjson (when the brackets cannot nest deeper than `MAX_DEPTH`) and orjson (with the
    depth walked) are strict parsers that accept nothing json refuses (they are stricter:
    numbers beyond 64 bits or a double, NaN); whatever they refuse, and any body with a
    surrogate escape, goes to `parse_body`, which decides and names the reason. So the
    bodies accepted and refused, and the reasons, are exactly `parse_body`'s."""
    if not body.startswith(_BOM) and _SURROGATE_ESCAPE.search(body) is None:
        if body.count(b"{") + body.count(b"[") <= MAX_DEPTH:  # too few brackets to nest too deep
            if _valid_object(body):
                return
        else:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                pass
            else:
                if isinstance(payload, dict):
                    _check_tree(payload, strings=False)
                    return
    parse_body(body)


def check_topic(topic: str) -> str:
    """The topic if it has the known form (`orders/create`), else `BodyRefused`."""
    if topic == UNKNOWN_TOPIC or TOPIC_FORM.fullmatch(topic):
        return topic
    raise BodyRefused("topic outside the form <resource>/<event>")
