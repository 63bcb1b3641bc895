"""The audit-trail HTTP API on the receiver (`/api/...`): records by filter and cursor, one record, verify, OpenAPI.

Off unless `[api] tokens` is set (every path answers 404 then). Each request needs `Authorization: Bearer <token>`,
compared with every configured token in constant time (401 otherwise). A token reads only its tenants: a filter
outside them is a 403, a record of another tenant is a 404 like a missing one, and the scope is applied to every
query (cursors carry only a position, so a forged one cannot widen it). Every request is logged as one
`audit_api_read` event (token name, route, filters with a key as its fingerprint, records returned, status) and
counted in the receiver's /metrics. `POST /api/audit/search` takes the same filters in a JSON body, so that no
filter value (a raw key above all) is in a URL, where proxies and load balancers log it. The audit store opens
on the first request that needs it, not at start: the receiver must take webhooks even when the store is
unreachable (503 here then).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter
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
    key_filter,
    next_cursor,
    parse_count,
    parse_text,
    quoted,
    search_page,
)
from audit.stores import AuditStore, StoreUnavailable, open_store
from audit.stores.base import RecordQuery
from config.settings import ApiToken, Settings
from events.records import AuditRecord

log = structlog.get_logger("keytrail.api")
STATE_ATTRIBUTE = "keytrail_audit_api"  # app.state.keytrail is the receiver's; this one is the API's own
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
PAGE_PARAMETERS = ("limit", "cursor", "order")
MAX_RECORD_ID = 256
MAX_LOGGED = 200  # characters of one filter value in the reader's log
MAX_BODY = 16 * 1024  # bytes of a search body: every filter at its bound is far less
RETRY_AFTER = {"Retry-After": "5"}
Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[["AuditApi", Request, "Read"], Awaitable[Response]]
READS_METRIC = "keytrail_audit_api_reads"


@dataclass(slots=True)
class Read:
    """One API request as the reader's log tells it: who (token name), what (route, filters), how much came back."""

    route: str
    token: ApiToken | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    records: int = 0

    def scope(self) -> ApiToken:
        assert self.token is not None  # handlers run only for an authorized request
        return self.token


class AuditApi:
    """What the API holds for one app: settings, and the audit store once something asked for it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._digests = [(hashlib.sha256(t.token.reveal().encode()).digest(), t) for t in settings.api.tokens]
        self._store: AuditStore | None = None
        self._lock = threading.Lock()
        self._pepper: bytes | None = None
        self._reads: tuple[CollectorRegistry, Counter] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authorized(self, header: str | None) -> ApiToken | None:
        """The configured token the header presents, or None."""
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        # Digests first: equal lengths, so the comparison time says nothing about any token; and every token is
        # compared, so neither does which one matched.
        given = hashlib.sha256(presented.strip().encode()).digest()
        matched: ApiToken | None = None
        for digest, token in self._digests:
            equal = hmac.compare_digest(given, digest)
            matched = token if equal else matched
        return matched

    def count(self, request: Request, read: Read, status: int) -> None:
        """Count the read in the receiver's /metrics registry (`app.state.keytrail.metrics.registry`), found by
        attribute: this layer may not import the receiver. Without a receiver around it, nothing is counted."""
        state = getattr(request.app.state, "keytrail", None)
        registry = getattr(getattr(state, "metrics", None), "registry", None)
        if not isinstance(registry, CollectorRegistry):
            return
        with self._lock:
            if self._reads is None or self._reads[0] is not registry:
                counter = Counter(
                    READS_METRIC,
                    "Audit API requests, by token name, route and HTTP status",
                    ["token", "route", "status"],
                    registry=registry,
                )
                self._reads = (registry, counter)
            counter = self._reads[1]
        counter.labels(read.token.name if read.token else "-", read.route, str(status)).inc()

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

    def guarded(route: str, handler: Handler, *, public: bool = False) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            api: AuditApi | None = getattr(request.app.state, STATE_ATTRIBUTE, None)
            if api is None:
                api = AuditApi(settings)
                setattr(request.app.state, STATE_ATTRIBUTE, api)
            if not api.enabled:
                return _error(404, "not found")
            if public:
                return await _answered(handler, api, request, Read(route))
            read = Read(route, token=api.authorized(request.headers.get("authorization")))
            if read.token is None:
                response: Response = _error(
                    401, "a valid bearer token is required", {"WWW-Authenticate": 'Bearer realm="keytrail"'}
                )
            else:
                read.filters = _logged_filters(api, request)
                response = await _answered(handler, api, request, read)
            # The reader's log: who read what. Filters as typed, except a raw key, shown as its fingerprint.
            log.info(
                "audit_api_read",
                token=read.token.name if read.token else None,
                route=route,
                filters=read.filters,
                records=read.records,
                status=response.status_code,
            )
            api.count(request, read, response.status_code)
            return response

        return endpoint

    return [
        Route("/api/audit/records", guarded("/api/audit/records", list_records), methods=["GET"]),
        Route("/api/audit/search", guarded("/api/audit/search", search_records), methods=["POST"]),
        Route("/api/audit/records/{record_id}", guarded("/api/audit/records/{record_id}", get_record), methods=["GET"]),
        Route("/api/audit/verify", guarded("/api/audit/verify", verify_chains), methods=["GET"]),
        Route("/api/openapi.json", guarded("/api/openapi.json", openapi, public=True), methods=["GET"]),
    ]


def _logged_filters(api: AuditApi, request: Request) -> dict[str, Any]:
    """The request's filters for the reader's log: known names only (a typed unknown name could be anything), a
    key as its fingerprint (or a bare prefix), never raw; a cursor only as its presence."""
    shown = _shown_filters(api, request.query_params.multi_items())
    if "record_id" in request.path_params:
        shown["record_id"] = str(request.path_params["record_id"])[:MAX_RECORD_ID]
    return shown


def _shown_filters(api: AuditApi, items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Filters (from a query string or a search body) as the reader's log shows them; values that are not
    strings (a bad body) are left out, lone surrogates replaced."""
    shown: dict[str, Any] = {}
    for name, given in items:
        if not isinstance(given, str):
            continue
        value = given.encode("utf-8", "replace").decode("utf-8")
        if name == "key":
            try:
                shown["key"] = next(iter(key_filter(value, api.fingerprint).values()))
            except (QueryError, OSError):
                shown["key"] = "(unusable)"
        elif name == "cursor":
            shown["cursor"] = True
        elif name in FILTERS or name in PAGE_PARAMETERS:
            shown[name] = value[:MAX_LOGGED]
    return shown


