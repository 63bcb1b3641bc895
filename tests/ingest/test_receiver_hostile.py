"""The receiver against hostile input over real HTTP and a real Redis: every answer is a JSON 2xx/4xx or a 503."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from harness import SIGNING_SECRET, TOKEN, ServerThread, SettingsFactory, signed_headers
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue

from broker.queues import INGEST_QUEUE, JobSerializer
from config import Settings
from config.logging import configure_logging
from events.redaction import MAX_DEPTH, Redactor
from ingest.app import create_app

ALLOWED = {200, 202, 400, 401, 404, 405, 413, 415, 503}
MAX_BODY = 1_000_000


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(server={"max_body_bytes": MAX_BODY}, ingest={"batch_max_wait_ms": 1.0})


@pytest.fixture
def token_only(make_settings: SettingsFactory) -> Settings:
    """A tenant that verifies by token alone: authenticated bodies reach the parser without a signature."""
    return make_settings(server={"max_body_bytes": MAX_BODY}, tenants={"acme": {"token": TOKEN}})


def serve(settings: Settings) -> tuple[ServerThread, httpx.Client]:
    server = ServerThread(create_app(settings)).__enter__()
    return server, httpx.Client(base_url=server.url, timeout=30)


@pytest.fixture
def receiver(settings: Settings, redis: Redis) -> Iterator[httpx.Client]:
    server, client = serve(settings)
    yield client
    client.close()
    server.__exit__(None, None, None)


def queued(redis: Redis) -> list[dict[str, Any]]:
    queue = Queue(INGEST_QUEUE, connection=redis, serializer=JobSerializer)
    return [event for job in queue.jobs for event in job.args[0]]


def nested(depth: int) -> bytes:
    """A JSON object `depth` objects deep: {"a": {"a": … 1 …}}."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def assert_json_answer(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in ALLOWED, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict)
    if 400 <= response.status_code < 500:
        assert isinstance(body.get("error"), str)
        assert body["error"]
    if response.status_code == 503:
        assert response.headers["retry-after"]
    return body


UNAUTHENTICATED = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        # Before any authentication: the body is never parsed, so nothing in it can cost a 500.
        (b"[" * 100_000 + b"]" * 100_000, UNAUTHENTICATED, 401, "missing x-keytrail-token"),
        (b'{"n": 1' + b"0" * 5000 + b"}", UNAUTHENTICATED, 401, "missing x-keytrail-token"),
        (b"{not json", {**signed_headers(), "x-keytrail-token": "wrong"}, 401, "x-keytrail-token does not match"),
        (b"{not json", signed_headers(**{"theauthapi-signature": "wrong"}), 401, "theauthapi-signature does not"),
        # Authenticated, then refused with a reason.
        (b"[" * 100_000 + b"]" * 100_000, None, 400, "not valid JSON"),
        (b'{"n": 1' + b"0" * 5000 + b"}", None, 400, "not valid JSON"),
        (b'{"n": 1' + b"0" * 400 + b"}", None, 400, "not valid JSON"),  # beyond a double: was a stdlib int
        (b'{"name": "\\ud800"}', None, 400, "not valid JSON"),
        (b'{"name": "\xed\xa0\x80"}', None, 400, "not valid JSON"),
        (b'{"name": "\\udc00\\ud800"}', None, 400, "not valid JSON"),
        (nested(300), None, 400, f"deeper than {MAX_DEPTH}"),
        (nested(MAX_DEPTH + 1), None, 400, f"deeper than {MAX_DEPTH}"),
        (b'{"data": [' * 40 + b"1" + b"]}" * 40, None, 400, f"deeper than {MAX_DEPTH}"),
    ],
)
def test_hostile_bodies_get_a_json_4xx_and_enqueue_nothing(
    receiver: httpx.Client,
    redis: Redis,
    body: bytes,
    headers: dict[str, str] | None,
    status: int,
    reason: str,
) -> None:
    response = receiver.post("/hooks/theauthapi/acme", content=body, headers=headers or signed_headers())

    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert queued(redis) == []


