"""The audit HTTP API on the receiver's app: bearer tokens, filters and cursors, one record, verify, OpenAPI."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from stores_fixtures import (
    PG_DATABASE,
    PG_SERVER,
    make_record,
    pg_url_fixture,  # noqa: F401 - fixtures
    route_all,
    store_url_fixture,  # noqa: F401 - fixtures
    tamper,
)
from structlog.testing import capture_logs

from audit import api
from audit.queries import FILTERS
from audit.stores import DeliveryOutcomes, open_store
from config import Settings, settings_from_mapping
from config.datadir import pepper
from events.redaction import fingerprint
from keytrail.serving import create_app

TOKENS = ["first-admin-token-0123456789", "second-admin-token-9876543210"]
RAW_KEY = "live_Qw3rTy5uI7oP9aS1dF3gH5jK7lZ9"


class TestClient:
    """Requests straight into the ASGI app (httpx's ASGITransport). The receiver's lifespan, which needs Redis,
    is not run: the API must not need it. An exception inside the app fails the test instead of becoming a 500."""

    __test__ = False

    def __init__(self, app: Starlette, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = headers or {}

    def get(
        self,
        path: str,
        *,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://receiver", headers=self.headers) as c:
                return await c.get(path, params=params, headers=headers)

        return asyncio.run(send())

    def post(self, path: str, *, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://receiver", headers=self.headers) as c:
                return await c.post(
                    path, content=content, headers={"content-type": "application/json", **(headers or {})}
                )

        return asyncio.run(send())

    def search(self, fields: Any) -> httpx.Response:
        return self.post("/api/audit/search", content=json.dumps(fields).encode())


def settings_for(tmp_path: Path, url: str, tokens: list[str] = TOKENS) -> Settings:
    return settings_from_mapping(
        {"data_dir": str(tmp_path / "data"), "audit": {"url": url}, "api": {"tokens": tokens}}, {}
    )


@pytest.fixture
def settings(tmp_path: Path, store_url: str) -> Settings:
    return settings_for(tmp_path, store_url)


@pytest.fixture
def app(settings: Settings) -> Iterator[Starlette]:
    """The receiver's app (its lifespan, which needs Redis, is not entered: the API must not need it)."""
    application = create_app(settings)
    yield application
    api.close(application)


@pytest.fixture
def client(app: Starlette) -> TestClient:
    return TestClient(app, headers={"authorization": f"Bearer {TOKENS[1]}"})


def fill(settings: Settings, records: list[Any]) -> None:
    store = open_store(settings.audit.url)
    try:
        store.append(records, route_all)
    finally:
        store.close()


def body(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


# ---- authorization ------------------------------------------------------------------------------------------


PATHS = ["/api/audit/records", "/api/audit/records/rec_x", "/api/audit/verify", "/api/openapi.json"]


@pytest.mark.parametrize("path", PATHS)
def test_without_configured_tokens_the_api_does_not_exist(tmp_path: Path, path: str) -> None:
    app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'a.db'}", tokens=[]))
    response = TestClient(app).get(path, headers={"authorization": f"Bearer {TOKENS[0]}"})
    assert response.status_code == 404
    assert not (tmp_path / "a.db").exists()  # nothing opened the store


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {TOKENS[0]}", "Bearer wrong-token", f"Bearer {TOKENS[0]}x"],
)
def test_a_missing_or_wrong_token_is_401(tmp_path: Path, header: str | None) -> None:
    app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'a.db'}"))
    client = TestClient(app)
    headers = {"authorization": header} if header is not None else {}
    for path in PATHS[:3]:
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert body(response) == {"error": "a valid bearer token is required"}
    assert not (tmp_path / "a.db").exists()


def test_any_configured_token_is_accepted(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'a.db'}"))
    client = TestClient(app)
    try:
        for token in TOKENS:
            assert client.get("/api/audit/records", headers={"authorization": f"bearer {token}"}).status_code == 200
    finally:
        api.close(app)


# ---- records --------------------------------------------------------------------------------------------------


