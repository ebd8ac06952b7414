"""Non-idempotent writes that must happen once: send, and after an ambiguous failure, look.

`send_with_retries` resends on 5xx and timeouts, which is right for reads but can
duplicate a create whose response was lost. `write_once` sends a create with a single
attempt; when it fails in a way that may have reached the server (timeout, 5xx, a
dropped connection after sending) it calls `recover()` to check whether the write
landed, and only resends when it did not. A 429 or a connection that never opened is
known not to have been processed, so it is resent after the wait the server asked for.
Every connector's non-idempotent write goes through `write_once`, on the same tenacity
engine and Retry-After reading as `send_with_retries`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import httpx

from clarus_pipelines.connectors.http import ConnectorError, RetryPolicy, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")
SINGLE_ATTEMPT = RetryPolicy(attempts=1)


def not_processed(exc: ConnectorError) -> bool:
    """True when the failed request certainly never reached the server's logic."""
    if exc.status == 429:
        return True
    return isinstance(exc.__cause__, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def write_once(
    send: Callable[[], httpx.Response],
    recover: Callable[[], T | None],
    *,
    system: str,
    what: str,
    policy: RetryPolicy,
) -> tuple[httpx.Response | None, T | None]:
    """Run `send` (one attempt each time) until the server answers.

    Returns (response, None) when the server answered (any status: the caller decides
    what a 4xx means), or (None, outcome) when `recover()` found the write had landed.
    Raises the last `ConnectorError` when attempts or time run out.
    """
    found: list[T] = []

    def attempt() -> httpx.Response | None:
        try:
            return send()
        except ConnectorError as exc:
            if not not_processed(exc):
                log.warning("%s %s: %s; checking whether it landed before retrying", system, what, exc)
                outcome = recover()
                if outcome is not None:
                    found.append(outcome)
                    return None
            raise

    response = retrying(policy, lambda exc: isinstance(exc, ConnectorError))(attempt)
    return (None, found[0]) if found else (response, None)