async def _answered(handler: Handler, api: AuditApi, request: Request, read: Read) -> Response:
    """The handler's answer, or the JSON error its exception stands for."""
    try:
        return await handler(api, request, read)
    except Refused as exc:
        return _error(exc.status, str(exc))
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


class Refused(Exception):
    """A request refused with `status` and the message as its reason."""

    status = 400


class BodyTooLarge(Refused):
    """A search body over MAX_BODY bytes."""

    status = 413


class OutOfScope(Refused):
    """A filter names a tenant the token may not read."""

    status = 403


def _in_scope(token: ApiToken, tenant: str | None) -> None:
    if tenant is not None and not token.reads(tenant):
        raise OutOfScope(f"token {quoted(token.name)} may not read tenant {quoted(tenant)}")


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


def scoped_page(
    store: AuditStore, query: RecordQuery, token: ApiToken
) -> tuple[list[tuple[int, AuditRecord]], str | None]:
    """`search_page` within the token's tenants. A query without a tenant filter runs once per tenant of the token
    (each reads one record more than a page) and the answers are merged in the query's order: the cursor is a
    position in that order, the same for every tenant, so paging is as stable as on one query."""
    if token.reads_all or query.tenant is not None:
        _in_scope(token, query.tenant)
        return search_page(store, query)
    found: list[tuple[int, AuditRecord]] = []
    for tenant in token.tenants:
        found.extend(store.search(replace(query, tenant=tenant, limit=query.limit + 1)))
    if query.event_time_order:
        found.sort(key=lambda item: (item[1].time, item[0]))
    else:
        found.sort(key=lambda item: item[0], reverse=not query.oldest_first)
    page = found[: query.limit]
    return page, next_cursor(query, page[-1]) if len(found) > query.limit else None


async def list_records(api: AuditApi, request: Request, read: Read) -> Response:
    """`GET /api/audit/records`: matching records and the cursor of the next page (null on the last)."""
    return await _page(api, single_values(request.query_params, (*FILTERS, *PAGE_PARAMETERS)), read)


