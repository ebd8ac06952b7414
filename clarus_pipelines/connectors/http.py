"""Shared HTTP plumbing for the connectors: timeouts, retries with backoff and jitter.

Retried: connection errors, timeouts, 5xx and 429. A 429 (or 503) with `Retry-After`
waits what the server asked for. Everything else (4xx) is returned to the caller, which
knows what a 404 or a 422 means for its system.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import dagster as dg
import httpx
from pydantic import Field, PrivateAttr
from clarus_pipelines.domain.ports import ConnectorError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class RetryableStatus(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"{response.request.method} {response.request.url.path} -> {response.status_code}")
        self.response = response


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    max_elapsed_s: float = 60.0
    initial_s: float = 0.2
    max_backoff_s: float = 8.0
    jitter_s: float = 0.3
    max_retry_after_s: float = 30.0


def retry_after_seconds(response: httpx.Response | None) -> float | None:
    """What `Retry-After` asks for, in seconds: a number, or an HTTP date (RFC 9110). None when absent or unreadable."""
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _response_of(exc: BaseException | None) -> httpx.Response | None:
    """The HTTP answer behind a failure: a retryable status, or the one a `ConnectorError` was raised from."""
    if isinstance(exc, RetryableStatus):
        return exc.response
    return getattr(getattr(exc, "__cause__", None), "response", None)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (RetryableStatus, httpx.TransportError))


class RetryAfterWait:
    """Tenacity wait: what a 429/503 asked for in Retry-After (capped), else backoff with jitter."""

    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self.backoff = wait_exponential_jitter(
            initial=policy.initial_s, max=policy.max_backoff_s, jitter=policy.jitter_s
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(_response_of(exc))
        if asked is not None:
            return min(asked, self.policy.max_retry_after_s)
        return self.backoff(state)


def retrying(policy: RetryPolicy, retry_on, *, before_sleep=None) -> Retrying:
    """The one retry engine of the connectors (tenacity): attempts and time from `policy`,
    waits from `RetryAfterWait`, the last error re-raised."""
    return Retrying(
        retry=retry_if_exception(retry_on),
        wait=RetryAfterWait(policy),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_elapsed_s),
        reraise=True,
        before_sleep=before_sleep,
    )


def send_with_retries(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    system: str,
    policy: RetryPolicy = RetryPolicy(),
    **kwargs: Any,
) -> httpx.Response:
    """Send a request, retrying transient failures; returns the final non-retryable response."""
    attempts = retrying(policy, _is_retryable, before_sleep=lambda s: log.warning(
        "%s %s %s failed (%s); retry %d", system, method, url, s.outcome.exception(), s.attempt_number))
    try:
        for attempt in attempts:
            with attempt:
                response = client.request(method, url, **kwargs)
                if response.status_code in RETRYABLE_STATUS:
                    response.read()
                    raise RetryableStatus(response)
                return response
    except RetryableStatus as exc:
        raise ConnectorError(system, str(exc), exc.response.status_code, exc.response.text) from exc
    except httpx.TransportError as exc:
        raise ConnectorError(system, f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


class HttpConnector(dg.ConfigurableResource):
    """Base of the connector resources: one pooled httpx client per resource instance,
    closed when a Dagster step finishes. Subclasses add auth and headers in `_client_options`."""

    base_url: str
    timeout_s: float = 30.0
    max_attempts: int = Field(default=RetryPolicy.attempts, description="Attempts per call for transient failures.")
    max_elapsed_s: float = Field(default=RetryPolicy.max_elapsed_s, description="Give up retrying a call after this long.")
    retry_initial_s: float = Field(default=RetryPolicy.initial_s,
                                   description="Back-off before the first retry, doubled for each retry after it.")
    retry_max_backoff_s: float = Field(default=RetryPolicy.max_backoff_s, description="Longest back-off between two attempts.")
    retry_jitter_s: float = Field(default=RetryPolicy.jitter_s, description="Random extra back-off, up to this much.")

    _client: httpx.Client | None = PrivateAttr(default=None)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

    def _client_options(self) -> dict[str, Any]:
        """Extra `httpx.Client` arguments (auth, headers) for this system."""
        return {}

    def _policy(self, **overrides: Any) -> RetryPolicy:
        """This connector's retry policy (attempts, time and back-off from its fields), `overrides` applied."""
        policy = RetryPolicy(attempts=self.max_attempts, max_elapsed_s=self.max_elapsed_s, initial_s=self.retry_initial_s,
                             max_backoff_s=self.retry_max_backoff_s, jitter_s=self.retry_jitter_s)
        return replace(policy, **overrides)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                options = self._client_options()
                headers = {"Accept": "application/json", "User-Agent": "clarus-pipelines/0.1", **options.pop("headers", {})}
                self._client = httpx.Client(
                    base_url=self.base_url.rstrip("/"), timeout=httpx.Timeout(self.timeout_s), headers=headers, **options
                )
            return self._client