def test_nesting_up_to_the_limit_and_integers_beyond_64_bits_are_accepted(receiver: httpx.Client, redis: Redis) -> None:
    deep = receiver.post("/hooks/theauthapi/acme", content=nested(MAX_DEPTH), headers=signed_headers())
    wide = receiver.post(
        "/hooks/theauthapi/acme",
        content=b'{"id": "evt-wide-integer", "data": {"n": 18446744073709551616, "m": -9223372036854775809}}',
        headers=signed_headers(),
    )

    assert deep.status_code == 202, deep.text
    assert wide.status_code == 202, wide.text
    events = {event["event_key"]: json.loads(event["body"]) for event in queued(redis)}
    # orjson reads an integer wider than 64 bits as the nearest double: the event is kept, not refused.
    assert events["evt-wide-integer"]["data"] == {"n": 18446744073709551616.0, "m": -9223372036854775809.0}


def test_a_token_only_tenant_refuses_hostile_json_after_the_token(token_only: Settings, redis: Redis) -> None:
    server, client = serve(token_only)
    headers = {"content-type": "application/json", "x-keytrail-token": TOKEN}
    try:
        for body in (b"[" * 100_000, b'{"n": 1' + b"0" * 5000 + b"}", b'"\xed\xa0\x80"', nested(300)):
            assert client.post("/hooks/theauthapi/acme", content=body, headers=headers).status_code == 400
        unsigned_ping = client.post("/hooks/theauthapi/acme", content=b'{"keytrail_ping": "m-1"}', headers=headers)
        assert unsigned_ping.status_code == 200
    finally:
        client.close()
        server.__exit__(None, None, None)
    assert queued(redis) == []


class ExplodingRedactor(Redactor):
    """Stands in for any bug on the hot path: raises where no handler expects it."""

    def redact(self, value: Any, field: str = "") -> Any:
        raise RuntimeError("a bug in the receiver")


def test_an_unexpected_error_is_a_logged_503_with_retry_after_never_a_500(settings: Settings, redis: Redis) -> None:
    logs = io.StringIO()
    configure_logging("info", json=True, stream=logs)
    app = create_app(settings)
    body = b'{"id": "evt-12345678", "data": {"key": "live_k3yThatMustNotBeLoggedAnywhere0"}}'
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client:
        app.state.keytrail.redactor = ExplodingRedactor(b"pepper")
        response = client.post("/hooks/theauthapi/acme", content=body, headers=signed_headers())
        metrics = client.get("/metrics").text

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "retry later" in response.json()["error"]
    assert queued(redis) == []
    assert 'keytrail_webhooks_total{status="503",tenant="acme"} 1.0' in metrics
    failures = [json.loads(line) for line in logs.getvalue().splitlines() if "webhook_failed" in line]
    assert [entry["event"] for entry in failures] == ["webhook_failed"]
    assert "a bug in the receiver" in failures[0]["exception"]
    for secret in ("live_k3yThatMustNotBeLoggedAnywhere0", TOKEN, SIGNING_SECRET):
        assert secret not in logs.getvalue()


def test_metrics_label_only_configured_tenants(receiver: httpx.Client) -> None:
    typed = [f"made-up-{index}" for index in range(5)]
    for name in typed:
        receiver.post(f"/hooks/theauthapi/{name}", content=b"x" * (MAX_BODY + 1), headers=signed_headers())  # 413
        receiver.post(f"/hooks/theauthapi/{name}", content=b"{}", headers={"content-type": "text/plain"})  # 415
        receiver.post(f"/hooks/theauthapi/{name}", content=b"{}", headers=signed_headers())  # 404
    receiver.post("/hooks/theauthapi/acme", content=b"{}", headers={"content-type": "text/plain"})

    metrics = receiver.get("/metrics").text
    assert not [name for name in typed if name in metrics]
    for status in (413, 415, 404):
        assert f'keytrail_webhooks_total{{status="{status}",tenant="-"}} 5.0' in metrics
    assert 'keytrail_webhooks_total{status="415",tenant="acme"} 1.0' in metrics


# -- generated requests ---------------------------------------------------------------------------------------

ANY_CHARACTER = st.characters(codec=None, exclude_categories=())  # lone surrogates included
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(ANY_CHARACTER, max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHARACTER, max_size=8), inner, max_size=4),
    max_leaves=30,
)