def test_records_filter_and_page_with_an_opaque_cursor(settings: Settings, client: TestClient) -> None:
    key = fingerprint(pepper(settings), RAW_KEY)
    fill(settings, [make_record(n, key=key if n % 2 else None) for n in range(9)])
    fill(settings, [make_record(0, tenant="beta", key=key)])

    seen: list[str] = []
    params: dict[str, str] = {"key": RAW_KEY, "tenant": "acme", "limit": "2", "since": "2026-11-01T00:00:00Z"}
    for _ in range(5):
        response = client.get("/api/audit/records", params=params)
        assert response.status_code == 200, response.text
        page = body(response)
        seen += [r["record_id"] for r in page["records"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ["rec_acme_000007", "rec_acme_000005", "rec_acme_000003", "rec_acme_000001"]

    by_prefix = body(client.get("/api/audit/records", params={"key": "live_", "topic": "api-key.*"}))
    assert len(by_prefix["records"]) == 5
    assert by_prefix["next_cursor"] is None
    oldest = body(client.get("/api/audit/records", params={"order": "oldest", "limit": "1"}))
    assert oldest["records"][0]["record_id"] == "rec_acme_000000"
    assert oldest["records"][0]["hash"]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"since": "yesterday"}, "since: not a time"),
        ({"until": "2026-13-45"}, "until: not a time"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"limit": "0"}, "limit must be between 1 and 1000"),
        ({"limit": "5000"}, "limit must be between 1 and 1000"),
        ({"limit": "-1"}, "limit must be a whole number"),
        ({"cursor": "garbage"}, "cursor is not one this server issued"),
        ({"cursor": "eyJzIjoxLCJvIjoibmV3ZXN0In0", "order": "event_time"}, "another order"),
        ({"entity_type": "robot"}, "entity type 'robot'"),
        ({"order": "sideways"}, "order must be one of"),
        ({"colour": "red"}, "unknown parameter 'colour'"),
        ({"key": ""}, "key must not be empty"),
    ],
)
def test_bad_filter_values_are_400_with_a_reason(client: TestClient, params: dict[str, str], reason: str) -> None:
    response = client.get("/api/audit/records", params=params)
    assert response.status_code == 400
    assert reason in body(response)["error"]


def cursor_at(seq: int, order: str = "newest") -> str:
    return base64.urlsafe_b64encode(json.dumps({"s": seq, "o": order}).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        # Each of these was a 500 (an exception inside the handler).
        ("limit=%C2%B2", "limit must be a whole number"),  # "²".isdigit() is True; int("²") raises
        ("limit=" + "5" * 5000, "limit must be between 1 and 1000"),  # int() refuses 4,300+ digits
        ("since=999999w", "since: 999999w reaches back more than"),  # timedelta/datetime overflow
        ("since=0001-01-01T00:00:00%2B01:00", "since: time out of range"),  # before year 1 in UTC
        ("until=9999-12-31T23:59:59-01:00", "until: time out of range"),  # after year 9999 in UTC
        (f"cursor={cursor_at(2**70)}", "cursor is not one this server issued"),  # store integer overflow
        (f"cursor={cursor_at(2**63)}", "cursor is not one this server issued"),
        # A NUL cannot be stored in PostgreSQL text; the others never reached a query.
        ("tenant=acme%00", "tenant must not contain control characters"),
        ("topic=api-key%0A.*", "topic must not contain control characters"),
        ("event_id=" + "x" * 1025, "event_id is longer than 1024 characters"),
        ("limit=1&limit=2", "parameter 'limit' is given more than once"),
        ("tenant=acme&tenant=beta", "parameter 'tenant' is given more than once"),
        ("tenant=", "tenant must not be empty"),
        ("cursor=", "cursor must not be empty"),
        ("order=", "order must be one of"),
        ("limit=", "limit must be a whole number"),
        ("%00=1", "unknown parameter '\\x00'"),
    ],
)
def test_each_input_that_was_a_500_is_a_400_with_a_reason(client: TestClient, query: str, reason: str) -> None:
    response = client.get(f"/api/audit/records?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert reason in body(response)["error"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/audit/records/rec%00x", "record id must not contain control characters"),
        ("/api/audit/records/" + "r" * 300, "record id is longer than 256 characters"),
        ("/api/audit/records/rec_x?limit=1", "unknown parameter 'limit' (this endpoint takes no parameters)"),
        ("/api/audit/verify?tenant=acme%00", "tenant must not contain control characters"),
        ("/api/audit/verify?tenant=", "tenant must not be empty"),
        ("/api/audit/verify?tenant=a&tenant=b", "given more than once"),
    ],
)
def test_one_record_and_verify_check_their_parameters_too(client: TestClient, path: str, reason: str) -> None:
    response = client.get(path)
    assert response.status_code == 400, response.text
    assert reason in body(response)["error"]


