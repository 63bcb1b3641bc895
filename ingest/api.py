"""The audit-trail HTTP API on the receiver (`/api/...`): records by filter and cursor, one record, verify, OpenAPI.

Off unless `[api] tokens` is set (every path answers 404 then). Each request needs `Authorization: Bearer <token>`,
compared with every configured token in constant time (401 otherwise). The audit store opens on the first request
that needs it, not at start: the receiver must take webhooks even when the store is unreachable (503 here then).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from config.settings import Settings
from workers.stores import AuditStore, QueryError, StoreUnavailable, open_store
from workers.stores.base import FILTERS, ORDERS, build_query, search_page

log = structlog.get_logger("keytrail.api")
STATE_ATTRIBUTE = "keytrail_audit_api"  # app.state.keytrail is the receiver's; this one is the API's own
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
PAGE_PARAMETERS = ("limit", "cursor", "order")
Endpoint = Callable[[Request], Awaitable[Response]]


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
        from ingest.redaction import fingerprint

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

    def guarded(handler: Callable[[AuditApi, Request], Awaitable[Response]], *, public: bool = False) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            api: AuditApi | None = getattr(request.app.state, STATE_ATTRIBUTE, None)
            if api is None:
                api = AuditApi(settings)
                setattr(request.app.state, STATE_ATTRIBUTE, api)
            if not api.enabled:
                return _error(404, "not found")
            if not public and not api.authorized(request.headers.get("authorization")):
                return _error(401, "a valid bearer token is required", {"WWW-Authenticate": 'Bearer realm="keytrail"'})
            try:
                return await handler(api, request)
            except QueryError as exc:
                return _error(400, str(exc))
            except StoreUnavailable as exc:
                log.warning("audit_store_unavailable", reason=str(exc))
                return _error(503, "audit store unavailable; retry later", {"Retry-After": "5"})

        return endpoint

    return [
        Route("/api/audit/records", guarded(list_records), methods=["GET"]),
        Route("/api/audit/records/{record_id}", guarded(get_record), methods=["GET"]),
        Route("/api/audit/verify", guarded(verify_chains), methods=["GET"]),
        Route("/api/openapi.json", guarded(openapi, public=True), methods=["GET"]),
    ]


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def list_records(api: AuditApi, request: Request) -> Response:
    """`GET /api/audit/records`: matching records and the cursor of the next page (null on the last)."""
    params = request.query_params
    unknown = sorted(set(params) - set(FILTERS) - set(PAGE_PARAMETERS))
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r} (filters: {', '.join(FILTERS)}; paging: limit, cursor)")
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.strip().isdigit():
        raise QueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    query = build_query(
        {name: params.get(name) for name in FILTERS},
        fingerprint_of=api.fingerprint,
        limit=int(raw_limit),
        max_limit=MAX_LIMIT,
        order=params.get("order", "newest"),
        cursor=params.get("cursor"),
    )
    page, cursor = await run_in_threadpool(lambda: search_page(api.store(), query))
    return JSONResponse({"records": [record.to_dict() for _, record in page], "next_cursor": cursor})


async def get_record(api: AuditApi, request: Request) -> Response:
    """`GET /api/audit/records/{id}`: the record, its place in the chain, and its delivery state per sink."""
    from workers.chain import place_report

    record_id = request.path_params["record_id"]

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
    from workers.chain import HmacSigner, UnknownTenant, verify

    unknown = sorted(set(request.query_params) - {"tenant"})
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r} (verify takes only tenant)")
    tenant = request.query_params.get("tenant") or None
    signer = HmacSigner.from_settings(api.settings, create=False)
    try:
        report = await run_in_threadpool(lambda: verify(api.store(), signer, tenant=tenant))
    except UnknownTenant:
        return _error(404, f"no chain for tenant {tenant!r}")
    if not report.ok:
        log.warning("audit_chain_broken", tenants=[t.tenant for t in report.tenants if not t.ok])
    return JSONResponse(report.to_dict())


async def openapi(api: AuditApi, request: Request) -> Response:
    """`GET /api/openapi.json`: this API described (no token needed: it holds no data)."""
    return JSONResponse(openapi_document())


def openapi_document() -> dict[str, Any]:
    from keytrail import __version__

    _str: dict[str, Any] = {"type": "string"}

    def param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _str}

    nullable: dict[str, Any] = {"type": ["string", "null"]}
    error = {"description": "", "content": _json("#/components/schemas/Error")}
    errors = {
        "401": {**error, "description": "missing or wrong bearer token"},
        "404": {**error, "description": "the API is off (no `[api] tokens` configured), or no such item"},
        "503": {**error, "description": "the audit store is unreachable; retry later"},
    }
    filters = [
        param("tenant", "tenant name"),
        param("topic", "topic glob, e.g. `api-key.*`"),
        param(
            "key",
            "a key fingerprint `fp_…`, a key prefix (`live_`, `test_access_`), or a raw key (fingerprinted by the "
            "server; a raw key in a URL may reach proxy logs: prefer its fingerprint)",
        ),
        param("project", "project id"),
        param("account", "account id"),
        param("entity_type", "`api-key`, `access-key`, `project` or `unknown`"),
        param("event_id", "the event's dedupe id"),
        param("since", "event time from (inclusive): ISO 8601, or relative to now like `24h`, `7d`"),
        param("until", "event time before (exclusive): ISO 8601 or relative"),
    ]
    paging = [
        param("limit", f"records per page, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})", {"type": "integer"}),
        param("cursor", "`next_cursor` of the previous page (opaque)"),
        param("order", "`newest` stored first (default), `oldest`, or `event_time` ascending", {"enum": list(ORDERS)}),
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keytrail audit API",
            "version": __version__,
            "description": "The audit trail of The Auth API key-lifecycle events: query, inspect, verify.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/audit/records": {
                "get": {
                    "operationId": "listRecords",
                    "summary": "Records matching filters, a page at a time",
                    "description": "Cursor paging is stable while records are appended: a cursor names a position "
                    "in the store's commit order.",
                    "parameters": filters + paging,
                    "responses": {
                        "200": {"description": "a page", "content": _json("#/components/schemas/Page")},
                        "400": {**error, "description": "a bad filter, limit or cursor (the reason says which)"},
                        **errors,
                    },
                }
            },
            "/api/audit/records/{record_id}": {
                "get": {
                    "operationId": "getRecord",
                    "summary": "One record, its place in the hash chain, and its delivery state per sink",
                    "parameters": [{"name": "record_id", "in": "path", "required": True, "schema": _str}],
                    "responses": {
                        "200": {"description": "the record", "content": _json("#/components/schemas/RecordDetail")},
                        **errors,
                    },
                }
            },
            "/api/audit/verify": {
                "get": {
                    "operationId": "verifyChains",
                    "summary": "Recompute every tenant's hash chain and check the signed checkpoints",
                    "parameters": [param("tenant", "only this tenant's chain")],
                    "responses": {
                        "200": {
                            "description": "the verification; `ok` is false when any chain is broken",
                            "content": _json("#/components/schemas/Verification"),
                        },
                        "400": {**error, "description": "an unknown parameter"},
                        **errors,
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": _str}},
                "Page": {
                    "type": "object",
                    "required": ["records", "next_cursor"],
                    "properties": {
                        "records": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}},
                        "next_cursor": nullable,
                    },
                },
                "AuditRecord": _record_schema(),
                "RecordDetail": {
                    "type": "object",
                    "properties": {
                        "record": {"$ref": "#/components/schemas/AuditRecord"},
                        "chain": {
                            "type": "object",
                            "properties": {
                                "tenant": _str,
                                "seq": {"type": "integer"},
                                "position": {"type": "integer", "description": "1-based, pruned records count"},
                                "prev_hash": _str,
                                "hash": _str,
                                "previous_record_id": nullable,
                                "next_record_id": nullable,
                                "hash_ok": {"type": "boolean"},
                                "linked_to_previous": {"type": "boolean"},
                                "linked_from_next": {"type": "boolean"},
                                "checkpoint": {"type": ["object", "null"]},
                            },
                        },
                        "deliveries": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "sink": _str,
                                    "state": {"enum": ["pending", "retrying", "delivered", "dead"]},
                                    "attempts": {"type": "integer"},
                                    "next_at": nullable,
                                    "reason": nullable,
                                    "updated_at": _str,
                                },
                            },
                        },
                    },
                },
                "Verification": {
                    "type": "object",
                    "required": ["ok", "tenants"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "tenants": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "tenant": _str,
                                    "ok": {"type": "boolean"},
                                    "records": {"type": "integer"},
                                    "checkpoints": {"type": "integer"},
                                    "break": {
                                        "type": ["object", "null"],
                                        "properties": {
                                            "kind": {
                                                "enum": ["edited", "deleted", "inserted", "rewritten", "checkpoint"]
                                            },
                                            "seq": {"type": ["integer", "null"]},
                                            "record_id": nullable,
                                            "detail": _str,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    }


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}


def _record_schema() -> dict[str, Any]:
    text: dict[str, Any] = {"type": "string"}
    optional: dict[str, Any] = {"type": ["string", "null"]}
    integer: dict[str, Any] = {"type": "integer"}
    return {
        "type": "object",
        "description": "OCSF 1.x Entity Management (class 3004); `hash` = SHA-256(prev_hash ‖ canonical JSON).",
        "properties": {
            "record_id": text,
            "event_id": text,
            "tenant": text,
            "topic": text,
            "time": text,
            "received_at": text,
            "class_uid": integer,
            "category_uid": integer,
            "activity_id": integer,
            "type_uid": integer,
            "severity_id": integer,
            "entity": {
                "type": "object",
                "properties": {
                    "type": {"enum": ["API Key", "Access Key", "Project", "Unknown"]},
                    "uid": optional,
                    "name": optional,
                    "fingerprint": optional,
                    "prefix": optional,
                    "last4": optional,
                },
            },
            "project_id": optional,
            "account_id": optional,
            "actor": {"type": ["object", "null"], "properties": {"uid": text, "type": optional}},
            "metadata": {"type": "object", "additionalProperties": text},
            "raw_sha256": text,
            "raw_redacted": {"type": "object"},
            "prev_hash": text,
            "hash": text,
        },
    }
