"""What the receiver did, for Prometheus: webhooks accepted, duplicates, refusals by reason, latency.

Counted per source (shopify, clarus, netsuite). `accepted` is a new webhook stored durably
and acknowledged; `duplicate` a re-delivery we had already stored (also acknowledged);
`refused` everything answered with 4xx/5xx, by reason (rejected = bad signature or token,
malformed = outside the body contract, too_large, body_timeout, disconnected, unconfigured,
error = our fault, the sender retries). Reasons are a fixed set, never request data.

The metrics are served on their own port (`clarus-pipelines receiver --metrics-port`),
bound to 127.0.0.1 unless `--metrics-host` says otherwise, and never on the webhook port:
the public port has no `/metrics`, so nothing leaks to an unauthenticated caller there.
With several workers, prometheus-client's multiprocess mode adds up every worker's counts.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ACCEPTED = frozenset({"landed", "recovered"})
DUPLICATE = "duplicate"
# a webhook is answered well under a second; the tail shows fsync stalls and slow senders
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReceiverMetrics:
    """The receiver's counters and latency histogram, in their own registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.accepted = Counter("clarus_receiver_webhooks_accepted", "New webhooks stored durably and acknowledged.",
                                ["source"], registry=self.registry)
        self.duplicates = Counter("clarus_receiver_webhooks_duplicate",
                                  "Re-deliveries of webhooks already stored (acknowledged, nothing stored twice).",
                                  ["source"], registry=self.registry)
        self.refused = Counter("clarus_receiver_webhooks_refused", "Webhooks answered 4xx/5xx, by reason.",
                               ["source", "reason"], registry=self.registry)
        self.latency = Histogram("clarus_receiver_request_duration_seconds",
                                 "Time from the request's headers to its answer.", ["source"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

        self._children: dict[tuple[str, str], object] = {}  # (source, result) -> its labelled counter

    def record(self, source: str, result: str) -> None:
        """One answered delivery; `result` is the receiver's outcome name."""
        child = self._children.get((source, result))
        if child is None:  # labels() takes a lock and builds a key: once per (source, result), not per webhook
            if result in ACCEPTED:
                child = self.accepted.labels(source)
            elif result == DUPLICATE:
                child = self.duplicates.labels(source)
            else:
                child = self.refused.labels(source, result)
            self._children[(source, result)] = child
        child.inc()  # type: ignore[attr-defined]

    def observe_latency(self, source: str, seconds: float) -> None:
        child = self._children.get((source, "latency"))
        if child is None:
            child = self._children[(source, "latency")] = self.latency.labels(source)
        child.observe(seconds)  # type: ignore[attr-defined]


def prepare_multiprocess_dir() -> tuple[Path, bool]:
    """A fresh directory for the workers' metric files (set before the workers start), and
    whether it is our own temporary one (to remove when the receiver stops)."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        path = Path(existing)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # counts of an earlier run must not be added to this one
            stale.unlink(missing_ok=True)
        return path, False
    path = Path(tempfile.mkdtemp(prefix="clarus-receiver-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def serve_metrics(host: str, port: int, registry: CollectorRegistry | None = None, *, multiprocess_mode: bool = False):
    """Serve `/metrics` on host:port in a background thread; returns the server (`.shutdown()` to stop).

    `multiprocess_mode` serves the sum of every worker's counts (the supervisor's own are none)."""
    if multiprocess_mode:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("receiver metrics served without authentication on %s:%d: keep that port off the internet",
                    host, port)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
