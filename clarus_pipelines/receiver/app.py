"""The webhook receiver: verify, store durably, then acknowledge.

`Intake.accept` is the one path every delivery takes, whether it came over HTTP or from
`clarus-pipelines replay`: check the size, verify the signature or token on the raw
bytes, parse, work out the topic and dedupe key, and land the event (fsynced) before
answering. `create_app` wraps it in a Starlette app:

    POST /webhooks/shopify          X-Shopify-Hmac-Sha256 over the raw body
    POST /webhooks/clarus/{token}   secret URL token + X-ClarusWMS-* tenant headers
    POST /webhooks/netsuite         X-NetSuite-Signature (see docs/webhooks.md)
    GET  /healthz                   liveness: the process answers (no counters)
    GET  /readyz                    readiness: the landing zone takes a write (503 if not)

Where accepted webhooks go: the landing zone (one fsynced file each), or with
`CLARUS_PIPELINES_STATE_URL=postgresql://...` the PostgreSQL webhook inbox
(`receiver.inbox`: one committed row each, no local disk, no file lock), so any number of
receivers can run side by side. In both (the landing zone with its default syncfs flush)
the checks run on the event loop and concurrent requests share one commit
(`Intake.accept_async`): the PostgreSQL inbox's commits are run back to back by a child
process (`receiver.inbox_writer`), the landing zone's by a worker thread (`receiver.groupcommit`).

Counters and latency go to Prometheus (`receiver.metrics`) on a separate, loopback-bound
port, never on this one.

What needs no body is checked before the body is read (`Intake.precheck`: the Clarus URL
token and tenant headers, the presence of signature headers, NetSuite's timestamp); the
body must then arrive within a time limit. A body outside the contract
(`receiver.contract`) is refused, so whatever is acknowledged can be ingested.

Answers: 200 landed or duplicate (the body says which), 400 outside the body contract
(kept in quarantine with the reason), 401 bad signature/token (only counted), 408 body
too slow, 413 too large, 503 not configured, the landing zone failed or any fault of ours
(the sender retries): never a 5xx for a body. The receiver never opens the DuckDB state:
refusals go to the rejection log, which an ingest asset turns into exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clarus_pipelines.receiver import auth, contract, topics
from clarus_pipelines.receiver.groupcommit import GroupCommit
from clarus_pipelines.receiver.landing import Envelope, LandingZone, LandResult
from clarus_pipelines.policies import TenantPolicy
from clarus_pipelines.receiver.metrics import ReceiverMetrics
from clarus_pipelines.settings import Settings, get_policies, is_postgres_url

if TYPE_CHECKING:  # imported when used: a file-mode worker starts without the PostgreSQL driver
    from clarus_pipelines.receiver.inbox import Inbox
    from clarus_pipelines.receiver.inbox_writer import InboxWriter

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 10.0  # a body slower than this is refused (408): slow senders cannot hold memory
MAX_BODY_ENV = "CLARUS_PIPELINES_RECEIVER_MAX_BODY_BYTES"
BODY_TIMEOUT_ENV = "CLARUS_PIPELINES_RECEIVER_BODY_TIMEOUT_S"
TMP_SWEEP_INTERVAL_S = 60.0
LOOP_CHECK_MAX_BYTES = 64 * 1024  # bodies up to this are checked on the event loop; larger ones in a thread


@dataclass(frozen=True)
class WebhookSecrets:
    """Per-source secrets; a source without one answers 503 rather than accept unverified posts."""

    shopify: str | None = None
    clarus_token: str | None = None
    netsuite: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "WebhookSecrets":
        def value(secret) -> str | None:
            return secret.get_secret_value() if secret is not None and secret.get_secret_value() else None

        return cls(value(settings.shopify_webhook_secret), value(settings.clarus_webhook_token),
                   value(settings.netsuite_webhook_secret))

    def configured(self, source: str) -> bool:
        return bool({"shopify": self.shopify, "clarus": self.clarus_token, "netsuite": self.netsuite}[source])


@dataclass(frozen=True)
class Outcome:
    """How a delivery was answered; `result` is the counter name."""

    status_code: int
    result: str  # landed | duplicate | recovered | rejected | malformed | too_large | unconfigured | error
    source: str
    topic: str | None = None
    landing_id: str | None = None
    reason: str | None = None
    known_topic: bool = True

    @property
    def accepted(self) -> bool:
        return self.status_code < 300

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": self.result}
        if self.landing_id:
            doc["landing_id"] = self.landing_id
        if self.topic:
            doc["topic"] = self.topic
        if not self.known_topic:
            doc["flag"] = "unknown_topic"
        if self.reason:
            doc["reason"] = self.reason
        return doc


class Intake:
    """Verification plus landing; shared by the HTTP handlers and replay. Thread-safe."""

    def __init__(
        self,
        zone: "LandingZone | Inbox",
        secrets: WebhookSecrets,
        tenant: TenantPolicy | None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        netsuite_tolerance_s: float = auth.NETSUITE_TOLERANCE_S,
        metrics: ReceiverMetrics | None = None,
    ):
        self.zone = zone
        self.metrics = metrics or ReceiverMetrics()
        self.secrets = secrets
        self.tenant = tenant
        self.max_body_bytes = max_body_bytes
        self.netsuite_tolerance_s = netsuite_tolerance_s
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.group_commit: GroupCommit | InboxWriter | None = None  # set by the app (see accept_async)

    def count(self, source: str, result: str) -> None:
        with self._counts_lock:
            self._counts[f"{source}.{result}"] += 1
        self.metrics.record(source, result)

    def counters(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(sorted(self._counts.items()))

    # ------------------------------------------------------------------ verification
    def _verify(self, source: str, body: bytes, headers: Mapping[str, str], token: str | None,
                check_freshness: bool) -> auth.AuthResult:
        if source == "shopify":
            return auth.verify_shopify(body, headers, self.secrets.shopify or "")
        if source == "clarus":
            if self.tenant is None:
                return auth.AuthResult(False, "no_tenant_policy")
            return auth.verify_clarus(token or "", headers, self.secrets.clarus_token or "", self.tenant)
        if source == "netsuite":
            return auth.verify_netsuite(body, headers, self.secrets.netsuite or "",
                                        tolerance_s=self.netsuite_tolerance_s if check_freshness else None)
        raise ValueError(f"unknown source {source!r}")

    def _finish(self, outcome: Outcome) -> Outcome:
        self.count(outcome.source, outcome.result)
        if outcome.result in ("rejected", "malformed", "error", "unconfigured", "too_large"):
            log.warning("%s webhook %s (%d): %s", outcome.source, outcome.result, outcome.status_code, outcome.reason)
        elif not outcome.known_topic:
            log.warning("%s webhook with unknown topic %r landed as %s", outcome.source, outcome.topic, outcome.landing_id)
        else:
            log.debug("%s %s %s as %s", outcome.source, outcome.topic, outcome.result, outcome.landing_id)
        return outcome

    def precheck(self, source: str, headers: Mapping[str, str], token: str | None = None) -> Outcome | None:
        """What can be refused before the body is read: no secret, wrong Clarus URL token or tenant,
        missing signature headers, a stale NetSuite timestamp. None when the body is worth reading."""
        if not self.secrets.configured(source):
            return self._finish(Outcome(503, "unconfigured", source, reason=f"no {source} webhook secret configured"))
        headers = topics.lower_case(headers)
        if source == "clarus":
            verdict = (auth.verify_clarus(token or "", headers, self.secrets.clarus_token or "", self.tenant)
                       if self.tenant is not None else auth.AuthResult(False, "no_tenant_policy"))
        elif source == "shopify":
            present = any((headers.get(h) or "").strip() for h in auth.SHOPIFY_HMAC_HEADERS)
            verdict = auth.ACCEPTED if present else auth.AuthResult(False, "missing_signature")
        else:
            verdict = auth.netsuite_headers_present(headers)
            if verdict:
                verdict = auth.netsuite_fresh(headers, tolerance_s=self.netsuite_tolerance_s)
        if verdict:
            return None
        try:
            self.zone.record_rejection(source, verdict.reason)
        except OSError as exc:
            log.error("could not log a %s rejection: %s", source, exc)
        return self._finish(Outcome(401, "rejected", source, reason=verdict.reason))

    # ------------------------------------------------------------------ the path
    def accept(
        self,
        source: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        token: str | None = None,
        via: str = "webhook",
        replay_of: str | None = None,
        replay_tag: str = "1",
        check_freshness: bool = True,
        quarantine_malformed: bool = True,
    ) -> Outcome:
        """Verify and land one delivery; returns how to answer it.

        Replay passes `via='replay'` and, for an event that had landed, `replay_of` (its
        landing id): the replay lands once per (landing, `replay_tag`), so running the
        same replay twice stores nothing new. `check_freshness=False` skips NetSuite's
        timestamp age check (the signature is still verified).
        """
        verdict = self.check(source, body, headers, token=token, via=via, replay_of=replay_of, replay_tag=replay_tag,
                             check_freshness=check_freshness, quarantine_malformed=quarantine_malformed)
        if isinstance(verdict, Refusal):
            return self.settle(verdict)
        try:
            result = self.zone.land(verdict)
        except OSError as exc:
            return self.not_stored(verdict, exc, quarantine_malformed)
        return self.stored(verdict, result)

    async def accept_async(self, source: str, body: bytes, headers: Mapping[str, str], *,
                           token: str | None = None) -> Outcome:
        """`accept` for the HTTP handlers: the checks run on the event loop (in a thread for a
        large body), and with a `group_commit` (the inbox writer, or the landing zone's group
        commit) the row joins the next commit, so a request costs no thread hop of its own. The
        same answers and guarantees as `accept`."""
        if len(body) > LOOP_CHECK_MAX_BYTES or self.group_commit is None:
            return await run_in_threadpool(self.accept, source, body, headers, token=token)
        verdict = self.check(source, body, headers, token=token)
        if isinstance(verdict, Refusal):
            if verdict.log_rejection or verdict.quarantine is not None:  # writes: not on the event loop
                return await run_in_threadpool(self.settle, verdict)
            return self.settle(verdict)
        try:
            result = await self.group_commit.land(verdict)
        except OSError as exc:
            return await run_in_threadpool(self.not_stored, verdict, exc, True)
        return self.stored(verdict, result)

    def check(
        self,
        source: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        token: str | None = None,
        via: str = "webhook",
        replay_of: str | None = None,
        replay_tag: str = "1",
        check_freshness: bool = True,
        quarantine_malformed: bool = True,
    ) -> "Envelope | Refusal":
        """Size, signature or token, body contract, topic and dedupe key: the envelope to store,
        or the refusal to settle. Writes nothing."""
        if len(body) > self.max_body_bytes:
            return Refusal(413, "too_large", source, f"body over {self.max_body_bytes} bytes")
        headers = topics.lower_case(headers)
        if not self.secrets.configured(source):
            return Refusal(503, "unconfigured", source, f"no {source} webhook secret configured")
        verdict = self._verify(source, body, headers, token, check_freshness)
        if not verdict:  # only posts at the door count towards WEBHOOK_REJECTED
            return Refusal(401, "rejected", source, verdict.reason, log_rejection=via == "webhook")

        topic = topics.header_topic(source, headers)
        kept = topics.kept_headers(source, headers)
        try:
            if source == "clarus":  # the topic and the dedupe key come from the body
                payload = contract.parse_body(body)
                topic = topics.clarus_topic(payload)
            else:  # from the headers: the body is only checked
                contract.check_body(body)
                payload = None
            topic = contract.check_topic(topic or topics.UNKNOWN_TOPIC)
            dedupe_key, webhook_id = topics.dedupe_identity(source, topic, headers, payload, body)
        except contract.BodyRefused as exc:
            return self._body_refusal(source, body, kept, via, replay_of, exc.reason, quarantine_malformed)
        except Exception as exc:  # a body we cannot read is refused, never a 5xx
            log.exception("%s webhook body could not be read", source)
            return self._body_refusal(source, body, kept, via, replay_of, f"unreadable body: {type(exc).__name__}",
                                      quarantine_malformed)

        known = topic in topics.KNOWN_TOPICS[source]
        if via == "replay" and replay_of:
            dedupe_key = f"replay:{replay_tag}:{replay_of}"
        return Envelope(source=source, topic=topic, body=body, dedupe_key=dedupe_key, headers=kept, via=via,
                        webhook_id=webhook_id, known_topic=known, replay_of=replay_of)

    def stored(self, envelope: Envelope, result: LandResult) -> Outcome:
        """The answer for an envelope the zone stored (or knew already)."""
        return self._finish(Outcome(200, result.status, envelope.source, envelope.topic, result.landing_id,
                                    known_topic=envelope.known_topic))

    def not_stored(self, envelope: Envelope, exc: OSError, quarantine_malformed: bool) -> Outcome:
        """The answer for an envelope the zone could not store: a row the inbox cannot hold is the
        body's fault (400, kept aside); anything else is ours (503, the sender retries)."""
        if getattr(exc, "row_refused", False):
            return self.settle(self._body_refusal(envelope.source, envelope.body, dict(envelope.headers), envelope.via,
                                                  envelope.replay_of, str(exc.strerror)[:200], quarantine_malformed))
        log.error("%s webhook not stored: %s", envelope.source, exc)
        return self._finish(Outcome(503, "error", envelope.source, envelope.topic, reason=f"landing zone: {exc.strerror}"))

    @staticmethod
    def _body_refusal(source: str, body: bytes, kept: Mapping[str, str], via: str, replay_of: str | None,
                      reason: str, quarantine: bool) -> "Refusal":
        """400 for a body outside the contract, kept in quarantine with the reason unless told not to."""
        kept_aside = Envelope(source=source, topic=topics.UNKNOWN_TOPIC, body=body, dedupe_key="", headers=kept, via=via,
                              replay_of=replay_of, quarantine_reason=reason) if quarantine else None
        return Refusal(400, "malformed", source, reason, topic=topics.UNKNOWN_TOPIC, quarantine=kept_aside)

    def settle(self, refusal: "Refusal") -> Outcome:
        """Keep what a refusal must keep (the rejection line, the quarantined body) and answer it
        (503 when the body cannot be kept)."""
        if refusal.log_rejection:
            try:
                self.zone.record_rejection(refusal.source, refusal.reason)
            except OSError as exc:
                log.error("could not log a %s rejection: %s", refusal.source, exc)
        landing_id = None
        if refusal.quarantine is not None:
            try:
                landing_id = self.zone.quarantine(refusal.quarantine).landing_id
            except OSError as exc:
                return self._finish(Outcome(503, "error", refusal.source, refusal.topic,
                                            reason=f"landing zone: {exc.strerror}"))
        return self._finish(Outcome(refusal.status_code, refusal.result, refusal.source, refusal.topic, landing_id,
                                    reason=refusal.reason))