def test_an_unexpected_failure_is_a_json_500_logged_with_its_traceback(settings: Settings, client: TestClient) -> None:
    fill(settings, [make_record(0, key=fingerprint(pepper(settings), RAW_KEY))])
    tamper(settings.audit.url, [("UPDATE records SET body = ? WHERE event_id = 'evt-0'", ["{not json"])])
    with capture_logs() as logs:
        response = client.get("/api/audit/records", params={"key": RAW_KEY})
    assert response.status_code == 500
    assert body(response) == {"error": "internal error; the receiver's log has the details"}
    [failed] = [entry for entry in logs if entry["event"] == "audit_api_failed"]
    assert (failed["log_level"], failed["exc_info"], failed["error"]) == ("error", True, "JSONDecodeError")
    assert RAW_KEY not in repr(logs)  # the query is not logged: it may hold a raw key


@pytest.mark.postgres
def test_a_store_connection_lost_mid_request_is_a_503_then_the_api_reconnects(tmp_path: Path, pg_url: str) -> None:
    name = f"keytrail_api_{uuid.uuid4().hex[:12]}"
    app = create_app(settings_for(tmp_path, f"{pg_url}&application_name={name}"))
    client = TestClient(app, headers={"authorization": f"Bearer {TOKENS[0]}"})
    try:
        assert client.get("/api/audit/records").status_code == 200
        with psycopg.connect(f"{PG_SERVER}/{PG_DATABASE}", autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchall()
        assert killed
        lost = client.get("/api/audit/records")
        assert (lost.status_code, lost.headers["retry-after"]) == (503, "5")
        assert body(lost) == {"error": "audit store unavailable; retry later"}
        assert client.get("/api/audit/records").status_code == 200
    finally:
        api.close(app)


def test_one_record_with_its_chain_and_deliveries(settings: Settings, client: TestClient) -> None:
    fill(settings, [make_record(n) for n in range(3)])
    store = open_store(settings.audit.url)
    try:
        store.record_outcomes("archive", DeliveryOutcomes(delivered=["rec_acme_000002"]))
    finally:
        store.close()

    detail = body(client.get("/api/audit/records/rec_acme_000002"))
    assert detail["record"]["event_id"] == "evt-2"
    assert detail["chain"]["position"] == 3
    assert detail["chain"]["previous_record_id"] == "rec_acme_000001"
    assert detail["chain"]["hash_ok"]
    assert detail["chain"]["linked_to_previous"]
    assert {(d["sink"], d["state"]) for d in detail["deliveries"]} == {("archive", "delivered"), ("splunk", "pending")}
    missing = client.get("/api/audit/records/rec_nope")
    assert (missing.status_code, body(missing)) == (404, {"error": "no such record"})


# ---- verify ---------------------------------------------------------------------------------------------------


def test_verify_reports_a_break(settings: Settings, client: TestClient) -> None:
    fill(settings, [make_record(n) for n in range(4)] + [make_record(0, tenant="beta")])
    assert body(client.get("/api/audit/verify"))["ok"] is True
    tamper(settings.audit.url, [("DELETE FROM records WHERE event_id = 'evt-1' AND tenant = 'acme'", [])])

    report = body(client.get("/api/audit/verify"))
    assert report["ok"] is False
    acme = next(t for t in report["tenants"] if t["tenant"] == "acme")
    assert (acme["break"]["kind"], acme["break"]["record_id"]) == ("deleted", "rec_acme_000002")
    assert body(client.get("/api/audit/verify", params={"tenant": "beta"}))["ok"] is True
    assert client.get("/api/audit/verify", params={"tenant": "gamma"}).status_code == 404
    assert client.get("/api/audit/verify", params={"tnt": "beta"}).status_code == 400


# ---- the store, lazily --------------------------------------------------------------------------------------------


def test_the_receiver_starts_and_answers_503_when_the_store_is_unreachable(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, "postgresql://postgres@127.0.0.1:1/keytrail_test?connect_timeout=2"))
    client = TestClient(app, headers={"authorization": f"Bearer {TOKENS[0]}"})
    assert client.get("/healthz").status_code == 200
    response = client.get("/api/audit/records")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert client.get("/api/openapi.json").status_code == 200


