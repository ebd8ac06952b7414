"""Helpers for tests that talk to sandbox systems over real loopback HTTP.

- `served_clarus(**kwargs)`: a `ClarusSandbox` (responses checked against the spec) served
  by uvicorn on a free port; yields (sandbox, base_url) and fails the test if the sandbox
  ever answered outside its OpenAPI subset.
- `WebhookRecorder`: a tiny Starlette receiver that records every POST (headers, body).
- `wait_until(predicate)`: poll with a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from clarus_pipelines.sandbox.clarus import ClarusSandbox
from clarus_pipelines.sandbox.serving import ServedApp, serve_in_thread


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def clarus_credentials() -> tuple[str, str]:
    """The Clarus client credentials of the test environment (set by tests/conftest.py)."""
    return os.environ["CLARUS_CLIENT_ID"], os.environ["CLARUS_CLIENT_SECRET"]


@contextmanager
def served_clarus(**kwargs: Any) -> Iterator[tuple[ClarusSandbox, str]]:
    client_id, client_secret = clarus_credentials()
    kwargs.setdefault("client_id", client_id)
    kwargs.setdefault("client_secret", client_secret)
    kwargs.setdefault("validate_responses", True)
    sandbox = ClarusSandbox(**kwargs)
    served = serve_in_thread(sandbox.app)
    try:
        yield sandbox, served.url
    finally:
        served.stop()
        sandbox.close()
    assert not sandbox.response_problems, f"sandbox answered outside the spec: {sandbox.response_problems}"


class WebhookRecorder:
    """Records POSTed webhooks; answers `status` (default 200)."""

    def __init__(self, status: int = 200):
        self.status = status
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST"])])
        self._served: ServedApp | None = None

    async def _receive(self, request: Request) -> JSONResponse:
        raw = await request.body()
        with self._lock:
            self.received.append({"path": request.url.path, "headers": dict(request.headers), "raw": raw, "body": json.loads(raw)})
        return JSONResponse({"ok": True}, status_code=self.status)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def __enter__(self) -> "WebhookRecorder":
        self._served = serve_in_thread(self.app)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._served:
            self._served.stop()

    @property
    def url(self) -> str:
        assert self._served is not None, "use WebhookRecorder as a context manager"
        return self._served.url
