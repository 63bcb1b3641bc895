"""The receiver's Starlette app: `POST /hooks/theauthapi/{tenant}` → checks → verify → redact → group commit → 202.

Order of work on a delivery, cheapest first, and nothing parsed before the caller is verified: size (413),
content type (415), tenant (404), token (401), signature over the raw bytes (401), then parse and shape (400).
JSON is read by orjson alone: it refuses invalid UTF-8, lone surrogates, numbers beyond a double and nesting past
1024, and reads an integer wider than 64 bits as the nearest float; the redaction walk refuses nesting past
`MAX_DEPTH` (64). Each refusal is a 400 with its reason. The record's `raw_sha256` is the HMAC-SHA256 of the raw
body keyed by the pepper (the name is kept for the record contract), never a plain hash of a body holding a key.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from broker.queues import (
    DELIVER_QUEUE,
    INGEST_QUEUE,
    PING_TTL_SECONDS,
    alive_key,
    ping_key,
    sink_disabled_key,
)
from config.datadir import pepper as load_pepper
from config.settings import Settings, TenantSettings
from events.envelope import event_key, parse_envelope
from events.redaction import Redactor, TooDeep
from events.times import now_utc
from events.wire import HOOK_PREFIX, PING_FIELD, PING_MARKER, SUBSCRIPTION_TOKEN_HEADER
from ingest.committer import AcceptedEvent, CommitFailed, GroupCommitter
from ingest.health import unserved_queues
from ingest.metrics import ReceiverMetrics
from ingest.verification import VerificationFailed, verify_signature, verify_token

log = structlog.get_logger("keytrail.ingest")
UNKNOWN_TENANT = "-"  # the one metrics label every unconfigured tenant name shares


class Rejected(Exception):
    """Bad input: answered with `status` and a short JSON reason, and never enqueued."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass
class ReceiverState:
    settings: Settings
    redis: AsyncRedis
    committer: GroupCommitter
    metrics: ReceiverMetrics
    redactor: Redactor


def _state(request: Request) -> ReceiverState:
    state: ReceiverState = request.app.state.keytrail
    return state


def _parse_json(body: bytes) -> Any:
    """orjson only: what it refuses (see the module docstring) could not be stored faithfully anyway, and it never
    recurses out (no stdlib fallback: that one raised RecursionError and ValueError on hostile input)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, f"body is not valid JSON: {exc.msg}") from None


def _ping_marker(body: bytes) -> str | None:
    """The marker of a bootstrap ping (`{"keytrail_ping": "…"}`), else None. Only called once the token passed."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    marker = payload.get(PING_FIELD) if isinstance(payload, dict) else None
    return marker if isinstance(marker, str) else None


def _verify(tenant: TenantSettings, headers: Mapping[str, str], body: bytes) -> str | None:
    """Token, then the signature over the raw bytes: both cheap, and nothing is parsed before the token passed.
    Raises Rejected(401); returns the marker of an unsigned ping that passed the token check, else None."""
    try:
        verify_token(tenant, headers)
    except VerificationFailed as exc:
        raise Rejected(401, exc.reason) from None
    try:
        verify_signature(tenant, headers, body)
    except VerificationFailed as exc:
        # The Auth API may not sign pings: once the token passed (and only then) a ping needs nothing more.
        marker = _ping_marker(body) if tenant.token is not None else None
        if marker is not None:
            return marker
        if tenant.token is None and PING_FIELD.encode() in body:  # a hint without parsing an unverified body
            raise Rejected(401, f"pings need the tenant token ({SUBSCRIPTION_TOKEN_HEADER})") from None
        raise Rejected(401, exc.reason) from None
    return None


