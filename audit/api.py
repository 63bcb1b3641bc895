"""The audit-trail HTTP API on the receiver (`/api/...`): records by filter and cursor, one record, verify, OpenAPI.

Off unless `[api] tokens` is set (every path answers 404 then). Each request needs `Authorization: Bearer <token>`,
compared with every configured token in constant time (401 otherwise). The audit store opens on the first request
that needs it, not at start: the receiver must take webhooks even when the store is unreachable (503 here then).
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from audit.queries import (
    FILTERS,
    QueryError,
    build_query,
    parse_count,
    parse_text,
    quoted,
    search_page,
)
from audit.stores import AuditStore, StoreUnavailable, open_store
from config.settings import Settings

log = structlog.get_logger("keytrail.api")
STATE_ATTRIBUTE = "keytrail_audit_api"  # app.state.keytrail is the receiver's; this one is the API's own
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
PAGE_PARAMETERS = ("limit", "cursor", "order")
MAX_RECORD_ID = 256
RETRY_AFTER = {"Retry-After": "5"}
Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[["AuditApi", Request], Awaitable[Response]]


class AuditApi:
    """What the API holds for one app: settings, and the audit store once something asked for it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._digests = [hashlib.sha256(t.reveal().encode()).digest() for t in settings.api.tokens]
        self._store: AuditStore | None = None
        self._lock = threading.Lock()
        self._pepper: bytes | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authorized(self, header: str | None) -> bool:
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return False
        # Digests first: equal lengths, so the comparison time says nothing about any token; and every token is
        # compared, so neither does which one matched.
        given = hashlib.sha256(presented.strip().encode()).digest()
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        return matched

    def store(self) -> AuditStore:
        """The store, opened on first use (runs in a worker thread: opening may wait on the network)."""
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings.audit.url)
                log.info("audit_store_opened", url_scheme=self.settings.audit.url.split(":", 1)[0])
            return self._store

    def fingerprint(self, raw_key: str) -> str:
        from config.datadir import pepper
        from events.redaction import fingerprint

        if self._pepper is None:
            self._pepper = pepper(self.settings)
        return fingerprint(self._pepper, raw_key)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def close(app: Starlette) -> None:
    """Close the API's store, if a request opened one (for the app's lifespan, on shutdown)."""
    api: AuditApi | None = getattr(app.state, STATE_ATTRIBUTE, None)
    if api is not None:
        api.close()


def routes(settings: Settings) -> list[BaseRoute]:
    """The API's routes. Each finds (or creates) the app's AuditApi on `app.state` on its first request."""

    def guarded(handler: Handler, *, public: bool = False) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            api: AuditApi | None = getattr(request.app.state, STATE_ATTRIBUTE, None)
            if api is None:
                api = AuditApi(settings)
                setattr(request.app.state, STATE_ATTRIBUTE, api)
            if not api.enabled:
                return _error(404, "not found")
            if not public and not api.authorized(request.headers.get("authorization")):
                return _error(401, "a valid bearer token is required", {"WWW-Authenticate": 'Bearer realm="keytrail"'})
            return await _answered(handler, api, request)

        return endpoint

    return [
        Route("/api/audit/records", guarded(list_records), methods=["GET"]),
        Route("/api/audit/records/{record_id}", guarded(get_record), methods=["GET"]),
        Route("/api/audit/verify", guarded(verify_chains), methods=["GET"]),
        Route("/api/openapi.json", guarded(openapi, public=True), methods=["GET"]),
    ]


