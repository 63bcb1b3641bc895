"""The ping: a marker sent through The Auth API to keytrail's receiver, looked up in Redis, and, when it never
arrives, a diagnosis of why.

`confirm_ping` is the whole proof: send (`send_ping`), wait for the receiver's record (`wait_for_ping`), and if it
does not come, probe the receiver straight from here (`diagnose_ping`) to tell a wrong token, a receiver that is
down, another Redis, or a public URL The Auth API cannot reach apart.

Where the spec and the vendor's samples disagree about the ping's headers field (reference §2.2) it sends what
satisfies both readings, and the spec's alone when the service refuses the samples' field.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis
import structlog

from authapi.client import AuthApiClient, AuthApiError
from authapi.subscriptions import BootstrapError, require_subscribable, token_header
from broker.queues import ping_key
from config.settings import TenantSettings
from events.wire import PING_FIELD, SUBSCRIPTION_TOKEN_HEADER

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PingResult:
    """What one ping proved: seen by the receiver after `round_trip_ms`, or not seen, with the likely `cause`."""

    tenant: str
    marker: str
    seen: bool
    round_trip_ms: float | None
    cause: str | None = None

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def new_marker() -> str:
    return f"kt-{uuid.uuid4().hex}"


def ping_body(tenant: TenantSettings, marker: str, *, samples_field: bool = True) -> dict[str, Any]:
    """POST /webhooks/ping's DTO. The spec names the headers field `headers`, the samples `customHeaders`: send both,
    unless `samples_field` is False (a service that refuses properties outside TestWebhookDTO)."""
    headers = {"Content-Type": "application/json", **token_header(tenant.token)}
    return {
        "url": require_subscribable(tenant),
        "httpMethod": "POST",
        "body": {PING_FIELD: marker, "tenant": tenant.name},
        "headers": headers,
        **({"customHeaders": headers} if samples_field else {}),
    }


def send_ping(client: AuthApiClient, tenant: TenantSettings, marker: str) -> Any:
    """Ask The Auth API to send the ping; returns its answer (shape UNKNOWN, kept only for diagnosis)."""
    try:
        answer = client.ping_webhook(ping_body(tenant, marker))
    except AuthApiError as exc:
        # NestJS's forbidNonWhitelisted names the refused property; then the spec's DTO alone is what it accepts.
        if exc.status != 400 or "customHeaders" not in exc.message:
            raise
        answer = client.ping_webhook(ping_body(tenant, marker, samples_field=False))
    log.info("ping_sent", tenant=tenant.name, marker=marker)
    return answer


def wait_for_ping(
    store: redis.Redis, tenant: str, marker: str, timeout: float, *, poll_seconds: float = 0.05
) -> int | None:
    """Poll Redis until the receiver has recorded the marker; its epoch-ms receipt time, or None on timeout."""
    deadline = time.monotonic() + timeout
    key = ping_key(tenant, marker)
    while True:
        value = store.get(key)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


def confirm_ping(client: AuthApiClient, redis_url: str, tenant: TenantSettings, timeout: float) -> PingResult:
    """`ping_round_trip` on its own connection to the receiver's Redis; a `BootstrapError` when Redis does not
    answer, since then nothing can tell whether the ping arrived."""
    store = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return ping_round_trip(client, store, tenant, timeout)
    except redis.RedisError as exc:
        where = redacted_url(redis_url)
        raise BootstrapError(
            f"cannot confirm the ping: Redis does not answer at {where} ({type(exc).__name__})"
        ) from None
    finally:
        store.close()


def ping_round_trip(client: AuthApiClient, store: redis.Redis, tenant: TenantSettings, timeout: float) -> PingResult:
    """Send a ping through The Auth API and wait for the receiver to record it; diagnose when it never arrives."""
    marker = new_marker()
    started = time.monotonic()
    send_ping(client, tenant, marker)
    seen = wait_for_ping(store, tenant.name, marker, timeout)
    if seen is not None:
        elapsed = round((time.monotonic() - started) * 1000, 1)
        log.info("ping_seen", tenant=tenant.name, marker=marker, round_trip_ms=elapsed)
        return PingResult(tenant.name, marker, True, elapsed)
    cause = diagnose_ping(store, tenant, timeout)
    log.warning("ping_not_seen", tenant=tenant.name, marker=marker, cause=cause)
    return PingResult(tenant.name, marker, False, None, cause)


def diagnose_ping(store: redis.Redis, tenant: TenantSettings, waited: float, *, probe_timeout: float = 3.0) -> str:
    """Why a ping did not arrive, found by sending the same kind of ping straight to the receiver from here."""
    url = require_subscribable(tenant)
    prefix = f"ping not seen by the receiver within {waited:g}s"
    marker = new_marker()
    try:
        response = httpx.post(url, json={PING_FIELD: marker}, headers=token_header(tenant.token), timeout=probe_timeout)
    except httpx.HTTPError as exc:
        return f"{prefix}: receiver down? {url} is unreachable from here too ({type(exc).__name__})"
    status = response.status_code
    if status in (401, 403):
        return (
            f"{prefix}: token mismatch: the receiver at {url} answered HTTP {status} to {SUBSCRIPTION_TOKEN_HEADER} "
            f"(tenants.{tenant.name}.token differs from the receiver's)"
        )
    if status == 404:
        return f"{prefix}: the receiver at {url} answered 404 (unknown tenant {tenant.name}, or public_url is wrong)"
    if not response.is_success:
        return f"{prefix}: the receiver at {url} answered HTTP {status} to a ping sent from here"
    if wait_for_ping(store, tenant.name, marker, min(waited, 2.0)) is not None:
        return (
            f"{prefix}: public_url unreachable from The Auth API: the receiver records pings sent from here, "
            f"so {tenant.public_url} must be reachable from the internet (DNS, firewall, TLS certificate)"
        )
    return (
        f"{prefix}: the receiver at {url} answered {status} but did not record the ping in this Redis (another Redis?)"
    )


def redacted_url(url: str) -> str:
    """A Redis URL fit for a message: its password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
