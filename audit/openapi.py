"""The audit API described in OpenAPI 3.1 (`GET /api/openapi.json`): every parameter with its bounds, every answer.

The bounds are the parser's own (`audit.queries`), so a client that keeps to this document never gets a 400
for a value's shape, and a schema-driven fuzzer (schemathesis, in the tests) can check every answer against it.
"""

from __future__ import annotations

from typing import Any

from audit.api import DEFAULT_LIMIT, MAX_BODY, MAX_LIMIT, MAX_RECORD_ID
from audit.queries import MAX_CURSOR, MAX_TEXT, MAX_TIME_TEXT, ORDERS
from events.version import VERSION

# No control characters: the parser refuses them (NUL cannot be stored in PostgreSQL text). ECMA-262 syntax.
PRINTABLE = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
STRING: dict[str, Any] = {"type": "string"}
NULLABLE: dict[str, Any] = {"type": ["string", "null"]}
INTEGER: dict[str, Any] = {"type": "integer"}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keytrail audit API",
            "version": VERSION,
            "description": "The audit trail of The Auth API key-lifecycle events: query, inspect, verify. Every "
            "answer is JSON. A parameter this document does not list, a parameter given twice, or a value outside "
            "its bounds is a 400 whose `error` says which and why. A token reads only the tenants configured for "
            "it (`[api] tokens`): a tenant filter outside them is a 403, a record of another tenant is a 404 like "
            "a missing one, and lists and verification cover only its tenants. Every request is logged by the "
            "receiver (`audit_api_read`: token name, route, filters with a key as its fingerprint, records, status).",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/audit/records": {"get": _list_records()},
            "/api/audit/search": {"post": _search()},
            "/api/audit/records/{record_id}": {"get": _get_record()},
            "/api/audit/verify": {"get": _verify()},
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}},
                        "400": _error("any query parameter (this endpoint takes none)"),
                        "404": _error("the API is off (no `[api] tokens` configured)"),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string", "description": "the reason, in one line"}},
                },
                "Page": {
                    "type": "object",
                    "required": ["records", "next_cursor"],
                    "properties": {
                        "records": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}},
                        "next_cursor": NULLABLE,
                    },
                },
                "AuditRecord": _record_schema(),
                "RecordDetail": _record_detail_schema(),
                "Verification": _verification_schema(),
            },
        },
    }


def _text(max_length: int = MAX_TEXT) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": PRINTABLE}


def _param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _text()}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json("#/components/schemas/Error")}
    if headers:
        answer["headers"] = headers
    return answer


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}


def _common_errors(not_found: str) -> dict[str, Any]:
    return {
        "401": _error(
            "missing or wrong bearer token",
            {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
        ),
        "404": _error(f"the API is off (no `[api] tokens` configured){not_found}"),
        "500": _error("an unexpected failure (a bug): logged by the receiver with its traceback"),
        "503": _error(
            "the audit store is unreachable; retry later",
            {"Retry-After": {"schema": {"type": "integer", "minimum": 0}, "required": True}},
        ),
    }


def _list_records() -> dict[str, Any]:
    time_text = _text(MAX_TIME_TEXT)
    filters = [
        _param("tenant", "tenant name"),
        _param("topic", "topic glob, e.g. `api-key.*`"),
        _param(
            "key",
            "a key fingerprint `fp_…`, a key prefix (`live_`, `test_access_`), or a raw key (fingerprinted by the "
            "server; a raw key in a URL may reach proxy logs: prefer its fingerprint, or `POST /api/audit/search`)",
        ),
        _param("project", "project id"),
        _param("account", "account id"),
        _param("entity_type", "`api-key`, `access-key`, `project` or `unknown` (any case; `API Key` works too)"),
        _param("event_id", "the event's dedupe id"),
        _param(
            "since",
            "event time from (inclusive): ISO 8601 within years 1-9999 in UTC, or relative to now like `24h`, `7d` "
            "(s, m, h, d, w; at most 100 years back)",
            time_text,
        ),
        _param("until", "event time before (exclusive): as `since`; must be later than `since`", time_text),
    ]
    paging = [
        _param(
            "limit",
            f"records per page (default {DEFAULT_LIMIT}), in ASCII digits",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        ),
        _param(
            "cursor",
            "`next_cursor` of the previous page, with the same `order` (opaque)",
            {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR, "pattern": "^[A-Za-z0-9_-]+={0,2}$"},
        ),
        _param(
            "order",
            "`newest` stored first (default), `oldest`, or `event_time` ascending",
            {"type": "string", "enum": list(ORDERS), "default": "newest"},
        ),
    ]
    return {
        "operationId": "listRecords",
        "summary": "Records matching filters, a page at a time",
        "description": "Cursor paging is stable while records are appended: a cursor names a position in the "
        "store's commit order. Filters are combined with AND; a blank filter is a 400, not 'any'.",
        "parameters": filters + paging,
        "responses": {
            "200": {"description": "a page", "content": _json("#/components/schemas/Page")},
            "400": _error("a bad, unknown or repeated parameter (the reason says which)"),
            "403": _error("a `tenant` filter outside the tenants this token may read"),
            **_common_errors(""),
        },
    }


def _search() -> dict[str, Any]:
    """`POST /api/audit/search`: the listing's parameters as the properties of a JSON object, all strings."""
    listing = _list_records()
    properties: dict[str, Any] = {}
    for parameter in listing["parameters"]:
        schema = dict(parameter["schema"])
        if parameter["name"] == "limit":
            schema = {"type": "string", "pattern": "^[0-9]+$", "minLength": 1, "maxLength": 4}
        properties[parameter["name"]] = {**schema, "description": parameter["description"]}
    return {
        "operationId": "searchRecords",
        "summary": "Records matching filters, a page at a time: `listRecords` with its parameters in the body",
        "description": "Answers exactly as `GET /api/audit/records` does (scope, paging, cursor, errors), but no "
        "filter value is in the URL, where proxies and load balancers log it: use it for a raw key. The body is a "
        "JSON object of strings (`limit` too, in ASCII digits); a name it does not list, a repeated name, a "
        f"blank or non-string value is a 400. At most {MAX_BODY} bytes. The URL takes no query parameters.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": properties, "additionalProperties": False}
                }
            },
        },
        "responses": {
            "200": {"description": "a page", "content": _json("#/components/schemas/Page")},
            "400": _error(
                "a body that is not a JSON object, or a bad, unknown, repeated or non-string field (the reason says "
                "which), or any query parameter"
            ),
            "403": _error("a `tenant` filter outside the tenants this token may read"),
            "413": _error(f"a body larger than {MAX_BODY} bytes"),
            **_common_errors(""),
        },
    }