async def _answered(handler: Handler, api: AuditApi, request: Request) -> Response:
    """The handler's answer, or the JSON error its exception stands for."""
    try:
        return await handler(api, request)
    except QueryError as exc:
        return _error(400, str(exc))
    except StoreUnavailable as exc:
        log.warning("audit_store_unavailable", reason=str(exc))
        return _error(503, "audit store unavailable; retry later", RETRY_AFTER)
    except Exception as exc:
        # Last resort: no input should get here (every parameter is parsed into a QueryError first). A fault of
        # the store's connection is still "retry later"; anything else is a bug, answered in JSON and logged with
        # its traceback (never the request's query: it may hold a raw key).
        log.exception("audit_api_failed", path=request.url.path, error=type(exc).__name__)
        if _store_fault(exc):
            return _error(503, "audit store unavailable; retry later", RETRY_AFTER)
        return _error(500, "internal error; the receiver's log has the details")


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _store_fault(exc: Exception) -> bool:
    """Whether `exc` is the store's connection failing (locked, gone, disk error), not a bug of ours."""
    import psycopg

    return isinstance(exc, sqlite3.OperationalError | psycopg.OperationalError | psycopg.InterfaceError | OSError)


def single_values(params: QueryParams, allowed: Sequence[str]) -> dict[str, str]:
    """Each parameter's one value. An unknown parameter is a 400, not ignored: a misspelt filter (`tenat=acme`)
    would otherwise widen the answer to every tenant. A repeated one is a 400 too: which value counts would be
    a guess."""
    seen: dict[str, str] = {}
    for name, value in params.multi_items():
        if name not in allowed:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
            raise QueryError(f"unknown parameter {quoted(name)} (this endpoint {takes})")
        if name in seen:
            raise QueryError(f"parameter {quoted(name)} is given more than once")
        seen[name] = value
    return seen


async def list_records(api: AuditApi, request: Request) -> Response:
    """`GET /api/audit/records`: matching records and the cursor of the next page (null on the last)."""
    params = single_values(request.query_params, (*FILTERS, *PAGE_PARAMETERS))
    query = build_query(
        {name: params.get(name) for name in FILTERS},
        fingerprint_of=api.fingerprint,
        limit=parse_count("limit", params.get("limit", str(DEFAULT_LIMIT)), maximum=MAX_LIMIT),
        max_limit=MAX_LIMIT,
        order=params.get("order", "newest"),
        cursor=params.get("cursor"),
    )
    page, cursor = await run_in_threadpool(lambda: search_page(api.store(), query))
    return JSONResponse({"records": [record.to_dict() for _, record in page], "next_cursor": cursor})


async def get_record(api: AuditApi, request: Request) -> Response:
    """`GET /api/audit/records/{id}`: the record, its place in the chain, and its delivery state per sink."""
    from audit.chain import place_report

    single_values(request.query_params, ())
    record_id = parse_text("record id", request.path_params["record_id"], max_length=MAX_RECORD_ID)

    def read() -> dict[str, Any] | None:
        store = api.store()
        found = store.get([record_id])
        place = store.locate(record_id) if found else None
        if not found or place is None:
            return None
        deliveries = [d.to_dict() for d in store.deliveries(record_id)]
        return {"record": found[0].to_dict(), "chain": place_report(found[0], place), "deliveries": deliveries}

    detail = await run_in_threadpool(read)
    if detail is None:
        return _error(404, "no such record")
    return JSONResponse(detail)


async def verify_chains(api: AuditApi, request: Request) -> Response:
    """`GET /api/audit/verify[?tenant=]`: every chain recomputed and every checkpoint checked. 200 either way;
    `ok` says whether anything is broken."""
    from audit.chain import HmacSigner, UnknownTenant, verify

    params = single_values(request.query_params, ("tenant",))
    tenant = parse_text("tenant", params["tenant"]) if "tenant" in params else None
    signer = HmacSigner.from_settings(api.settings, create=False)
    try:
        report = await run_in_threadpool(lambda: verify(api.store(), signer, tenant=tenant))
    except UnknownTenant:
        return _error(404, f"no chain for tenant {quoted(tenant or '')}")
    if not report.ok:
        log.warning("audit_chain_broken", tenants=[t.tenant for t in report.tenants if not t.ok])
    return JSONResponse(report.to_dict())


async def openapi(api: AuditApi, request: Request) -> Response:
    """`GET /api/openapi.json`: this API described (no token needed: it holds no data)."""
    from audit.openapi import document

    single_values(request.query_params, ())
    return JSONResponse(document())