@dataclass(frozen=True)
class Refusal:
    """A delivery `Intake.check` refused; `Intake.settle` keeps what must be kept and answers it."""

    status_code: int
    result: str
    source: str
    reason: str
    topic: str | None = None
    log_rejection: bool = False  # a post at the door with a bad signature or token: one line in the rejection log
    quarantine: Envelope | None = None  # a body outside the contract, kept with its reason


# ---------------------------------------------------------------------------- HTTP


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing more than `limit` bytes whatever Content-Length claims,
    and giving up (TimeoutError) when it takes longer than `timeout_s` to arrive."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout_s):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"status": "too_large", "reason": f"body over {limit} bytes"}, status_code=413)


class _Answer(JSONResponse):
    """A JSON answer rendered by orjson (the same compact UTF-8 text, a few microseconds sooner)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _answer(outcome: Outcome, *, close: bool = False) -> JSONResponse:
    """The HTTP answer; a refusal before the body was read closes the connection (the body is not drained)."""
    return _Answer(outcome.body(), status_code=outcome.status_code, headers={"connection": "close"} if close else None)


def create_app(
    landing_dir: Path | str,
    *,
    secrets: WebhookSecrets | None = None,
    tenant: TenantPolicy | None = None,
    settings: Settings | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    fsync: bool = True,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    state_url: str | None = None,
) -> Starlette:
    """The receiver app. Secrets and the Clarus tenant default to the environment's settings.

    With a postgresql:// `state_url` (default: the settings' `CLARUS_PIPELINES_STATE_URL`)
    webhooks go to the PostgreSQL inbox and `landing_dir` is not used."""
    settings = settings or Settings()
    secrets = secrets or WebhookSecrets.from_settings(settings)
    if tenant is None:
        tenant = get_policies(settings).tenant
    state_url = state_url if state_url is not None else settings.inbox_url
    zone: LandingZone | Inbox
    in_postgres = is_postgres_url(state_url)
    if in_postgres:
        from clarus_pipelines.receiver.inbox import Inbox

        zone = Inbox(state_url)  # type: ignore[arg-type]
    else:
        zone = LandingZone(landing_dir, fsync=fsync)
    intake = Intake(zone, secrets, tenant, max_body_bytes=max_body_bytes)
    writer: InboxWriter | None = None
    if in_postgres:  # concurrent requests share commits, run back to back by a child process
        from clarus_pipelines.receiver.inbox_writer import InboxWriter

        intake.group_commit = writer = InboxWriter(state_url)  # type: ignore[arg-type]
    elif zone.sync_mode == "syncfs":  # type: ignore[union-attr]
        # concurrent requests share commits; with an fsync per file, threads of their own
        # let the disk take the fsyncs at once
        intake.group_commit = GroupCommit(zone)  # type: ignore[arg-type]

    async def handle(request: Request, source: str, token: str | None = None) -> Response:
        started = time.perf_counter()
        try:
            return await answer(request, source, token)
        finally:
            intake.metrics.observe_latency(source, time.perf_counter() - started)

    async def answer(request: Request, source: str, token: str | None) -> Response:
        try:
            headers = topics.LowerCaseHeaders(request.headers.items())  # decoded once (ASGI names are lower case)
            refused = intake.precheck(source, headers, token)  # before a byte of the body is read
            if refused is not None:
                return _answer(refused, close=True)
            try:
                body = await read_body(request, intake.max_body_bytes, body_timeout_s)
            except BodyTooLarge:
                intake.count(source, "too_large")
                log.warning("%s webhook refused: body over %d bytes", source, intake.max_body_bytes)
                response = _too_large(intake.max_body_bytes)
                response.headers["connection"] = "close"
                return response
            except TimeoutError:
                intake.count(source, "body_timeout")
                log.warning("%s webhook refused: body not received within %.0fs", source, body_timeout_s)
                return JSONResponse({"status": "timeout", "reason": "body too slow"}, status_code=408,
                                    headers={"connection": "close"})
            except ClientDisconnect:
                intake.count(source, "disconnected")
                return Response(status_code=400)
            outcome = await intake.accept_async(source, body, headers, token=token)
            return _answer(outcome)
        except Exception:  # our fault, never the body's: the sender retries
            intake.count(source, "error")
            log.exception("%s webhook: internal error", source)
            return JSONResponse({"status": "error", "reason": "internal error"}, status_code=503)

    async def shopify(request: Request) -> Response:
        return await handle(request, "shopify")

    async def clarus(request: Request) -> Response:
        return await handle(request, "clarus", request.path_params["token"])

    async def netsuite(request: Request) -> Response:
        return await handle(request, "netsuite")

    sources = {s: secrets.configured(s) for s in ("shopify", "clarus", "netsuite")}

    async def healthz(request: Request) -> Response:
        """Liveness: the process and its event loop answer (restart it if not). Which sources
        are configured, no counters (those are `/metrics` on the metrics port, and
        `clarus-pipelines intake-status`)."""
        return JSONResponse({"status": "ok", "sources": sources})

    def landing_zone_takes_a_write() -> str | None:
        """None when a file can be created, written and synced in the landing zone's `_tmp/`
        (in PostgreSQL mode: when the inbox table takes a write)."""
        if in_postgres:
            return zone.check_writable()  # type: ignore[union-attr]
        try:
            with tempfile.NamedTemporaryFile(dir=zone.tmp_dir, prefix=".readyz-") as probe:
                probe.write(b"ready")
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            return f"landing zone not writable: {exc.strerror or exc}"
        return None

    async def readyz(request: Request) -> Response:
        """Readiness: send traffic here only while an accepted webhook can be stored (the
        landing zone takes a write). 503 with the reason otherwise."""
        problem = await run_in_threadpool(landing_zone_takes_a_write)
        if writer is not None and problem is None:  # its child runs (a stopped one is started again)
            problem = await writer.ready()
        doc = {"status": problem or "ready", "sources": sources}
        return JSONResponse(doc, status_code=503 if problem else 200)

    async def sweep_interrupted() -> None:
        """While serving, finish what a killed worker left in `_tmp/` (not only at the next start)."""
        while True:
            await asyncio.sleep(TMP_SWEEP_INTERVAL_S)
            try:
                finished = await run_in_threadpool(zone.finish_interrupted)
            except OSError as exc:
                log.error("could not sweep the landing zone's _tmp/: %s", exc)
                continue
            if finished:
                log.warning("finished %d landing(s) a stopped worker left half committed", finished)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if in_postgres:
            try:
                await run_in_threadpool(zone.ensure_schema)  # type: ignore[union-attr]
            except OSError as exc:  # /readyz says 503 until PostgreSQL answers; posts get 503 meanwhile
                log.error("webhook inbox not ready: %s", exc.strerror or exc)
            try:
                await writer.start()  # type: ignore[union-attr]
            except OSError as exc:  # the first webhook tries again
                log.error("inbox writer process not started: %s", exc.strerror or exc)
            log.info("receiver storing webhooks in %s", zone.root)
            try:
                yield
            finally:
                await writer.close()  # type: ignore[union-attr]
                await run_in_threadpool(zone.close)  # type: ignore[union-attr]
                log.info("receiver stopped")
            return
        finished = await run_in_threadpool(zone.finish_interrupted)
        if finished:
            log.warning("finished %d landing(s) interrupted by an earlier stop", finished)
        log.info("receiver landing webhooks in %s", zone.root)
        sweeper = asyncio.create_task(sweep_interrupted())
        try:
            yield
        finally:
            sweeper.cancel()
            log.info("receiver stopped")

    app = Starlette(
        routes=[
            Route("/webhooks/shopify", shopify, methods=["POST"]),
            Route("/webhooks/clarus/{token}", clarus, methods=["POST"]),
            Route("/webhooks/netsuite", netsuite, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.intake = intake
    app.state.zone = zone
    app.state.metrics = intake.metrics
    return app


def create_app_from_env() -> Starlette:
    """App factory for `uvicorn --factory` and multi-worker serving: everything from the environment."""
    if not logging.getLogger().handlers:  # a spawned worker: same format and masking as its parent
        from clarus_pipelines.logs import configure_logging

        configure_logging()
    settings = Settings()
    max_body = int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES))
    body_timeout = float(os.environ.get(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S))
    app = create_app(settings.landing_path, settings=settings, max_body_bytes=max_body, body_timeout_s=body_timeout,
                     state_url=settings.inbox_url or "")
    from clarus_pipelines.receiver.server import freeze_startup_heap

    freeze_startup_heap()  # a worker process serves right after this
    return app
