"""The CRM webhook sink: Standard Webhooks signatures (checked by the reference library) and a loopback receiver."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from config.errors import ConfigError
from config.settings import Secret, SinkSettings
from events.records import AuditRecord
from sinks.base import Outcome
from sinks.errors import SinkDisabled, SinkRejected, SinkUnavailable
from sinks.http import parse_retry_after
from sinks.webhook import (
    WebhookSink,
    classify,
    decode_secret,
    render_body,
    render_headers,
    sign,
)

MakeRecord = Callable[..., AuditRecord]
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
URL_TOKEN = "tok_SHOULD_NOT_LEAK"


class FakeCrm:
    """An inbound webhook endpoint: keeps each request's headers and raw body; `script` forces the next answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[tuple[int, str, dict[str, str]]] = []
        self.app = Starlette(routes=[Route("/hooks/keytrail", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> PlainTextResponse:
        self.requests.append((dict(request.headers), await request.body()))
        if self.script:
            status, text, headers = self.script.pop(0)
            return PlainTextResponse(text, status_code=status, headers=headers)
        return PlainTextResponse("", status_code=204)


@pytest.fixture
def crm(serve: Callable[[Any], str]) -> tuple[FakeCrm, str]:
    fake = FakeCrm()
    return fake, f"{serve(fake.app)}/hooks/keytrail?token={URL_TOKEN}"


@pytest.fixture
def crm_sink() -> Iterator[Callable[..., WebhookSink]]:
    """`crm_sink(url, **kwargs)`: a sink with the test secret, closed after the test."""
    built: list[WebhookSink] = []

    def make(url: str, **kwargs: Any) -> WebhookSink:
        built.append(WebhookSink("crm", Secret(url), Secret(SECRET), **kwargs))
        return built[-1]

    yield make
    for sink in built:
        sink.close()


# --- signing --------------------------------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_reference_library_verifies_what_we_render(make_record: MakeRecord) -> None:
    record = make_record(entity_name="ünïcode key")
    body = render_body(record)
    now = int(datetime.now(tz=UTC).timestamp())
    headers = render_headers(record, body, decode_secret(SECRET), now)
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    assert headers["webhook-id"] == record.event_id


def test_reference_library_refuses_a_tampered_body(make_record: MakeRecord) -> None:
    record = make_record()
    body = render_body(record)
    headers = render_headers(record, body, decode_secret(SECRET), int(datetime.now(tz=UTC).timestamp()))
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(body.replace(b"acme", b"acmf"), headers)


def test_body_is_the_standard_webhooks_envelope(make_record: MakeRecord) -> None:
    record = make_record(topic="api-key.firstUsed")
    assert json.loads(render_body(record)) == {
        "type": "api-key.firstUsed",
        "timestamp": record.time,
        "data": record.to_dict(),
    }


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", ""])
def test_unusable_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        decode_secret(secret)


# --- classification -------------------------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retry_after"),
    [
        (200, "", {}, None, None),
        (201, "created", {}, None, None),
        (204, "", {}, None, None),
        (410, "gone", {}, SinkDisabled, None),
        (429, "slow down", {"Retry-After": "30"}, SinkUnavailable, 30.0),
        (502, "bad gateway", {}, SinkUnavailable, None),
        (
            503,
            "",
            {"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 90, tz=UTC), usegmt=True)},
            SinkUnavailable,
            90.0,
        ),
        (504, "", {"Retry-After": "soon"}, SinkUnavailable, None),
        (500, "boom", {}, SinkUnavailable, None),
        (400, '{"error":"bad field"}', {}, SinkRejected, None),
        (401, "unauthorized", {}, SinkRejected, None),
        (404, "not found", {}, SinkRejected, None),
        (422, "x" * 5000, {}, SinkRejected, None),
        (301, "", {"Location": "https://elsewhere"}, SinkUnavailable, None),
    ],
)
def test_classify_receiver_answers(
    status: int, body: str, headers: dict[str, str], expected: type[Exception] | None, retry_after: float | None
) -> None:
    error = classify(httpx.Response(status, text=body, headers=headers), now=NOW)
    if expected is None:
        assert error is None
        return
    assert type(error) is expected
    assert error is not None
    assert error.reason.startswith(f"HTTP {status}")
    assert len(error.reason) < 300
    if isinstance(error, SinkUnavailable):
        assert error.retry_after == retry_after
        assert error.alert is (300 <= status < 400)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("-3", 0.0),
        ("99999999", 86400.0),
        ("nan", None),
        ("tomorrow", None),
        (format_datetime(datetime.fromtimestamp(NOW + 60, tz=UTC), usegmt=True), 60.0),
        (format_datetime(datetime.fromtimestamp(NOW - 60, tz=UTC), usegmt=True), 0.0),
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


# --- against the loopback receiver ----------------------------------------------------------------------------


def test_each_record_is_one_signed_request_the_reference_library_accepts(
    crm_sink: Callable[..., WebhookSink], crm: tuple[FakeCrm, str], make_record: MakeRecord
) -> None:
    fake, url = crm
    records = [make_record(), make_record(topic="api-key.firstUsed")]
    report = crm_sink(url).send(records)
    assert report.outcomes == {r.record_id: Outcome.DELIVERED for r in records}
    assert len(fake.requests) == 2
    for (headers, body), record in zip(fake.requests, records, strict=True):
        assert Webhook(SECRET).verify(body, headers)["data"] == record.to_dict()
        assert headers["webhook-id"] == record.event_id
        assert headers["content-type"] == "application/json"


def test_webhook_id_is_stable_across_retries(
    crm_sink: Callable[..., WebhookSink], crm: tuple[FakeCrm, str], make_record: MakeRecord
) -> None:
    fake, url = crm
    clock = [1_900_000_000.0]
    sink = crm_sink(url, clock=lambda: clock[0])
    record = make_record()
    fake.script.append((503, "busy", {"Retry-After": "4"}))
    with pytest.raises(SinkUnavailable) as caught:
        sink.send([record])
    assert caught.value.retry_after == 4.0
    clock[0] += 4
    assert sink.send([record]).outcomes == {record.record_id: Outcome.DELIVERED}
    (first, _), (second, _) = fake.requests
    assert first["webhook-id"] == second["webhook-id"] == record.event_id
    assert (first["webhook-timestamp"], second["webhook-timestamp"]) == ("1900000000", "1900000004")


def test_gone_disables_the_sink(
    crm_sink: Callable[..., WebhookSink], crm: tuple[FakeCrm, str], make_record: MakeRecord
) -> None:
    fake, url = crm
    fake.script.append((410, "endpoint removed", {}))
    with pytest.raises(SinkDisabled, match="HTTP 410"):
        crm_sink(url).send([make_record(), make_record()])
    assert len(fake.requests) == 1


def test_gone_mid_batch_keeps_what_was_delivered_and_retries_the_rest(
    crm_sink: Callable[..., WebhookSink], crm: tuple[FakeCrm, str], make_record: MakeRecord
) -> None:
    fake, url = crm
    first, second = make_record(), make_record()
    fake.script += [(200, "", {}), (410, "", {})]
    report = crm_sink(url).send([first, second])
    assert report.outcomes == {first.record_id: Outcome.DELIVERED, second.record_id: Outcome.RETRY}


def test_rate_limit_is_retry_later_with_the_peers_hint(
    crm_sink: Callable[..., WebhookSink], crm: tuple[FakeCrm, str], make_record: MakeRecord
) -> None:
    fake, url = crm
    fake.script.append((429, "too many", {"Retry-After": "12"}))
    with pytest.raises(SinkUnavailable) as caught:
        crm_sink(url).send([make_record()])
    assert caught.value.retry_after == 12.0


def test_a_refused_record_is_dead_lettered_and_the_rest_delivered(
    crm_sink: Callable[..., WebhookSink], crm: tuple[FakeCrm, str], make_record: MakeRecord
) -> None:
    fake, url = crm
    refused, fine = make_record(), make_record()
    fake.script.append((400, '{"error": "unknown field tenant"}', {}))
    report = crm_sink(url).send([refused, fine])
    assert report.outcomes == {refused.record_id: Outcome.REJECTED, fine.record_id: Outcome.DELIVERED}
    assert report.reasons[refused.record_id] == 'HTTP 400: {"error": "unknown field tenant"}'


def test_server_error_is_retry_later(
    crm_sink: Callable[..., WebhookSink], crm: tuple[FakeCrm, str], make_record: MakeRecord
) -> None:
    fake, url = crm
    fake.script.append((500, "oops", {}))
    with pytest.raises(SinkUnavailable, match="HTTP 500: oops"):
        crm_sink(url).send([make_record()])


def test_unreachable_receiver_is_retry_later_and_the_reason_hides_the_url(
    crm_sink: Callable[..., WebhookSink], make_record: MakeRecord
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(SinkUnavailable) as caught:
        crm_sink(f"http://127.0.0.1:{port}/in?token={URL_TOKEN}", timeout=2.0).send([make_record()])
    assert URL_TOKEN not in caught.value.reason


# --- options --------------------------------------------------------------------------------------------------


def test_from_settings_builds_a_working_sink(crm: tuple[FakeCrm, str], make_record: MakeRecord) -> None:
    fake, url = crm
    built = WebhookSink.from_settings(
        SinkSettings(name="crm", type="webhook", options={"url": url, "secret": Secret(SECRET), "timeout": 5})
    )
    assert built.send([make_record()]).ids(Outcome.DELIVERED)
    built.close()
    assert len(fake.requests) == 1


def test_bad_options_are_listed_without_revealing_secrets() -> None:
    options = {"url": f"ftp://crm.example/{URL_TOKEN}", "secret": "whsec_%%%notbase64", "retries": 3}
    with pytest.raises(ConfigError) as caught:
        WebhookSink.from_settings(SinkSettings(name="crm", type="webhook", options=options))
    problems = "\n".join(caught.value.problems)
    for key in ("url", "secret", "retries"):
        assert f"sinks.crm.{key}:" in problems
    assert URL_TOKEN not in problems
    assert "notbase64" not in problems
