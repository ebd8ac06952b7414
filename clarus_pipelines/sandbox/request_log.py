"""Ordered log of the HTTP requests a sandbox system received, for tests and inspection.

`RequestLogMiddleware` wraps a sandbox's whole ASGI app (outside fault injection, so
injected errors are logged too) and appends one entry per request: sequence number,
wall-clock time, method, path, query, response status and the request body (parsed
JSON when it is JSON). Paths under `/_sandbox/` (the inspection API) are not logged.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64_000


@dataclass(frozen=True)
class LoggedRequest:
    seq: int
    time: float  # epoch seconds when the request arrived
    method: str
    path: str
    query: str
    status: int | None  # None when the connection dropped before a response started
    body: Any
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """Thread-safe, append-only list of `LoggedRequest`s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LoggedRequest] = []

    def append(self, **fields: Any) -> None:
        with self._lock:
            self._entries.append(LoggedRequest(seq=len(self._entries) + 1, **fields))

    def entries(self, *, since: int = 0, path_contains: str | None = None, method: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            rows = list(self._entries[since:])
        if path_contains:
            rows = [r for r in rows if path_contains in r.path]
        if method:
            rows = [r for r in rows if r.method == method.upper()]
        return rows

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _decode_body(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw[:MAX_BODY_BYTES].decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, log: RequestLog):
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        started_wall, started = time.time(), time.monotonic()
        chunks: list[bytes] = []
        status: list[int] = []

        # Read the body before the app runs, so a request answered without reading it (an
        # injected fault) is still logged with its body: GraphQL calls differ only there.
        more = scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        replayed = False

        async def logging_receive() -> Message:
            nonlocal replayed
            if chunks and not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            if chunks:
                return await receive()  # after the body: wait for a disconnect, as Starlette does
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                replayed = True
            return message

        async def logging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, logging_receive, logging_send)
        finally:
            self.log.append(
                time=started_wall,
                method=scope["method"],
                path=scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                status=status[0] if status else None,
                body=_decode_body(b"".join(chunks)),
                duration_ms=round((time.monotonic() - started) * 1000, 2),
            )