def _get_record() -> dict[str, Any]:
    record_id = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_RECORD_ID,
        "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f/]+$",
    }
    return {
        "operationId": "getRecord",
        "summary": "One record, its place in the hash chain, and its delivery state per sink",
        "parameters": [{"name": "record_id", "in": "path", "required": True, "schema": record_id}],
        "responses": {
            "200": {"description": "the record", "content": _json("#/components/schemas/RecordDetail")},
            "400": _error(
                "a record id that cannot be one (blank, too long, control characters), or any query "
                "parameter (this endpoint takes none)"
            ),
            **_common_errors(", or no such record (a record of a tenant this token may not read counts as none)"),
        },
    }


def _verify() -> dict[str, Any]:
    return {
        "operationId": "verifyChains",
        "summary": "Recompute every tenant's hash chain and check the signed checkpoints",
        "parameters": [_param("tenant", "only this tenant's chain (default: every tenant this token may read)")],
        "responses": {
            "200": {
                "description": "the verification; `ok` is false when any chain is broken",
                "content": _json("#/components/schemas/Verification"),
            },
            "400": _error("a bad tenant value, or an unknown or repeated parameter"),
            "403": _error("a `tenant` outside the tenants this token may read"),
            **_common_errors(", or no chain for that tenant"),
        },
    }


def _record_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "OCSF 1.x Entity Management (class 3004); `hash` = SHA-256(prev_hash ‖ canonical JSON).",
        "required": ["record_id", "event_id", "tenant", "topic", "time", "received_at", "entity", "prev_hash", "hash"],
        "properties": {
            "record_id": STRING,
            "event_id": STRING,
            "tenant": STRING,
            "topic": STRING,
            "time": STRING,
            "received_at": STRING,
            "class_uid": INTEGER,
            "category_uid": INTEGER,
            "activity_id": INTEGER,
            "type_uid": INTEGER,
            "severity_id": INTEGER,
            "entity": {
                "type": "object",
                "properties": {
                    "type": {"enum": ["API Key", "Access Key", "Project", "Unknown"]},
                    "uid": NULLABLE,
                    "name": NULLABLE,
                    "fingerprint": NULLABLE,
                    "prefix": NULLABLE,
                    "last4": NULLABLE,
                },
            },
            "project_id": NULLABLE,
            "account_id": NULLABLE,
            "actor": {"type": ["object", "null"], "properties": {"uid": STRING, "type": NULLABLE}},
            "metadata": {"type": "object", "additionalProperties": STRING},
            "raw_sha256": STRING,
            "raw_redacted": {"type": "object"},
            "prev_hash": STRING,
            "hash": STRING,
        },
    }


def _record_detail_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["record", "chain", "deliveries"],
        "properties": {
            "record": {"$ref": "#/components/schemas/AuditRecord"},
            "chain": {
                "type": "object",
                "properties": {
                    "tenant": STRING,
                    "seq": INTEGER,
                    "position": {"type": "integer", "description": "1-based, pruned records count"},
                    "prev_hash": STRING,
                    "hash": STRING,
                    "previous_record_id": NULLABLE,
                    "next_record_id": NULLABLE,
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
                        "sink": STRING,
                        "state": {"enum": ["pending", "retrying", "delivered", "dead"]},
                        "attempts": INTEGER,
                        "next_at": NULLABLE,
                        "reason": NULLABLE,
                        "updated_at": STRING,
                    },
                },
            },
        },
    }


def _verification_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ok", "tenants"],
        "properties": {
            "ok": {"type": "boolean"},
            "tenants": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "tenant": STRING,
                        "ok": {"type": "boolean"},
                        "records": INTEGER,
                        "checkpoints": INTEGER,
                        "break": {
                            "type": ["object", "null"],
                            "properties": {
                                "kind": {"enum": ["edited", "deleted", "inserted", "rewritten", "checkpoint"]},
                                "seq": {"type": ["integer", "null"]},
                                "record_id": NULLABLE,
                                "detail": STRING,
                            },
                        },
                    },
                },
            },
        },
    }