BodyReader = Callable[[int], Awaitable[bytes]]
Answer = tuple[int, dict[str, Any], dict[str, str] | None]


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def handle_webhook(
    state: ReceiverState, tenant_name: str, headers: Mapping[str, str], read_body: BodyReader
) -> Answer:
    """Accept one delivery: (status, JSON body, extra headers). 202 means the event is in Redis; any 4xx means
    nothing was enqueued. Checks run in the documented order: 413, 415, 404, 401, 400 (then 503 on backpressure)."""
    tenant = state.settings.tenants.get(tenant_name)
    # Only configured tenants get a label of their own: a caller's typed names must not grow /metrics.
    label = tenant_name if tenant is not None else UNKNOWN_TENANT
    try:
        body = await read_body(state.settings.server.max_body_bytes)
        if not _is_json(headers.get("content-type", "")):
            raise Rejected(415, "content-type must be application/json")
        if tenant is None:
            raise Rejected(404, "unknown tenant")
        unsigned_ping = _verify(tenant, headers, body)
        if unsigned_ping is not None:
            return await _receive_ping(state, tenant_name, unsigned_ping)
        payload = _parse_json(body)
        if not isinstance(payload, dict):
            raise Rejected(400, "body must be a JSON object")
        marker = payload.get(PING_FIELD)
        if isinstance(marker, str):
            return await _receive_ping(state, tenant_name, marker)
        try:
            redacted = state.redactor.redact(payload)
        except TooDeep as exc:
            raise Rejected(400, str(exc)) from None
        if await _over_high_water(state):
            retry_after = str(state.settings.ingest.retry_after_seconds)
            raise Rejected(503, "queue above its high-water mark; retry later", {"Retry-After": retry_after})
        envelope = parse_envelope(redacted)
        digest = state.redactor.body_digest(body)
        event = AcceptedEvent(
            tenant=tenant_name,
            event_key=event_key(envelope, digest),
            topic=envelope.topic,
            received_at=now_utc(),
            raw_sha256=digest,
            body=orjson.dumps(redacted).decode(),
        )
        try:
            await state.committer.submit(event)
        except CommitFailed:
            raise Rejected(503, "queue unavailable; retry later", {"Retry-After": "5"}) from None
    except Rejected as exc:
        state.metrics.answered(label, exc.status)
        if exc.status in (401, 503):
            log.warning("webhook_rejected", tenant=label, status=exc.status, reason=exc.reason)
        return exc.status, {"error": exc.reason}, exc.headers
    state.metrics.answered(tenant_name, 202)
    return 202, {"event_id": event.event_key}, None


async def _receive_ping(state: ReceiverState, tenant_name: str, marker: str) -> Answer:
    """A bootstrap ping: recorded so `keytrail subscribe` can see it arrived; never an audit event.

    The Auth API may not add `theauthapi-signature` to pings, so a ping needs only the token, which the caller
    has already checked; a tenant without a token cannot take pings."""
    if state.settings.tenants[tenant_name].token is None:
        raise Rejected(401, f"pings need the tenant token ({SUBSCRIPTION_TOKEN_HEADER})")
    if not PING_MARKER.match(marker):
        raise Rejected(400, f"{PING_FIELD} marker must be 1-128 of [A-Za-z0-9_-]")
    try:
        await state.redis.set(ping_key(tenant_name, marker), str(int(time.time() * 1000)), ex=PING_TTL_SECONDS)
    except RedisError:
        raise Rejected(503, "queue unavailable; retry later", {"Retry-After": "5"}) from None
    log.info("ping_received", tenant=tenant_name, marker=marker)
    state.metrics.answered(tenant_name, 200)
    return 200, {"ping": marker}, None