def test_the_store_opens_on_the_first_request_that_needs_it(tmp_path: Path) -> None:
    path = tmp_path / "later" / "audit.db"
    app = create_app(settings_for(tmp_path, f"sqlite:///{path}"))
    client = TestClient(app, headers={"authorization": f"Bearer {TOKENS[0]}"})
    try:
        assert client.get("/api/openapi.json").status_code == 200
        assert not path.exists()
        assert client.get("/api/audit/records").status_code == 200
        assert path.exists()
    finally:
        api.close(app)


def test_closing_the_app_closes_its_store_and_a_later_request_reopens_it(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'audit.db'}"))
    client = TestClient(app, headers={"authorization": f"Bearer {TOKENS[0]}"})
    try:
        assert client.get("/api/audit/records").status_code == 200
        api.close(app)
        api.close(app)  # twice is harmless
        assert client.get("/api/audit/records").status_code == 200
    finally:
        api.close(app)


# ---- OpenAPI --------------------------------------------------------------------------------------------------


def test_openapi_describes_the_api_without_a_token(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, f"sqlite:///{tmp_path / 'a.db'}"))
    document = body(TestClient(app).get("/api/openapi.json"))
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/api/audit/records",
        "/api/audit/records/{record_id}",
        "/api/audit/search",
        "/api/audit/verify",
        "/api/openapi.json",
    }
    listing = document["paths"]["/api/audit/records"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {*FILTERS, "limit", "cursor", "order"}
    search = document["paths"]["/api/audit/search"]["post"]
    fields = search["requestBody"]["content"]["application/json"]["schema"]
    assert set(fields["properties"]) == {*FILTERS, "limit", "cursor", "order"}
    assert {"200", "400", "403", "413", "401", "503"} <= set(search["responses"])
    assert {"200", "400", "401", "404", "503"} <= set(listing["responses"])
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    refs = _refs(document)
    assert refs
    assert all(ref.removeprefix("#/components/schemas/") in document["components"]["schemas"] for ref in refs)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


# ---- POST /api/audit/search: the same filters in a body, never in a URL ------------------------------------------


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"key": RAW_KEY, "tenant": "acme", "limit": "2"},
        {"key": "live_", "topic": "api-key.*", "order": "oldest", "limit": "3"},
        {"tenant": "beta"},
        {"since": "2026-11-01T00:00:00Z", "order": "event_time", "limit": "4"},
    ],
)
def test_search_answers_exactly_as_the_listing_page_after_page(
    settings: Settings, client: TestClient, filters: dict[str, str]
) -> None:
    key = fingerprint(pepper(settings), RAW_KEY)
    fill(settings, [make_record(n, key=key if n % 2 else None) for n in range(9)])
    fill(settings, [make_record(0, tenant="beta", key=key)])
    get_params, post_fields = dict(filters), dict(filters)
    for _ in range(10):
        listed, searched = client.get("/api/audit/records", params=get_params), client.search(post_fields)
        assert (searched.status_code, body(searched)) == (listed.status_code, body(listed)) == (200, body(listed))
        if body(listed)["next_cursor"] is None:
            break
        get_params["cursor"] = post_fields["cursor"] = body(listed)["next_cursor"]
    else:
        pytest.fail("more pages than records")


