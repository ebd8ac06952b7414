"""Fault injection for the sandbox systems, seeded so a test can reproduce a run.

`FaultConfig` says how often each fault happens; `FaultMiddleware` applies the HTTP
faults (errors, latency, timeouts, 429 bursts) to a system's API, and `WebhookSender`
delivers the system's outgoing webhooks with duplicates and out-of-order delivery.
Paths under `/_sandbox/` (the sandbox's own inspection API) are never faulted.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Literal

import httpx
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

FaultLevel = Literal["none", "light", "heavy"]


@dataclass(frozen=True)
class FaultConfig:
    error_rate: float = 0.0  # share of API calls answered 500/502/503
    latency_ms: tuple[int, int] = (0, 0)  # extra latency range per call
    timeout_rate: float = 0.0  # share of calls that hang past a client's timeout
    timeout_s: float = 15.0
    burst_429_rate: float = 0.0  # chance a call starts a burst of 429s
    burst_429_length: int = 3
    retry_after_s: float = 0.2
    duplicate_webhook_rate: float = 0.0
    out_of_order_rate: float = 0.0  # share of webhooks delayed behind later ones
    webhook_loss_rate: float = 0.0  # share of webhooks never sent (reconciliation must find them)

    @classmethod
    def preset(cls, level: FaultLevel) -> "FaultConfig":
        if level == "none":
            return cls()
        if level == "light":
            return cls(
                error_rate=0.02, latency_ms=(0, 30), burst_429_rate=0.01, duplicate_webhook_rate=0.05,
                out_of_order_rate=0.05, webhook_loss_rate=0.0,
            )
        if level == "heavy":
            return cls(
                error_rate=0.10, latency_ms=(0, 80), timeout_rate=0.01, timeout_s=3.0, burst_429_rate=0.03,
                duplicate_webhook_rate=0.20, out_of_order_rate=0.20, webhook_loss_rate=0.03,
            )
        raise ValueError(f"unknown fault level {level!r}; use none, light or heavy")

    def with_(self, **changes) -> "FaultConfig":
        return replace(self, **changes)


class FaultMiddleware:
    """ASGI middleware that injects the configured HTTP faults, deterministically per seed."""

    def __init__(self, app: ASGIApp, config: FaultConfig, seed: int = 0, system: str = "sandbox"):
        self.app = app
        self.config = config
        self.random = random.Random(f"{system}:{seed}")
        self.system = system
        self._burst_left = 0
        self._lock = threading.Lock()

    def _draw(self) -> tuple[str | None, float]:
        cfg = self.config
        with self._lock:
            latency = self.random.uniform(*cfg.latency_ms) / 1000 if cfg.latency_ms[1] else 0.0
            if self._burst_left > 0:
                self._burst_left -= 1
                return "429", latency
            roll = self.random.random()
            if roll < cfg.burst_429_rate:
                self._burst_left = cfg.burst_429_length - 1
                return "429", latency
            roll = self.random.random()
            if roll < cfg.error_rate:
                return self.random.choice(["500", "502", "503"]), latency
            if self.random.random() < cfg.timeout_rate:
                return "timeout", latency
            return None, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        fault, latency = self._draw()
        if latency:
            await asyncio.sleep(latency)
        if fault == "timeout":
            await asyncio.sleep(self.config.timeout_s)
            fault = "504"
        if fault == "429":
            response = JSONResponse(
                {"errors": "Exceeded API rate limit. Please retry."},
                status_code=429,
                headers={"Retry-After": f"{self.config.retry_after_s:g}"},
            )
            await response(scope, receive, send)
            return
        if fault:
            response = JSONResponse({"errors": [{"title": "injected fault", "status": fault}]}, status_code=int(fault))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class WebhookSender:
    """Delivers a system's outgoing webhooks from a background thread.

    Applies duplicate, out-of-order and loss faults. Delivery is retried on failure
    (connection errors and non-2xx) like the real platforms do, a bounded number of times.
    `sent` records every delivery attempt outcome for tests; `flush()` waits until idle.
    """

    def __init__(self, config: FaultConfig = FaultConfig(), seed: int = 0, system: str = "sandbox", attempts: int = 8):
        self.config = config
        self.random = random.Random(f"webhooks:{system}:{seed}")
        self.system = system
        self.attempts = attempts
        self._queue: queue.Queue[tuple[str, bytes, dict[str, str]] | None] = queue.Queue()
        self._held: list[tuple[str, bytes, dict[str, str]]] = []
        self._pending = 0
        self._idle = threading.Condition()
        self.delivered: list[dict] = []
        self.lost: list[dict] = []
        self.failed: list[dict] = []
        self._thread = threading.Thread(target=self._run, name=f"{system}-webhooks", daemon=True)
        self._thread.start()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        """Queue a webhook for delivery (returns at once)."""
        with self._idle:
            self._pending += 1
        self._queue.put((url, body, dict(headers)))

    def flush(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _done(self, n: int = 1) -> None:
        with self._idle:
            self._pending -= n
            self._idle.notify_all()

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while True:
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    # nothing new: release anything held back for out-of-order delivery
                    held, self._held = self._held, []
                    for h in held:
                        self._deliver(client, *h)
                        self._done()
                    continue
                if item is None:
                    return
                url, body, headers = item
                cfg = self.config
                if self.random.random() < cfg.webhook_loss_rate:
                    self.lost.append({"url": url, "headers": headers})
                    self._done()
                    continue
                if self.random.random() < cfg.out_of_order_rate:
                    self._held.append(item)  # delivered after a later one
                    continue
                self._deliver(client, url, body, headers)
                if self.random.random() < cfg.duplicate_webhook_rate:
                    self._deliver(client, url, body, headers)
                held, self._held = self._held, []
                for h in held:
                    self._deliver(client, *h)
                self._done(1 + len(held))

    def _deliver(self, client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> None:
        delay = 0.05
        for attempt in range(1, self.attempts + 1):
            try:
                response = client.post(url, content=body, headers=headers)
                if response.status_code < 300:
                    self.delivered.append({"url": url, "status": response.status_code, "headers": headers})
                    return
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    self.failed.append({"url": url, "status": response.status_code, "headers": headers})
                    return
            except httpx.HTTPError as exc:
                log.debug("%s webhook to %s failed: %s", self.system, url, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.failed.append({"url": url, "status": None, "headers": headers})
