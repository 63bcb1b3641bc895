"""Scoped API tokens (a token reads only its tenants, on every route, through every cursor) and the reader's log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import ServerThread
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis import Redis
from stores_fixtures import (
    make_record,
    route_all,
    store_url_fixture,  # noqa: F401 - fixtures
    tamper,
)
from structlog.testing import capture_logs

from audit import api
from audit.queries import encode_cursor
from audit.stores import open_store
from config import ConfigError, Settings, settings_from_mapping
from config.datadir import pepper
from events.redaction import fingerprint
from keytrail.serving import create_app

ADMIN, ACME, PAIR = "admin-token-0123456789abcdef", "acme-soc-token-0123456789abc", "pair-token-0123456789abcdefg"
RAW_KEY = "live_Sc0p3dT0k3nRawKeyNeverLogged9"
TOKENS: list[Any] = [
    ADMIN,
    {"name": "acme-soc", "token": "env:ACME_SOC_TOKEN", "tenants": ["acme"]},
    {"name": "pair", "token": PAIR, "tenants": ["acme", "initech"]},
]


def settings_for(tmp_path: Path, url: str, **extra: Any) -> Settings:
    data = {"data_dir": str(tmp_path / "data"), "audit": {"url": url}, "api": {"tokens": TOKENS}, **extra}
    return settings_from_mapping(data, {"ACME_SOC_TOKEN": ACME})


def get(app: Any, token: str, path: str, params: dict[str, str] | None = None) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            return await client.get(path, params=params, headers={"authorization": f"Bearer {token}"})

    return asyncio.run(send())


@pytest.fixture
def settings(tmp_path: Path, store_url: str) -> Settings:
    return settings_for(tmp_path, store_url)


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    application = create_app(settings)
    yield application
    api.close(application)


def fill(settings: Settings) -> dict[str, set[str]]:
    """Interleaved records of three tenants (so every page boundary falls between tenants), some with the key."""
    key = fingerprint(pepper(settings), RAW_KEY)
    store = open_store(settings.audit.url)
    ids: dict[str, set[str]] = {"acme": set(), "globex": set(), "initech": set()}
    try:
        for n in range(12):
            for tenant, seen in ids.items():
                store.append([make_record(n, tenant=tenant, key=key if n % 3 else None)], route_all)
                seen.add(f"rec_{tenant}_{n:06d}")
    finally:
        store.close()
    return ids


def every_page(app: Any, token: str, params: dict[str, str]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    params = dict(params)
    for _ in range(50):
        response = get(app, token, "/api/audit/records", params)
        assert response.status_code == 200, response.text
        page = response.json()
        records += page["records"]
        if page["next_cursor"] is None:
            return records
        params["cursor"] = page["next_cursor"]
    raise AssertionError("paging did not end")


# ---- config ---------------------------------------------------------------------------------------------------


def test_tokens_are_plain_strings_or_named_tables_with_tenants() -> None:
    settings = settings_from_mapping({"api": {"tokens": TOKENS}}, {"ACME_SOC_TOKEN": ACME})
    named = {t.name: (t.token.reveal(), t.tenants) for t in settings.api.tokens}
    assert named == {"token-1": (ADMIN, ("*",)), "acme-soc": (ACME, ("acme",)), "pair": (PAIR, ("acme", "initech"))}
    assert ACME not in repr(settings)


def test_each_token_problem_is_one_line() -> None:
    bad = [
        {"token": "x", "tenants": ["acme"]},
        {"name": "no-secret", "tenants": ["acme"]},
        {"name": "nobody", "token": "y", "tenants": []},
        {"name": "twice", "token": "a", "tenants": ["*"]},
        {"name": "twice", "token": "b", "tenants": ["*"]},
        {"name": "unset", "token": "env:NOT_SET_ANYWHERE", "tenants": ["*"]},
    ]
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping({"api": {"tokens": bad}}, {})
    assert list(raised.value.problems) == [
        "api.tokens[0].name: required; letters, digits, '_', '-', '.' (max 64)",
        "api.tokens.no-secret.token: required (literal, env:NAME or file:/path)",
        'api.tokens.nobody.tenants: required, non-empty list of tenant names (["*"] for all)',
        "api.tokens.unset.token: environment variable NOT_SET_ANYWHERE is not set",
        "api.tokens: token name 'twice' is used twice",
    ]


# ---- the scope on every route ------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["newest", "oldest", "event_time"])
def test_a_scoped_token_pages_through_its_tenants_only(settings: Settings, app: Any, order: str) -> None:
    ids = fill(settings)
    acme = every_page(app, ACME, {"limit": "5", "order": order})
    assert {r["record_id"] for r in acme} == ids["acme"]
    assert len(acme) == len(ids["acme"])

    # Two tenants: merged into one order, the same records and order the all-tenant token sees for them.
    pair = [r["record_id"] for r in every_page(app, PAIR, {"limit": "4", "order": order})]
    everything = every_page(app, ADMIN, {"limit": "1000", "order": order})
    assert pair == [r["record_id"] for r in everything if r["tenant"] in ("acme", "initech")]
    assert {r["tenant"] for r in everything} == {"acme", "globex", "initech"}  # a plain string still reads all


def test_a_tenant_filter_outside_the_scope_is_403_with_a_reason(settings: Settings, app: Any) -> None:
    fill(settings)
    for path in ("/api/audit/records", "/api/audit/verify"):
        response = get(app, ACME, path, {"tenant": "globex"})
        assert response.status_code == 403
        assert response.json() == {"error": "token 'acme-soc' may not read tenant 'globex'"}
    # A tenant that does not exist is refused the same way: the answer does not tell which tenants exist.
    assert get(app, ACME, "/api/audit/records", {"tenant": "nonesuch"}).json() == {
        "error": "token 'acme-soc' may not read tenant 'nonesuch'"
    }
    assert get(app, ACME, "/api/audit/records", {"tenant": "acme"}).status_code == 200


def test_a_crafted_cursor_cannot_widen_the_scope(settings: Settings, app: Any) -> None:
    fill(settings)
    for order in ("newest", "oldest"):
        for seq in (0, 1, 17, 36, 10_000):
            page = get(app, ACME, "/api/audit/records", {"order": order, "cursor": encode_cursor(seq, order)})
            assert page.status_code == 200
            assert {r["tenant"] for r in page.json()["records"]} <= {"acme"}
    forged = encode_cursor(0, "event_time", "0000-01-01T00:00:00Z")
    page = get(app, ACME, "/api/audit/records", {"order": "event_time", "cursor": forged})
    assert {r["tenant"] for r in page.json()["records"]} == {"acme"}
    # A cursor from the all-tenant token's query, replayed with the scoped token, still reads acme only.
    admin_cursor = get(app, ADMIN, "/api/audit/records", {"limit": "1"}).json()["next_cursor"]
    replayed = get(app, ACME, "/api/audit/records", {"cursor": admin_cursor, "limit": "1000"}).json()
    assert replayed["records"]
    assert {r["tenant"] for r in replayed["records"]} == {"acme"}


def test_another_tenants_record_is_404_exactly_like_a_missing_one(settings: Settings, app: Any) -> None:
    fill(settings)
    other = get(app, ACME, "/api/audit/records/rec_globex_000001")
    missing = get(app, ACME, "/api/audit/records/rec_nothing_000001")
    assert (other.status_code, other.content) == (missing.status_code, missing.content) == (404, missing.content)
    assert other.headers == missing.headers
    assert get(app, ACME, "/api/audit/records/rec_acme_000001").json()["record"]["tenant"] == "acme"
    assert get(app, ADMIN, "/api/audit/records/rec_globex_000001").status_code == 200


def test_verify_covers_only_the_tokens_tenants(settings: Settings, app: Any) -> None:
    fill(settings)
    tamper(settings.audit.url, [("DELETE FROM records WHERE record_id = 'rec_globex_000003'", [])])

    acme = get(app, ACME, "/api/audit/verify").json()
    assert acme["ok"] is True
    assert [t["tenant"] for t in acme["tenants"]] == ["acme"]
    pair = get(app, PAIR, "/api/audit/verify").json()
    assert [t["tenant"] for t in pair["tenants"]] == ["acme", "initech"]
    assert "globex" not in str(acme) + str(pair)
    admin = get(app, ADMIN, "/api/audit/verify").json()
    assert admin["ok"] is False  # the break is real; only the scoped tokens do not see it


FILTER_VALUES = {
    "tenant": st.sampled_from(["acme", "globex", "initech"]),
    "topic": st.sampled_from(["api-key.*", "api-key.created", "*"]),
    "key": st.sampled_from([RAW_KEY, "live_"]),
    "project": st.just("proj-1"),
    "account": st.just("acct-1"),
    "entity_type": st.sampled_from(["api-key", "project"]),
    "event_id": st.sampled_from(["evt-1", "evt-4"]),
    "since": st.sampled_from(["2026-11-01T10:00:03Z", "2020-01-01T00:00:00Z"]),
    "until": st.sampled_from(["2026-11-01T10:00:08Z", "2030-01-01T00:00:00Z"]),
}


@hypothesis_settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    filters=st.fixed_dictionaries({}, optional=FILTER_VALUES),
    order=st.sampled_from(["newest", "oldest", "event_time"]),
    limit=st.integers(1, 40),
    cursor_seq=st.none() | st.integers(0, 60),
)
def test_no_filter_combination_shows_acme_another_tenant(
    tmp_path: Path, filters: dict[str, str], order: str, limit: int, cursor_seq: int | None
) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'audit.db'}")
    if not (tmp_path / "audit.db").exists():
        fill(settings)
    app = create_app(settings)
    try:
        params = {**filters, "order": order, "limit": str(limit)}
        if cursor_seq is not None:
            time = "2026-11-01T10:00:05.000Z" if order == "event_time" else None
            params["cursor"] = encode_cursor(cursor_seq, order, time)
        response = get(app, ACME, "/api/audit/records", params)
        if filters.get("tenant", "acme") != "acme":
            assert response.status_code == 403
            return
        assert response.status_code in (200, 400), response.text  # 400: since after until, say
        if response.status_code == 200:
            page = response.json()
            assert {r["tenant"] for r in page["records"]} <= {"acme"}
            if page["next_cursor"]:
                follow = get(app, ACME, "/api/audit/records", {**params, "cursor": page["next_cursor"]}).json()
                assert {r["tenant"] for r in follow["records"]} <= {"acme"}
    finally:
        api.close(app)


# ---- the reader's log ---------------------------------------------------------------------------------------------


def test_every_request_is_logged_with_the_token_name_and_never_a_raw_key(settings: Settings, app: Any) -> None:
    fill(settings)
    with capture_logs() as logs:
        found = get(app, ACME, "/api/audit/records", {"key": RAW_KEY, "topic": "api-key.*", "limit": "3"})
        get(app, ACME, "/api/audit/records", {"tenant": "globex", "key": RAW_KEY})
        get(app, "not-a-token", "/api/audit/records", {"key": RAW_KEY})
        get(app, ACME, "/api/audit/records/rec_globex_000001")
        get(app, PAIR, "/api/audit/verify")

    reads = [entry for entry in logs if entry["event"] == "audit_api_read"]
    assert RAW_KEY not in repr(logs)
    key = fingerprint(pepper(settings), RAW_KEY)
    assert found.status_code == 200
    assert reads[0] == {
        "event": "audit_api_read",
        "log_level": "info",
        "token": "acme-soc",
        "route": "/api/audit/records",
        "filters": {"key": key, "topic": "api-key.*", "limit": "3"},
        "records": 3,
        "status": 200,
    }
    assert (reads[1]["token"], reads[1]["status"], reads[1]["filters"]["key"]) == ("acme-soc", 403, key)
    assert (reads[2]["token"], reads[2]["status"], reads[2]["filters"]) == (None, 401, {})
    assert reads[3]["route"] == "/api/audit/records/{record_id}"
    assert (reads[3]["filters"], reads[3]["records"], reads[3]["status"]) == (
        {"record_id": "rec_globex_000001"},
        0,
        404,
    )
    assert (reads[4]["token"], reads[4]["route"], reads[4]["records"]) == ("pair", "/api/audit/verify", 24)


def test_reads_are_counted_in_the_receivers_metrics(tmp_path: Path, redis: Redis) -> None:
    from harness import REDIS_URL

    settings = settings_for(
        tmp_path, f"sqlite:///{tmp_path / 'audit.db'}", redis={"url": REDIS_URL, "autostart": False}
    )
    fill(settings)
    app = create_app(settings)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(2):
            client.get("/api/audit/records", headers={"authorization": f"Bearer {ACME}"})
        client.get("/api/audit/records", params={"tenant": "globex"}, headers={"authorization": f"Bearer {ACME}"})
        metrics = client.get("/metrics").text
    api.close(app)
    assert 'keytrail_audit_api_reads_total{route="/api/audit/records",status="200",token="acme-soc"} 2.0' in metrics
    assert 'keytrail_audit_api_reads_total{route="/api/audit/records",status="403",token="acme-soc"} 1.0' in metrics
