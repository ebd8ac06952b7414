"""Non-idempotent writes that must happen once: send, and after an ambiguous failure, look.

`send_with_retries` resends on 5xx and timeouts, which is right for reads but can
duplicate a create whose response was lost. `write_once` sends a create with a single
attempt; when it fails in a way that may have reached the server (timeout, 5xx, a
dropped connection after sending) it calls `recover()` to check whether the write
landed, and only resends when it did not. A 429 or a connection that never opened is
known not to have been processed, so it is resent after the wait the server asked for.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from clarus_pipelines.connectors.http import ConnectorError, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")
SINGLE_ATTEMPT = RetryPolicy(attempts=1)


def not_processed(exc: ConnectorError) -> bool:
    """True when the failed request certainly never reached the server's logic."""
    if exc.status == 429:
        return True
    return isinstance(exc.__cause__, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def retry_after_s(exc: ConnectorError) -> float | None:
    response = getattr(exc.__cause__, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def backoff_s(attempt: int, policy: RetryPolicy, exc: ConnectorError | None = None) -> float:
    asked = retry_after_s(exc) if exc is not None else None
    if asked is not None:
        return min(asked, policy.max_retry_after_s)
    return min(policy.initial_s * 2 ** (attempt - 1), policy.max_backoff_s) + random.uniform(0, policy.jitter_s)


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
    deadline = time.monotonic() + policy.max_elapsed_s
    for attempt in range(1, policy.attempts + 1):
        try:
            return send(), None
        except ConnectorError as exc:
            if not not_processed(exc):
                log.warning("%s %s: %s; checking whether it landed before retrying", system, what, exc)
                outcome = recover()
                if outcome is not None:
                    return None, outcome
            if attempt >= policy.attempts or time.monotonic() >= deadline:
                raise
            time.sleep(backoff_s(attempt, policy, exc))
    raise AssertionError("unreachable")
