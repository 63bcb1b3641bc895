"""The receiver's Starlette app: `POST /hooks/theauthapi/{tenant}` → checks → verify → redact → group commit → 202."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config.datadir import pepper as load_pepper
from config.queues import PING_TTL_SECONDS, ping_key
from config.settings import Settings
from ingest import api
from ingest.committer import AcceptedEvent, CommitFailed, GroupCommitter
from ingest.envelope import event_key, parse_envelope
from ingest.metrics import ReceiverMetrics
from ingest.redaction import Redactor
from ingest.verification import VerificationFailed, verify, verify_token

log = structlog.get_logger("keytrail.ingest")
PING_MARKER = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


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


_second_prefix: list[Any] = [-1, ""]


def _now_iso() -> str:
    """UTC now as `2026-11-28T10:00:00.123Z`; the per-second prefix is formatted once (this runs per request)."""
    now = time.time()
    second = int(now)
    if _second_prefix[0] != second:
        _second_prefix[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_prefix[1]}.{int((now - second) * 1000):03d}Z"


def _parse_json(body: bytes) -> Any:
    """orjson for speed; the standard library where orjson is stricter than JSON needs (integers over 64 bits)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise Rejected(413, f"body larger than {limit} bytes")
        return await request.body()  # the server enforces Content-Length, so this cannot exceed `limit`
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def receive_webhook(request: Request) -> Response:
    """Accept one delivery. 202 means the event is in Redis; any 4xx means nothing was enqueued."""
    state = _state(request)
    tenant_name = request.path_params["tenant"]
    try:
        body = await _read_body(request, state.settings.server.max_body_bytes)
        if not _is_json(request.headers.get("content-type", "")):
            raise Rejected(415, "content-type must be application/json")
        tenant = state.settings.tenants.get(tenant_name)
        if tenant is None:
            raise Rejected(404, "unknown tenant")
        payload = _parse_json(body)
        if isinstance(payload, dict) and isinstance(payload.get("keytrail_ping"), str):
            return await _receive_ping(state, tenant_name, request, payload["keytrail_ping"])
        try:
            verify(tenant, request.headers, body)
        except VerificationFailed as exc:
            raise Rejected(401, exc.reason) from None
        if payload is None:
            raise Rejected(400, "body is not valid JSON")
        if not isinstance(payload, dict):
            raise Rejected(400, "body must be a JSON object")
        if await _over_high_water(state):
            retry_after = str(state.settings.ingest.retry_after_seconds)
            raise Rejected(503, "queue above its high-water mark; retry later", {"Retry-After": retry_after})
        envelope = parse_envelope(payload)
        event = AcceptedEvent(
            tenant=tenant_name,
            event_key=event_key(envelope, body),
            topic=envelope.topic,
            received_at=_now_iso(),
            raw_sha256=hashlib.sha256(body).hexdigest(),
            body=orjson.dumps(state.redactor.redact(payload)).decode(),
        )
        try:
            await state.committer.submit(event)
        except CommitFailed:
            raise Rejected(503, "queue unavailable; retry later", {"Retry-After": "5"}) from None
    except Rejected as exc:
        state.metrics.answered(tenant_name if exc.status != 404 else "-", exc.status)
        if exc.status in (401, 503):
            log.warning("webhook_rejected", tenant=tenant_name, status=exc.status, reason=exc.reason)
        return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=exc.headers)
    state.metrics.answered(tenant_name, 202)
    return Response(orjson.dumps({"event_id": event.event_key}), status_code=202, media_type="application/json")


async def _receive_ping(state: ReceiverState, tenant_name: str, request: Request, marker: str) -> Response:
    """A bootstrap ping: recorded so `keytrail subscribe` can see it arrived; never an audit event.

    The Auth API may not add `theauthapi-signature` to pings, so a ping needs only the token check."""
    tenant = state.settings.tenants[tenant_name]
    if tenant.token is None:
        raise Rejected(401, "pings need the tenant token (X-Keytrail-Token)")
    try:
        verify_token(tenant, request.headers)
    except VerificationFailed as exc:
        raise Rejected(401, exc.reason) from None
    if not PING_MARKER.match(marker):
        raise Rejected(400, "keytrail_ping marker must be 1-128 of [A-Za-z0-9_-]")
    try:
        await state.redis.set(ping_key(tenant_name, marker), str(int(time.time() * 1000)), ex=PING_TTL_SECONDS)
    except RedisError:
        raise Rejected(503, "queue unavailable; retry later", {"Retry-After": "5"}) from None
    log.info("ping_received", tenant=tenant_name, marker=marker)
    state.metrics.answered(tenant_name, 200)
    return JSONResponse({"ping": marker})


async def _over_high_water(state: ReceiverState) -> bool:
    committer = state.committer
    with contextlib.suppress(RedisError):
        await committer.refresh_if_stale()
    state.metrics.queue_depth.set(committer.queue_depth)
    return committer.queue_depth >= state.settings.ingest.high_water_mark


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Redis answers and the ingest queue is under its high-water mark."""
    state = _state(request)
    try:
        depth = await state.committer.refresh_depth()
    except RedisError as exc:
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    mark = state.settings.ingest.high_water_mark
    ready = depth < mark
    body: dict[str, Any] = {"status": "ok" if ready else "busy", "queue_jobs": depth, "high_water_mark": mark}
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(settings: Settings) -> Starlette:
    """The receiver. Redis and the committer open in the lifespan; nothing connects at import or build time."""

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
            api.close(app)
            await connection.aclose()
            sync_connection.close()

    routes: list[BaseRoute] = [
        Route("/hooks/theauthapi/{tenant}", receive_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    routes.extend(api.routes(settings))
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