async def search_records(api: AuditApi, request: Request, read: Read) -> Response:
    """`POST /api/audit/search`: `GET /api/audit/records` with its parameters as a JSON object of strings, so
    that no filter value is in the URL. Parsed as strictly as the query string: an unknown or repeated name, a
    value that is not a string, a blank one, is a 400 naming it."""
    single_values(request.query_params, ())  # filters go in the body, never in the URL
    fields = await _search_body(request)
    read.filters = _shown_filters(api, fields)
    allowed = (*FILTERS, *PAGE_PARAMETERS)
    params: dict[str, str] = {}
    for name, value in fields:
        if name not in allowed:
            raise QueryError(f"unknown field {quoted(name)} (this endpoint takes {', '.join(allowed)})")
        if name in params:
            raise QueryError(f"field {quoted(name)} is given more than once")
        if not isinstance(value, str):
            raise QueryError(f"field {quoted(name)} must be a string")
        params[name] = value
    return await _page(api, params, read)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (name, value) pairs, in order, repeats kept (json's `object_pairs_hook`)."""


async def _search_body(request: Request) -> list[tuple[str, Any]]:
    """The body's JSON object as (name, value) pairs in order (repeats kept, to be refused); read at most
    MAX_BODY bytes of it."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes")
    try:
        parsed = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise QueryError("the body must be a JSON object of filters (names to string values)") from None
    if not isinstance(parsed, _Pairs):  # an object arrives as its pairs; an array, a string, a number is wrong
        raise QueryError("the body must be a JSON object of filters (names to string values)")
    return list(parsed)


async def _page(api: AuditApi, params: dict[str, str], read: Read) -> Response:
    """One page of records for already-split parameters (names as in FILTERS and PAGE_PARAMETERS)."""
    query = build_query(
        {name: params.get(name) for name in FILTERS},
        fingerprint_of=api.fingerprint,
        limit=parse_count("limit", params.get("limit", str(DEFAULT_LIMIT)), maximum=MAX_LIMIT),
        max_limit=MAX_LIMIT,
        order=params.get("order", "newest"),
        cursor=params.get("cursor"),
    )
    _in_scope(read.scope(), query.tenant)
    page, cursor = await run_in_threadpool(lambda: scoped_page(api.store(), query, read.scope()))
    read.records = len(page)
    return JSONResponse({"records": [record.to_dict() for _, record in page], "next_cursor": cursor})


async def get_record(api: AuditApi, request: Request, read: Read) -> Response:
    """`GET /api/audit/records/{id}`: the record, its place in the chain, and its delivery state per sink."""
    from audit.chain import place_report

    single_values(request.query_params, ())
    record_id = parse_text("record id", request.path_params["record_id"], max_length=MAX_RECORD_ID)

    def lookup() -> dict[str, Any] | None:
        store = api.store()
        found = store.get([record_id])
        # Another tenant's record is "no such record", exactly like a missing one: its existence is not told.
        if not found or not read.scope().reads(found[0].tenant):
            return None
        place = store.locate(record_id)
        if place is None:
            return None
        deliveries = [d.to_dict() for d in store.deliveries(record_id)]
        return {"record": found[0].to_dict(), "chain": place_report(found[0], place), "deliveries": deliveries}

    detail = await run_in_threadpool(lookup)
    if detail is None:
        return _error(404, "no such record")
    read.records = 1
    return JSONResponse(detail)


async def verify_chains(api: AuditApi, request: Request, read: Read) -> Response:
    """`GET /api/audit/verify[?tenant=]`: every chain recomputed and every checkpoint checked. 200 either way;
    `ok` says whether anything is broken."""
    from audit.chain import HmacSigner, UnknownTenant, Verification, verify

    params = single_values(request.query_params, ("tenant",))
    tenant = parse_text("tenant", params["tenant"]) if "tenant" in params else None
    token = read.scope()
    _in_scope(token, tenant)
    signer = HmacSigner.from_settings(api.settings, create=False)
    # Configured tenants are verified even when the store lists nothing of theirs (all their rows deleted).
    configured = list(api.settings.tenants)

    def scoped() -> Verification:
        # A scoped token's tenants one by one; one it may read that has no chain yet is simply not in the report.
        reports = []
        for name in token.tenants:
            try:
                reports.extend(verify(api.store(), signer, tenant=name, configured=configured).tenants)
            except UnknownTenant:
                continue
        return Verification(reports)

    try:
        if tenant is None and not token.reads_all:
            report = await run_in_threadpool(scoped)
        else:
            report = await run_in_threadpool(lambda: verify(api.store(), signer, tenant=tenant, configured=configured))
    except UnknownTenant:
        return _error(404, f"no chain for tenant {quoted(tenant or '')}")
    read.records = sum(t.records for t in report.tenants)
    if not report.ok:
        log.warning("audit_chain_broken", tenants=[t.tenant for t in report.tenants if not t.ok])
    return JSONResponse(report.to_dict())


async def openapi(api: AuditApi, request: Request, read: Read) -> Response:
    """`GET /api/openapi.json`: this API described (no token needed: it holds no data)."""
    from audit.openapi import document

    single_values(request.query_params, ())
    return JSONResponse(document())