async def _over_high_water(state: ReceiverState) -> bool:
    committer = state.committer
    if committer.stale():  # checked before any await: on most deliveries there is nothing to read
        with contextlib.suppress(RedisError):
            await committer.refresh_depth()
    return committer.queue_depth >= state.settings.ingest.high_water_mark


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Redis answers, the ingest queue is under its high-water mark, and every queue that has work has a
    live worker (else events would get 202 and wait for a worker nobody runs)."""
    state = _state(request)
    try:
        depth = await state.committer.refresh_depth()
        unserved = await unserved_queues(state.redis)
    except RedisError as exc:
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    state.metrics.queue_depth.set(depth)
    mark = state.settings.ingest.high_water_mark
    body: dict[str, Any] = {"status": "ok", "queue_jobs": depth, "high_water_mark": mark}
    if unserved:
        reasons = [f"queue {queue} has {jobs} jobs waiting and no live worker" for queue, jobs in unserved.items()]
        body.update(status="stalled", reason="; ".join(reasons), unserved_queues=sorted(unserved))
    elif depth >= mark:
        body.update(status="busy", reason="ingest queue at its high-water mark")
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def metrics(request: Request) -> Response:
    """Prometheus text: this receiver's own counters, plus queue, retry and worker gauges read from Redis now."""
    state = _state(request)
    with contextlib.suppress(RedisError):
        await _observe_pipeline(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _observe_pipeline(state: ReceiverState) -> None:
    queues = (INGEST_QUEUE, DELIVER_QUEUE)
    async with state.redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(Queue.redis_queue_namespace_prefix + queue)
            pipe.zcard(ScheduledJobRegistry.key_template.format(queue))
            pipe.zcard(FailedJobRegistry.key_template.format(queue))
        counts = await pipe.execute()
    for index, queue in enumerate(queues):
        queued, scheduled, failed = counts[index * 3 : index * 3 + 3]
        state.metrics.jobs.labels(queue, "queued").set(queued)
        state.metrics.jobs.labels(queue, "scheduled").set(scheduled)
        state.metrics.jobs.labels(queue, "failed").set(failed)
    alive = [key async for key in state.redis.scan_iter(match=alive_key("*"), count=500)]
    state.metrics.workers.set(len(alive))
    disabled = [s.name for s in state.settings.sinks if await state.redis.exists(sink_disabled_key(s.name))]
    state.metrics.sinks_disabled.set(len(disabled))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


class Receiver:
    """The receiver's ASGI entry point. `/hooks/theauthapi/{tenant}` is answered here directly; every other request
    (health, metrics, the audit API, the page) and the lifespan go to the Starlette app.

    Why: the webhook route is the one hot path, and each request suspends once (until its batch is in Redis).
    Resuming through Starlette's router and middleware stack cost more than the handler's own work; answered here,
    the receiver serves about a third more deliveries per second (bench/receiver.py)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(HOOK_PREFIX):
            tenant = path[len(HOOK_PREFIX) :]
            if tenant and "/" not in tenant:
                if scope["method"] == "POST":
                    await self._webhook(scope, receive, send, tenant)
                else:
                    await _send_json(
                        send, 405, {"error": "method not allowed; deliveries are POSTed"}, {"Allow": "POST"}
                    )
                return
        await self.app(scope, receive, send)

    async def _webhook(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}

        async def read_body(limit: int) -> bytes:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise Rejected(413, f"body larger than {limit} bytes")
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Rejected(400, "client disconnected")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise Rejected(413, f"body larger than {limit} bytes")
                chunks.append(chunk)
                more = message.get("more_body", False)
            return b"".join(chunks)

        state: ReceiverState = self.state.keytrail
        try:
            status, payload, extra = await handle_webhook(state, tenant, headers, read_body)
        except Exception:
            # A bug must not cost the connection or a 500: nothing was enqueued unless the committer acknowledged,
            # and then the sender's retry is a duplicate the store absorbs. So: the traceback to the log (never the
            # body or headers), 503 + Retry-After to the sender.
            label = tenant if tenant in state.settings.tenants else UNKNOWN_TENANT
            log.exception("webhook_failed", tenant=label)
            state.metrics.answered(label, 503)
            status, payload, extra = 503, {"error": "receiver error; retry later"}, {"Retry-After": "5"}
        await _send_json(send, status, payload, extra)


async def _send_json(send: Send, status: int, payload: dict[str, Any], extra: dict[str, str] | None) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    settings: Settings,
    *,
    routes: Sequence[BaseRoute] = (),
    on_shutdown: Sequence[Callable[[Starlette], None]] = (),
) -> Receiver:
    """The receiver. Redis and the committer open in the lifespan; nothing connects at import or build time.

    `routes` are served beside the receiver's own (the command that serves keytrail mounts the audit trail's API
    and page there); `on_shutdown` callbacks close what those routes opened."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connection = AsyncRedis.from_url(settings.redis.url, socket_timeout=5, health_check_interval=30)
        sync_connection = Redis.from_url(settings.redis.url, socket_timeout=5)
        metrics_ = ReceiverMetrics()
        committer = GroupCommitter(
            connection, settings.ingest, settings.worker, sync_redis=sync_connection, on_commit=metrics_.committed
        )
        await committer.start()
        app.state.keytrail = ReceiverState(settings, connection, committer, metrics_, Redactor(load_pepper(settings)))
        log.info("receiver_started", tenants=len(settings.tenants))
        try:
            yield
        finally:
            await committer.stop()
            for close in on_shutdown:
                close(app)
            await connection.aclose()
            sync_connection.close()

    own: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=[*own, *routes], lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    return Receiver(app)