def encode(value: Any) -> bytes:
    # ensure_ascii escapes lone surrogates as \ud800: JSON that orjson, unlike the stdlib, refuses.
    return json.dumps(value, ensure_ascii=True).encode()


def deep(depth: int, array: bool, closed: bool) -> bytes:
    opener, closer = (b"[", b"]") if array else (b'{"a":', b"}")
    return opener * depth + (b"1" + closer * depth if closed else b"")


DEPTHS = st.sampled_from([1, 2, 63, 64, 65, 100, 253, 254, 255, 300, 1023, 1024, 1025, 5000, 100_000])
HUGE_NUMBERS = st.builds(
    lambda sign, digits, wrap: wrap.replace(b"N", sign + b"9" * digits),
    st.sampled_from([b"", b"-"]),
    st.integers(min_value=1, max_value=6000),
    st.sampled_from([b"N", b'{"n": N}', b'{"data": {"n": N}}', b"[N]"]),
)
SURROGATES = st.sampled_from(
    [b'{"s": "\\ud800"}', b'{"s": "\xed\xa0\x80"}', b'{"\\udfff": 1}', b'{"s": "\\ud83d\\ude00"}', b"\xef\xbb\xbf{}"]
)
BODIES = (
    st.binary(max_size=200)
    | JSON_VALUES.map(encode)
    | st.dictionaries(st.text(ANY_CHARACTER, max_size=8), JSON_VALUES, max_size=5).map(encode)
    | st.builds(deep, DEPTHS, st.booleans(), st.booleans())
    | HUGE_NUMBERS
    | SURROGATES
    | st.builds(lambda marker: encode({"keytrail_ping": marker}), st.text(max_size=140))
)
HEADER_TEXT = st.text(
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation + " "), max_size=64
).map(
    str.strip  # the client refuses surrounding whitespace
)
CONTENT_TYPES = (
    st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "application/cloudevents+json", "text/plain", ""]
    )
    | HEADER_TEXT
)
TENANTS = st.sampled_from(["acme", "nobody", "ACME", "acme%2F..", "%00", "-", "."]) | st.text(
    min_size=1, max_size=30
).map(lambda text: quote(text, safe=""))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """Half the requests are authentic (right tenant, token and signature), so bodies reach the parser too."""
    body = draw(BODIES)
    digest = hmac.new(SIGNING_SECRET.encode(), body, hashlib.sha256).digest()
    signatures = {
        "static": SIGNING_SECRET,
        "hex": digest.hex(),
        "base64": base64.b64encode(digest).decode(),
        "wrong": "sha256=00",
        "huge": "s" * 4000,
        "absent": "",
    }
    headers = draw(st.dictionaries(st.sampled_from(["x-extra", "content-encoding", "x-forwarded-for"]), HEADER_TEXT))
    if draw(st.booleans()):
        tenant, token = "acme", TOKEN
        signature = signatures[draw(st.sampled_from(["static", "hex", "base64"]))]
        content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8"]))
    else:
        tenant = draw(TENANTS)
        token = draw(st.sampled_from([TOKEN, "nope", "t" * 4000, ""]))
        signature = signatures[draw(st.sampled_from(sorted(signatures)))]
        content_type = draw(CONTENT_TYPES)
    headers.update({"content-type": content_type, "x-keytrail-token": token, "theauthapi-signature": signature})
    return tenant, body, {name: value for name, value in headers.items() if value}


def test_any_generated_request_gets_a_json_answer_and_only_2xx_enqueues(settings: Settings, redis: Redis) -> None:
    server, client = serve(settings)
    queue = Queue(INGEST_QUEUE, connection=redis, serializer=JobSerializer)

    @hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(request=requests())
    def check(request: tuple[str, bytes, dict[str, str]]) -> None:
        tenant, body, headers = request
        before = queue.count
        response = client.post(f"/hooks/theauthapi/{tenant}", content=body, headers=headers)

        answer = assert_json_answer(response)
        if response.status_code == 202:
            [event] = [event for job in queue.get_jobs(offset=before) for event in job.args[0]]
            assert event["event_key"] == answer["event_id"]
            assert isinstance(orjson.loads(event["body"]), dict)
        else:
            assert queue.count == before

    try:
        check()
    finally:
        client.close()
        server.__exit__(None, None, None)