def test_search_finds_a_raw_keys_records_and_logs_only_its_fingerprint(settings: Settings, client: TestClient) -> None:
    key = fingerprint(pepper(settings), RAW_KEY)
    fill(settings, [make_record(n, key=key if n % 2 else None) for n in range(6)])
    with capture_logs() as logs:
        response = client.search({"key": RAW_KEY, "limit": "10"})
    assert response.status_code == 200, response.text
    assert [r["record_id"] for r in body(response)["records"]] == [
        "rec_acme_000005",
        "rec_acme_000003",
        "rec_acme_000001",
    ]
    assert RAW_KEY not in repr(logs)
    reads = [entry for entry in logs if entry["event"] == "audit_api_read"]
    assert reads == [
        {
            "event": "audit_api_read",
            "log_level": "info",
            "token": reads[0]["token"],
            "route": "/api/audit/search",
            "filters": {"key": key, "limit": "10"},
            "records": 3,
            "status": 200,
        }
    ]


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [
        (b"", 400, "the body must be a JSON object"),
        (b"not json", 400, "the body must be a JSON object"),
        (b"[]", 400, "the body must be a JSON object"),
        (b'[["tenant", "acme"]]', 400, "the body must be a JSON object"),
        (b'"tenant=acme"', 400, "the body must be a JSON object"),
        (b"\xff\xfe{}", 400, "the body must be a JSON object"),
        (b"[" * 5000 + b"]" * 5000, 400, "the body must be a JSON object"),
        (b'{"tenat": "acme"}', 400, "unknown field 'tenat'"),
        (b'{"tenant": "acme", "tenant": "beta"}', 400, "field 'tenant' is given more than once"),
        (b'{"tenant": ""}', 400, "tenant must not be empty"),
        (b'{"tenant": "  "}', 400, "tenant must not be empty"),
        (b'{"limit": 5}', 400, "field 'limit' must be a string"),
        (b'{"tenant": null}', 400, "field 'tenant' must be a string"),
        (b'{"key": ["live_x"]}', 400, "field 'key' must be a string"),
        (b'{"limit": "1001"}', 400, "limit must be between 1 and 1000"),
        (b'{"tenant": "a\\u0000b"}', 400, "tenant must not contain control characters"),
        (b'{"tenant": "\\ud800"}', 400, "tenant must not contain control characters"),
        (b'{"order": "sideways"}', 400, "order"),
        (b'{"tenant": "' + b"a" * 17000 + b'"}', 413, "the body is larger than 16384 bytes"),
    ],
)
def test_bad_search_bodies_are_400_or_413_with_a_reason(
    client: TestClient, content: bytes, status: int, reason: str
) -> None:
    response = client.post("/api/audit/search", content=content)
    assert response.status_code == status, response.text
    assert reason in body(response)["error"]


def test_search_takes_no_query_parameters(client: TestClient) -> None:
    response = client.post("/api/audit/search?key=live_", content=b"{}")
    assert response.status_code == 400
    assert "unknown parameter 'key'" in body(response)["error"]


def test_a_scoped_token_is_scoped_on_search_too(tmp_path: Path, store_url: str) -> None:
    scoped = "scoped-search-token-0123456789"
    settings = settings_from_mapping(
        {
            "data_dir": str(tmp_path / "data"),
            "audit": {"url": store_url},
            "api": {"tokens": [{"name": "beta-only", "token": scoped, "tenants": ["beta"]}]},
        },
        {},
    )
    fill(settings, [make_record(n) for n in range(3)] + [make_record(0, tenant="beta")])
    app = create_app(settings)
    client = TestClient(app, headers={"authorization": f"Bearer {scoped}"})
    try:
        everything = client.search({})
        assert [r["tenant"] for r in body(everything)["records"]] == ["beta"]
        refused = client.search({"tenant": "acme"})
        assert refused.status_code == 403
        assert "may not read tenant 'acme'" in body(refused)["error"]
        assert client.search({"tenant": "beta"}).status_code == 200
    finally:
        api.close(app)
