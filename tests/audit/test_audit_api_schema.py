"""The audit API keeps to its OpenAPI document (schemathesis) and answers any query string with 200 or a JSON 400
(hypothesis): uvicorn on 127.0.0.1, a real SQLite store holding a few records, the bearer token of a real config."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from harness import REDIS_URL, ServerThread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from stores_fixtures import make_record, route_all

from audit.queries import FILTERS
from audit.stores import DeliveryOutcomes, open_store
from config import settings_from_mapping
from keytrail.serving import create_app

TOKEN = "schema-test-api-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
RECORD_IDS = [f"rec_acme_{n:06d}" for n in range(6)]
PATHS = ["/api/audit/records", "/api/audit/records/{record_id}", "/api/audit/verify", "/api/audit/search"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    folder = Path(tmp_path_factory.mktemp("audit-api"))
    url = f"sqlite:///{folder / 'audit.db'}"
    store = open_store(url)
    try:
        store.append([make_record(n) for n in range(6)] + [make_record(0, tenant="beta")], route_all)
        store.record_outcomes("archive", DeliveryOutcomes(delivered=RECORD_IDS[:2]))
    finally:
        store.close()
    settings = settings_from_mapping(
        {
            "data_dir": str(folder / "data"),
            "redis": {"url": REDIS_URL, "autostart": False},
            "audit": {"url": url},
            "api": {"tokens": [TOKEN]},
        },
        {},
    )
    with ServerThread(create_app(settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[httpx.Client]:
    # Following redirects: Starlette answers a path with a trailing slash (an id ending in `%2F`, or an empty id)
    # with a 307 to the same path without it.
    with httpx.Client(base_url=server.url, headers=AUTH, follow_redirects=True) as opened:
        yield opened


@pytest.fixture(scope="module")
def api_schema(server: ServerThread) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")


# ---- schemathesis: the document and the server agree -----------------------------------------------------------
# Cases are drawn from schemathesis' strategies inside a plain hypothesis test: its `from_fixture` pytest loader
# reads `request.node._nodeid`, which pytest 9 no longer has.


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        *((path, mode) for path in PATHS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
        ("/api/openapi.json", GenerationMode.POSITIVE),  # no parameter to get wrong
    ],
)
def test_the_api_keeps_to_its_openapi_document(api_schema: Any, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path]["POST" if path == "/api/audit/search" else "GET"]

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    def each(case: Any) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    each()


def test_a_record_detail_and_a_page_conform_to_the_document(api_schema: Any, server: ServerThread) -> None:
    # Generated record ids rarely name a stored record; these do, so the 200 schemas are checked too.
    detail = api_schema["/api/audit/records/{record_id}"]["GET"].Case(path_parameters={"record_id": RECORD_IDS[1]})
    assert detail.call_and_validate(headers=AUTH, checks=CHECKS).status_code == 200
    page = api_schema["/api/audit/records"]["GET"].Case(query={"limit": 2, "order": "oldest"})
    assert page.call_and_validate(headers=AUTH, checks=CHECKS).status_code == 200


# ---- hypothesis: any query string ------------------------------------------------------------------------------

# Values at and past each parser's edges first: hypothesis draws the first branch of a `one_of` (and the first
# items of a `sampled_from`) more often, and small numbers far more often than huge ones.
ODD_TIMES = st.one_of(
    st.builds(
        "{:04d}-{:02d}-{:02d}T23:59:59{}".format,
        st.sampled_from([1, 9999, 1969, 2026, 0, 10000]),
        st.sampled_from([1, 12, 0, 13]),
        st.sampled_from([1, 31, 0, 32]),
        st.sampled_from(["+01:00", "-01:00", "+14:00", "-23:59", "", "Z"]),
    ),
    st.builds(
        "{}{}".format,
        st.one_of(st.sampled_from([999999, 5219, 36526, 10**6, 5218, 36525]), st.integers(0, 10**7)),
        st.sampled_from("wdhms"),
    ),
)
NUMBERS = st.one_of(
    st.sampled_from(["9" * 5000, "9" * 4301, str(2**63), "\u00b2", "\u0661", "\uff11", "1e3", "1_000", "-0", "+1"]),
    st.sampled_from(["1001", "0", "1", "1000", " 5 ", "9" * 19, "9" * 4300]),
    st.integers().map(str),
)
SEQS = st.one_of(
    st.sampled_from([2**63, 2**64, 10**30, -1, 2**63 - 1]), st.integers(), st.floats(), st.text(max_size=4)
)
CURSORS = st.builds(
    lambda seq, order: base64.urlsafe_b64encode(json.dumps({"s": seq, "o": order}).encode()).decode().rstrip("="),
    SEQS,
    st.sampled_from(["newest", "oldest", "event_time"]),
)
# Past every bound and cheap to generate; at most ~15 KB once percent-encoded, so 4 of them fit httpx's URL limit.
HUGE = st.one_of(st.text(min_size=1, max_size=4).map(lambda text: text * 300), st.just("9" * 1025))
JUNK = st.one_of(st.text(max_size=40), HUGE, st.binary(max_size=20), st.just(""))
# Each known parameter gets values aimed at its own parser as well as junk; unknown names get junk.
TAILORED = {"limit": NUMBERS, "since": ODD_TIMES, "until": ODD_TIMES, "cursor": CURSORS}
PAIRS = st.one_of(
    *(
        st.tuples(st.just(name), st.one_of(TAILORED.get(name, NUMBERS | ODD_TIMES), JUNK))
        for name in (*FILTERS, "limit", "cursor", "order")
    ),
    st.tuples(st.text(max_size=8), JUNK),
)
VALUES = st.one_of(JUNK, ODD_TIMES, NUMBERS, CURSORS)


def encoded(text: str | bytes) -> str:
    """Percent-encoded as a client would send it; lone surrogates go as the invalid UTF-8 they would be."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return quote(raw, safe="")


@given(pairs=st.lists(PAIRS, max_size=4))
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_query_string_is_a_page_or_a_json_400(client: httpx.Client, pairs: list[tuple[str, Any]]) -> None:
    query = "&".join(f"{encoded(name)}={encoded(value)}" for name, value in pairs)
    response = client.get(f"/api/audit/records?{query}")
    assert response.status_code in (200, 400), (query, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if response.status_code == 400:
        assert isinstance(body["error"], str)
        assert body["error"].isprintable()
    else:
        assert isinstance(body["records"], list)


@given(value=VALUES)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_record_id_or_verify_tenant_is_answered_in_json(client: httpx.Client, value: Any) -> None:
    answers = [
        client.get(f"/api/audit/verify?tenant={encoded(value)}"),
        client.get(f"/api/audit/records/{encoded(value)}"),
    ]
    for response in answers:
        assert response.status_code in (200, 400, 404), response.text
        assert response.headers["content-type"] == "application/json"
        assert isinstance(response.json(), dict)
