"""Tests of the Splunk HEC sink: pure render and classify tables, then the sink against the fake HEC over loopback."""

from __future__ import annotations

import gzip
import json
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from config.errors import ConfigError
from config.settings import Secret, SinkSettings
from events.records import Activity, Actor, AuditRecord, Entity, EntityType, Severity
from sinks.base import DeliveryReport, Outcome
from sinks.errors import SinkDisabled, SinkError, SinkRejected, SinkUnavailable
from sinks.http import parse_retry_after
from sinks.splunk_hec.acks import classify_ack
from sinks.splunk_hec.encoding import encode_envelope, render_batch, render_event
from sinks.splunk_hec.sink import SplunkHecSink
from sinks.splunk_hec.verdicts import Accepted, EventRefused, Split, Verdict, classify
from tests.fakes.hec import ENVELOPE_KEYS, FakeHec, check_envelope, parse_batch

TOKEN = "9d5c7a1e-2b3f-4c6d-8e9f-a0b1c2d3e4f5"
OTHER_TOKEN = "0a0a0a0a-1b1b-2c2c-3d3d-4e4e4e4e4e4e"


def make_record(n: int, *, tenant: str = "acme", topic: str = "api-key.created", **changes: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "record_id": f"rec-{n}",
        "event_id": f"evt-{n}",
        "tenant": tenant,
        "topic": topic,
        "time": "2026-01-02T03:04:05.678Z",
        "received_at": "2026-01-02T03:04:06.001Z",
        "activity_id": Activity.CREATE,
        "severity_id": Severity.INFORMATIONAL,
        "entity": Entity(
            type=EntityType.API_KEY, uid=f"fp-{n}", name=f"key {n}", fingerprint=f"fp-{n}", prefix="live_", last4="9f3a"
        ),
        "project_id": "proj-1",
        "account_id": "acct-1",
        "actor": Actor(uid="user-7", type="user"),
        "metadata": {"product": "The Auth API", "version": "0.1.0"},
        "raw_sha256": "ab" * 32,
        "raw_redacted": {"key": "[redacted]", "n": n},
    }
    values.update(changes)
    return AuditRecord(**values)


def make_records(count: int, **changes: Any) -> list[AuditRecord]:
    return [make_record(n, **changes) for n in range(count)]


def sent_ids(hec: FakeHec) -> list[str]:
    return [event["fields"]["event_id"] for event in hec.events]


def outcomes(report: DeliveryReport) -> dict[str, str]:
    return {record_id: str(outcome) for record_id, outcome in report.outcomes.items()}


@pytest.fixture(scope="module")
def shared_hec() -> Iterator[FakeHec]:
    # One server for the module: stopping uvicorn takes ~0.2 s, and reset() gives each test a clean peer.
    with FakeHec(tokens=[TOKEN], indexes=["main"]) as fake:
        yield fake


@pytest.fixture
def hec(shared_hec: FakeHec) -> FakeHec:
    shared_hec.reset()
    return shared_hec


SinkFactory = Callable[..., SplunkHecSink]


@pytest.fixture
def make_sink() -> Iterator[SinkFactory]:
    """`make_sink(url, token=TOKEN, **options)`; every sink built is closed after the test, pass or fail."""
    built: list[SplunkHecSink] = []

    def make(url: str, token: str = TOKEN, **options: Any) -> SplunkHecSink:
        sink = SplunkHecSink("splunk", url, Secret(token), **options)
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- render -----------------------------------------------------------------------------------------------------------


def test_render_event_carries_the_record_and_its_dedupe_fields() -> None:
    record = make_record(3)

    envelope = render_event(record, index="security", source="theauthapi", sourcetype="keytrail:audit", host="kt-1")

    assert envelope["event"] == record.to_dict()
    assert envelope["fields"] == {"event_id": "evt-3", "tenant": "acme", "topic": "api-key.created"}
    assert envelope["index"] == "security"
    assert envelope["source"] == "theauthapi"
    assert envelope["sourcetype"] == "keytrail:audit"
    assert envelope["host"] == "kt-1"
    assert envelope.keys() <= ENVELOPE_KEYS
    assert check_envelope(json.loads(encode_envelope(envelope)), frozenset({"security"})) is None


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-01-02T03:04:05.678Z", 1767323045.678),
        ("2026-01-02T03:04:05.678912+00:00", 1767323045.679),
        ("2026-01-02T05:04:05+02:00", 1767323045.0),
        ("2026-01-02T03:04:05", 1767323045.0),
        ("not a time", None),
    ],
)
def test_render_event_time_is_epoch_seconds_with_milliseconds(timestamp: str, expected: float | None) -> None:
    envelope = render_event(make_record(1, time=timestamp))

    assert envelope.get("time") == expected


@pytest.mark.parametrize(
    ("metadata", "present"),
    [
        ({}, {"source", "sourcetype"}),
        ({"index": "security"}, {"source", "sourcetype", "index"}),
        ({"host": "kt-1", "source": None, "sourcetype": None}, {"host"}),
        ({"index": None, "host": None, "source": None, "sourcetype": None}, set()),
    ],
)
def test_render_event_sets_only_configured_metadata(metadata: dict[str, Any], present: set[str]) -> None:
    envelope = render_event(make_record(1), **metadata)

    assert set(envelope) - {"time", "event", "fields"} == present


def test_render_batch_is_concatenated_objects_hec_indexes_one_by_one() -> None:
    records = make_records(3)

    body = render_batch(records, index="security")

    assert body.count(b"\n") == 3
    assert not body.startswith(b"[")
    envelopes, refusal = parse_batch(body.decode())
    assert refusal is None
    assert envelopes == [json.loads(encode_envelope(render_event(r, index="security"))) for r in records]


def test_encode_envelope_refuses_nan_instead_of_sending_invalid_json() -> None:
    envelope = render_event(make_record(1, raw_redacted={"ratio": float("nan")}))

    with pytest.raises(ValueError, match="JSON"):
        encode_envelope(envelope)


# -- classify: every row of the HEC code table (reference/sinks.md §1.6, §1.7) ---------------------------------------


def hec_body(code: int, text: str = "text", *, number: int | None = None, **extra: Any) -> dict[str, Any]:
    body = {"text": text, "code": code, **extra}
    if number is not None:
        body["invalid-event-number"] = number
    return body


def summary(verdict: Verdict) -> tuple[Any, ...]:
    """A verdict as a comparable row: (kind, detail)."""
    if isinstance(verdict, Accepted):
        return ("delivered", verdict.ack_id)
    if isinstance(verdict, EventRefused):
        return ("refused", verdict.position)
    if isinstance(verdict, Split):
        return ("split", None)
    if isinstance(verdict, SinkUnavailable):
        return ("alert" if verdict.alert else "retry", None)
    if isinstance(verdict, SinkRejected):
        return ("rejected", None)
    if isinstance(verdict, SinkDisabled):
        return ("disabled", None)
    raise AssertionError(f"unexpected verdict {verdict!r}")


CODE_TABLE = [
    # (status, body, events in the request, expected)
    pytest.param(200, hec_body(0, "Success"), 3, ("delivered", None), id="0-success"),
    pytest.param(200, hec_body(0, "Success", ackId=7), 3, ("delivered", 7), id="0-success-ack"),
    pytest.param(403, hec_body(1, "Token disabled"), 3, ("alert", None), id="1-token-disabled"),
    pytest.param(401, hec_body(2, "Token is required"), 3, ("alert", None), id="2-token-required"),
    pytest.param(401, hec_body(3, "Invalid authorization"), 3, ("alert", None), id="3-invalid-authorization"),
    pytest.param(403, hec_body(4, "Invalid token"), 3, ("alert", None), id="4-invalid-token"),
    pytest.param(400, hec_body(5, "No data"), 3, ("alert", None), id="5-no-data"),
    pytest.param(400, hec_body(6, number=1), 3, ("refused", 1), id="6-invalid-format"),
    pytest.param(400, hec_body(7, "Incorrect index", number=1), 3, ("rejected", None), id="7"),
    pytest.param(500, hec_body(8, "Internal server error"), 3, ("retry", None), id="8-internal-error"),
    pytest.param(503, hec_body(9, "Server is busy"), 3, ("retry", None), id="9-busy"),
    pytest.param(400, hec_body(10, "Data channel is missing"), 3, ("alert", None), id="10-channel-missing"),
    pytest.param(400, hec_body(11, "Invalid data channel"), 3, ("alert", None), id="11-channel-invalid"),
    pytest.param(400, hec_body(12, number=0), 3, ("refused", 0), id="12-event-required"),
    pytest.param(400, hec_body(13, number=2), 3, ("refused", 2), id="13-event-blank"),
    pytest.param(400, hec_body(14, "ACK is disabled"), 3, ("alert", None), id="14-ack-disabled"),
    pytest.param(400, hec_body(15, number=0), 3, ("refused", 0), id="15-indexed-fields"),
    pytest.param(400, hec_body(16, "Query string authorization"), 3, ("alert", None), id="16-query-string-auth"),
    pytest.param(200, hec_body(17, "HEC is healthy"), 3, ("alert", None), id="17-health-answer-to-a-post"),
    pytest.param(503, hec_body(18, "HEC is unhealthy"), 3, ("retry", None), id="18-queues-full"),
    pytest.param(503, hec_body(19, "HEC is unhealthy"), 3, ("retry", None), id="19-ack-unavailable"),
    pytest.param(503, hec_body(20, "HEC is unhealthy"), 3, ("retry", None), id="20-both"),
    pytest.param(400, hec_body(21, "Invalid token"), 3, ("alert", None), id="21-invalid-token"),
    pytest.param(400, hec_body(22, "Token disabled"), 3, ("alert", None), id="22-token-disabled"),
    pytest.param(413, b"", 3, ("split", None), id="413-too-large"),
    pytest.param(413, b"", 1, ("split", None), id="413-single-event"),
    pytest.param(429, b"", 3, ("retry", None), id="429"),
    pytest.param(502, b"<html>bad gateway</html>", 3, ("retry", None), id="502-html"),
    pytest.param(504, b"", 3, ("retry", None), id="504"),
    pytest.param(500, b"", 3, ("retry", None), id="500-no-code"),
    pytest.param(408, b"", 3, ("retry", None), id="408"),
    pytest.param(400, hec_body(6), 3, ("split", None), id="6-without-position-splits"),
    pytest.param(400, hec_body(6, number=3), 3, ("split", None), id="6-position-out-of-range"),
    pytest.param(400, hec_body(6), 1, ("refused", 0), id="6-single-event-without-position"),
    pytest.param(404, hec_body(404, "The requested URL was not found"), 3, ("alert", None), id="404-wrong-url"),
    pytest.param(415, b"<html>415</html>", 3, ("alert", None), id="415-gzip-refused"),
    pytest.param(410, b"", 3, ("disabled", None), id="410"),
    pytest.param(400, b"", 3, ("rejected", None), id="400-no-code"),
    pytest.param(422, hec_body(99, "something new"), 3, ("rejected", None), id="422-unknown-code"),
    pytest.param(301, b"", 3, ("alert", None), id="301-redirect"),
]


@pytest.mark.parametrize(("status", "body", "n_events", "expected"), CODE_TABLE)
def test_classify_follows_the_hec_code_table(
    status: int, body: bytes | dict[str, Any], n_events: int, expected: tuple[Any, ...]
) -> None:
    assert summary(classify(status, body, n_events)) == expected


@pytest.mark.parametrize(("status", "body", "n_events", "expected"), CODE_TABLE)
def test_classify_reads_the_same_answer_from_bytes(
    status: int, body: bytes | dict[str, Any], n_events: int, expected: tuple[Any, ...]
) -> None:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body

    assert summary(classify(status, raw, n_events)) == expected


def test_classify_names_the_code_and_text_in_the_reason() -> None:
    verdict = classify(400, hec_body(13, "Event field cannot be blank", number=2), 3)

    assert isinstance(verdict, EventRefused)
    assert verdict.reason == "HEC 400 code 13: Event field cannot be blank"


def test_classify_names_the_index_of_a_code_7() -> None:
    verdict = classify(400, hec_body(7, "Incorrect index", number=1), 3, index="security")

    assert isinstance(verdict, SinkRejected)
    assert "'security'" in verdict.reason
    assert "code 7" in verdict.reason


def test_classify_honours_retry_after_seconds() -> None:
    verdict = classify(503, hec_body(9, "Server is busy"), 3, retry_after="17")

    assert isinstance(verdict, SinkUnavailable)
    assert verdict.retry_after == 17.0
    assert not verdict.alert


def test_classify_honours_retry_after_http_date() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    verdict = classify(429, b"", 3, retry_after="Fri, 02 Jan 2026 03:04:35 GMT", now=now)

    assert isinstance(verdict, SinkUnavailable)
    assert verdict.retry_after == 30.0


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("soon", None), (" 5 ", 5.0)])
def test_parse_retry_after_ignores_what_it_cannot_read(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(200, {"acks": {"0": True, "1": False}}, {0: True, 1: False}, id="200"),
        pytest.param(200, {"text": "?"}, ("alert", None), id="200-without-acks"),
        pytest.param(400, hec_body(14, "ACK is disabled"), ("alert", None), id="400-14"),
        pytest.param(400, hec_body(10, "Data channel is missing"), ("alert", None), id="400-10"),
        pytest.param(503, hec_body(19, "HEC is unhealthy"), ("retry", None), id="503-19"),
    ],
)
def test_classify_ack(status: int, body: dict[str, Any], expected: Any) -> None:
    answer = classify_ack(status, body)

    assert (answer if isinstance(answer, dict) else summary(answer)) == expected


# -- from_settings ----------------------------------------------------------------------------------------------------


def settings(**options: Any) -> SinkSettings:
    return SinkSettings(name="splunk", type="splunk_hec", options=options)


def test_from_settings_applies_the_documented_defaults() -> None:
    sink = SplunkHecSink.from_settings(settings(url="https://splunk.example.com:8088/", token=Secret(TOKEN)))
    try:
        assert sink.name == "splunk"
        assert sink.base_url == "https://splunk.example.com:8088"
        assert (sink.index, sink.source, sink.sourcetype, sink.host) == (None, "theauthapi", "keytrail:audit", None)
        assert (sink.gzip, sink.max_events, sink.max_bytes, sink.ack) == (True, 500, 1_000_000, False)
        assert (sink.ack_timeout, sink.ack_poll_interval) == (30.0, 1.0)
    finally:
        sink.close()


def test_from_settings_accepts_an_endpoint_url_pasted_whole() -> None:
    sink = SplunkHecSink.from_settings(
        settings(url="https://splunk.example.com:8088/services/collector/event", token=TOKEN, index="security")
    )
    try:
        assert sink.base_url == "https://splunk.example.com:8088"
        assert sink.index == "security"
    finally:
        sink.close()


def test_from_settings_lists_every_problem_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        SplunkHecSink.from_settings(settings(max_events=0, gzip="yes", colour="blue"))

    problems = "\n".join(caught.value.problems)
    for expected in ("splunk.url: required", "splunk.token: required", "max_events", "gzip", "colour: unknown"):
        assert expected in problems


def test_from_settings_refuses_a_url_without_scheme_and_never_shows_the_token() -> None:
    with pytest.raises(ConfigError) as caught:
        SplunkHecSink.from_settings(settings(url="splunk:8088", token=Secret(TOKEN)))

    assert "splunk.url" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_from_settings_reports_an_unreadable_ca_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="ca_file"):
        SplunkHecSink.from_settings(
            settings(url="https://splunk:8088", token=TOKEN, ca_file=str(tmp_path / "missing.pem"))
        )


# -- the request on the wire (MockTransport handler asserting on it) ------------------------------------------------


def test_posts_gzipped_envelopes_with_the_splunk_authorization(make_sink: SinkFactory) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"text": "Success", "code": 0})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    sink = make_sink("https://splunk.example.com:8088", client=client, index="security")

    report = sink.send(make_records(2))

    assert report.ids(Outcome.DELIVERED) == ["rec-0", "rec-1"]
    (request,) = seen
    assert str(request.url) == "https://splunk.example.com:8088/services/collector/event"
    assert request.headers["Authorization"] == f"Splunk {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Content-Encoding"] == "gzip"
    assert "X-Splunk-Request-Channel" not in request.headers
    assert gzip.decompress(request.content) == render_batch(make_records(2), index="security")
    sink.close()
    assert not client.is_closed, "close() must leave an injected client to its owner"
    client.close()


# -- against the fake HEC over loopback ------------------------------------------------------------------------------


def test_delivers_gzipped_batches_cut_by_event_count(hec: FakeHec, make_sink: SinkFactory) -> None:
    sink = make_sink(hec.url, max_events=5)
    records = make_records(12)

    report = sink.send(records)

    assert report.ids(Outcome.DELIVERED) == [r.record_id for r in records]
    assert hec.request_count == 3
    assert [r.indexed for r in hec.requests] == [5, 5, 2]
    assert {r.content_encoding for r in hec.requests} == {"gzip"}
    assert sent_ids(hec) == [r.event_id for r in records]
    first = hec.events[0]
    assert first["fields"] == {"event_id": "evt-0", "tenant": "acme", "topic": "api-key.created"}
    assert first["event"] == json.loads(json.dumps(records[0].to_dict()))
    assert first["time"] == 1767323045.678


def test_cuts_batches_by_uncompressed_bytes(hec: FakeHec, make_sink: SinkFactory) -> None:
    records = make_records(7)
    line = len(encode_envelope(render_event(records[0])))
    sink = make_sink(hec.url, max_bytes=2 * line + 5)

    report = sink.send(records)

    assert len(report.ids(Outcome.DELIVERED)) == 7
    assert [r.indexed for r in hec.requests] == [2, 2, 2, 1]


def test_sends_plain_json_when_gzip_is_off(hec: FakeHec, make_sink: SinkFactory) -> None:
    sink = make_sink(hec.url, gzip=False)

    sink.send(make_records(2))

    assert [r.content_encoding for r in hec.requests] == [None]
    assert sent_ids(hec) == ["evt-0", "evt-1"]


def test_empty_send_makes_no_request(hec: FakeHec, make_sink: SinkFactory) -> None:
    sink = make_sink(hec.url)

    report = sink.send([])

    assert report.outcomes == {}
    assert hec.request_count == 0


def test_busy_hec_raises_unavailable_with_its_retry_after(hec: FakeHec, make_sink: SinkFactory) -> None:
    hec.enqueue(503, code=9, headers={"Retry-After": "7"})
    sink = make_sink(hec.url)
    records = make_records(3)

    with pytest.raises(SinkUnavailable) as caught:
        sink.send(records)

    assert caught.value.retry_after == 7.0
    assert not caught.value.alert
    assert "code 9" in caught.value.reason
    assert hec.event_count == 0
    # The deliver job's retry finds HEC back: everything lands once.
    assert len(sink.send(records).ids(Outcome.DELIVERED)) == 3
    assert sent_ids(hec) == ["evt-0", "evt-1", "evt-2"]


def test_busy_after_the_first_request_reports_the_rest_for_retry(hec: FakeHec, make_sink: SinkFactory) -> None:
    hec.enqueue(503, code=18, after=1, headers={"Retry-After": "3"})
    sink = make_sink(hec.url, max_events=2)

    report = sink.send(make_records(6))

    assert outcomes(report) == {
        "rec-0": "delivered",
        "rec-1": "delivered",
        "rec-2": "retry",
        "rec-3": "retry",
        "rec-4": "retry",
        "rec-5": "retry",
    }
    assert "code 18" in report.reasons["rec-4"]
    assert report.retry_after == 3.0
    assert hec.request_count == 2, "a busy HEC must not get the remaining requests in the same send"


@pytest.mark.parametrize(
    ("fake_options", "code"),
    [
        pytest.param({"tokens": [OTHER_TOKEN]}, "code 4", id="wrong-token-403-4"),
        pytest.param({"tokens": [TOKEN], "disabled_tokens": [TOKEN]}, "code 1", id="disabled-token-403-1"),
    ],
)
def test_auth_failure_alerts_and_drops_nothing(fake_options: dict[str, Any], code: str, make_sink: SinkFactory) -> None:
    with FakeHec(**fake_options) as fake:
        sink = make_sink(fake.url, max_events=2)

        with pytest.raises(SinkUnavailable) as caught:
            sink.send(make_records(5))

        assert caught.value.alert
        assert code in caught.value.reason
        assert TOKEN not in str(caught.value)
        assert fake.event_count == 0
        assert fake.request_count == 1, "a token HEC refuses must not be tried on the other requests"


def test_too_large_requests_are_split_and_every_event_lands_once(make_sink: SinkFactory) -> None:
    records = make_records(8)
    line = len(encode_envelope(render_event(records[0])))
    with FakeHec(tokens=[TOKEN], max_content_length=2 * line + 10) as fake:
        sink = make_sink(fake.url, gzip=False)

        report = sink.send(records)

        assert report.ids(Outcome.DELIVERED) == [r.record_id for r in records]
        assert sent_ids(fake) == [r.event_id for r in records]
        assert fake.duplicate_count == 0
        # 8 → 413; 4 + 4 → 413 each; four requests of 2 → indexed.
        assert [r.status for r in fake.requests] == [413, 413, 200, 200, 413, 200, 200]


def test_a_413_from_a_proxy_splits_the_request_in_order(hec: FakeHec, make_sink: SinkFactory) -> None:
    hec.enqueue(413)
    sink = make_sink(hec.url)

    report = sink.send(make_records(5))

    assert len(report.ids(Outcome.DELIVERED)) == 5
    assert sent_ids(hec) == ["evt-0", "evt-1", "evt-2", "evt-3", "evt-4"]
    assert [(r.status, r.indexed) for r in hec.requests] == [(413, 0), (200, 2), (200, 3)]


def test_a_single_event_over_the_size_limit_is_rejected_and_the_others_delivered(make_sink: SinkFactory) -> None:
    small = make_records(4)
    big = make_record(99, raw_redacted={"blob": "x" * 5_000})
    with FakeHec(tokens=[TOKEN], max_content_length=3_000) as fake:
        sink = make_sink(fake.url, gzip=False)

        report = sink.send([*small[:2], big, *small[2:]])

    assert report.ids(Outcome.REJECTED) == ["rec-99"]
    assert "event too large" in report.reasons["rec-99"]
    assert "413" in report.reasons["rec-99"]
    assert sorted(report.ids(Outcome.DELIVERED)) == ["rec-0", "rec-1", "rec-2", "rec-3"]
    assert sorted(fake.event_ids) == ["evt-0", "evt-1", "evt-2", "evt-3"]


def refuse(code: int, *event_ids: str) -> Any:
    def check(envelope: dict[str, Any]) -> int | None:
        return code if envelope.get("fields", {}).get("event_id") in event_ids else None

    return check


def test_refused_event_is_rejected_and_the_events_after_it_resent(make_sink: SinkFactory) -> None:
    with FakeHec(tokens=[TOKEN], reject_when=refuse(13, "evt-3")) as fake:
        sink = make_sink(fake.url)

        report = sink.send(make_records(8))

        assert report.ids(Outcome.REJECTED) == ["rec-3"]
        assert report.reasons["rec-3"] == "HEC 400 code 13: Event field cannot be blank"
        assert sorted(report.ids(Outcome.DELIVERED)) == [f"rec-{n}" for n in (0, 1, 2, 4, 5, 6, 7)]
        assert sent_ids(fake) == [f"evt-{n}" for n in (0, 1, 2, 4, 5, 6, 7)]
        assert fake.duplicate_count == 0
        assert [(r.status, r.indexed) for r in fake.requests] == [(400, 3), (200, 4)]


def test_several_refused_events_in_one_batch_each_cost_one_resend(make_sink: SinkFactory) -> None:
    with FakeHec(tokens=[TOKEN], reject_when=refuse(6, "evt-0", "evt-4", "evt-5")) as fake:
        sink = make_sink(fake.url, max_events=100)

        report = sink.send(make_records(7))

        assert report.ids(Outcome.REJECTED) == ["rec-0", "rec-4", "rec-5"]
        assert sent_ids(fake) == ["evt-1", "evt-2", "evt-3", "evt-6"]
        assert Counter(r.status for r in fake.requests) == {400: 3, 200: 1}


def test_incorrect_index_rejects_the_batch_and_names_the_index(make_sink: SinkFactory) -> None:
    with FakeHec(tokens=[TOKEN], indexes=["main"]) as fake:
        sink = make_sink(fake.url, index="security")

        report = sink.send(make_records(3))

        assert report.ids(Outcome.REJECTED) == ["rec-0", "rec-1", "rec-2"]
        assert "'security'" in report.reasons["rec-1"]
        assert fake.event_count == 0


def test_unrenderable_record_is_rejected_and_the_others_delivered(hec: FakeHec, make_sink: SinkFactory) -> None:
    records = [make_record(0), make_record(1, raw_redacted={"ratio": float("nan")}), make_record(2)]
    sink = make_sink(hec.url)

    report = sink.send(records)

    assert report.ids(Outcome.REJECTED) == ["rec-1"]
    assert sent_ids(hec) == ["evt-0", "evt-2"]


def test_unreachable_hec_is_unavailable_without_alert(closed_port: int, make_sink: SinkFactory) -> None:
    sink = make_sink(f"http://127.0.0.1:{closed_port}", timeout=2.0)

    with pytest.raises(SinkUnavailable) as caught:
        sink.send(make_records(2))

    assert not caught.value.alert
    assert "ConnectError" in caught.value.reason
    assert TOKEN not in str(caught.value)


def test_hec_down_then_up_means_retry_then_delivery(make_sink: SinkFactory) -> None:
    with FakeHec(tokens=[TOKEN]) as fake:
        sink = make_sink(fake.url)
        assert len(sink.send([make_record(0)]).ids(Outcome.DELIVERED)) == 1

        fake.down()
        with pytest.raises(SinkUnavailable):
            sink.send([make_record(1)])
        fake.up()
        report = sink.send([make_record(1)])

        assert report.ids(Outcome.DELIVERED) == ["rec-1"]
        assert sent_ids(fake) == ["evt-0", "evt-1"]


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, None), (503, SinkUnavailable), (401, SinkUnavailable), (413, None)],
)
def test_the_token_never_appears_in_a_reason_even_when_the_peer_echoes_it(
    hec: FakeHec, status: int, error: type[SinkError] | None, make_sink: SinkFactory
) -> None:
    hec.enqueue(status, text=f"bad request header Authorization: Splunk {TOKEN}", times=3)
    sink = make_sink(hec.url)

    if error is None:
        report = sink.send([make_record(0)])
        assert report.outcomes["rec-0"] is Outcome.REJECTED
        texts = list(report.reasons.values())
    else:
        with pytest.raises(error) as caught:
            sink.send([make_record(0)])
        texts = [str(caught.value), caught.value.reason, repr(caught.value)]

    assert texts
    assert all(TOKEN not in text for text in texts)
    assert any("Authorization: Splunk **********" in text for text in texts)


# -- indexer acknowledgement -----------------------------------------------------------------------------------------


def test_ack_mode_delivers_once_every_ack_reads_true(make_sink: SinkFactory) -> None:
    with FakeHec(ack_tokens=[TOKEN], ack_delay=0.05) as fake:
        sink = make_sink(fake.url, ack=True, max_events=3, ack_poll_interval=0.02, ack_timeout=5.0)

        report = sink.send(make_records(7))

        assert len(report.ids(Outcome.DELIVERED)) == 7
        assert {r.channel for r in fake.requests} == {sink.channel}
        assert fake.ack_poll_count >= 1
        assert fake.duplicate_count == 0


def test_ack_window_expiry_means_retry_not_delivered(make_sink: SinkFactory) -> None:
    with FakeHec(ack_tokens=[TOKEN], ack_delay=None) as fake:
        sink = make_sink(fake.url, ack=True, ack_poll_interval=0.02, ack_timeout=0.1)

        with pytest.raises(SinkUnavailable) as caught:
            sink.send(make_records(2))

        assert not caught.value.alert
        assert "did not acknowledge 1 request" in caught.value.reason
        # Indexed but never confirmed: the retry will send them again, and fields.event_id lets searches dedupe.
        assert fake.event_count == 2


def test_ack_mode_on_a_token_without_useack_alerts(make_sink: SinkFactory) -> None:
    with FakeHec(tokens=[TOKEN]) as fake:
        sink = make_sink(fake.url, ack=True)

        with pytest.raises(SinkUnavailable) as caught:
            sink.send(make_records(2))

    assert caught.value.alert
    assert "ackId" in caught.value.reason


def test_ack_poll_refused_alerts(make_sink: SinkFactory) -> None:
    with FakeHec(ack_tokens=[TOKEN]) as fake:
        fake.enqueue(400, code=14, endpoint="ack")
        sink = make_sink(fake.url, ack=True, ack_poll_interval=0.02)

        with pytest.raises(SinkUnavailable) as caught:
            sink.send(make_records(2))

    assert caught.value.alert
    assert "ack" in caught.value.reason.lower()
    assert TOKEN not in str(caught.value)


def test_ack_poll_busy_then_answering_delivers(make_sink: SinkFactory) -> None:
    with FakeHec(ack_tokens=[TOKEN]) as fake:
        fake.enqueue(503, code=19, endpoint="ack", times=2)
        sink = make_sink(fake.url, ack=True, ack_poll_interval=0.02, ack_timeout=5.0)

        report = sink.send(make_records(2))

        assert len(report.ids(Outcome.DELIVERED)) == 2
        assert fake.ack_poll_count == 3


def test_ack_mode_keeps_refused_event_semantics(make_sink: SinkFactory) -> None:
    with FakeHec(ack_tokens=[TOKEN], reject_when=refuse(12, "evt-1")) as fake:
        sink = make_sink(fake.url, ack=True, ack_poll_interval=0.02, ack_timeout=5.0)

        report = sink.send(make_records(3))

    assert outcomes(report) == {"rec-0": "delivered", "rec-1": "rejected", "rec-2": "delivered"}


# -- the fake itself answers like HEC (reference/sinks.md §1) --------------------------------------------------------

EVENT = "/services/collector/event"
AUTH = {"Authorization": f"Splunk {TOKEN}"}


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        pytest.param({}, b'{"event":1}', (401, 2, None), id="no-token"),
        pytest.param({"Authorization": TOKEN}, b'{"event":1}', (401, 3, None), id="no-splunk-prefix"),
        pytest.param({"Authorization": f"Splunk {OTHER_TOKEN}"}, b'{"event":1}', (403, 4, None), id="wrong-token"),
        pytest.param(AUTH, b"", (400, 5, None), id="no-data"),
        pytest.param(AUTH, b'{"event":1}{"event":', (400, 6, 1), id="malformed"),
        pytest.param(AUTH, b'{"event":1}\n{"event":NaN}', (400, 6, 1), id="nan"),
        pytest.param(AUTH, b'{"event":null}', (400, 6, 0), id="null-event"),
        pytest.param(AUTH, b'{"event":1}{"time":1}', (400, 12, 1), id="no-event"),
        pytest.param(AUTH, b'{"event":" "}', (400, 13, 0), id="blank-event"),
        pytest.param(AUTH, b'{"event":1,"fields":{"a":{"b":"c"}}}', (400, 15, 0), id="nested-fields"),
        pytest.param(AUTH, b'{"event":1,"index":"secret"}', (400, 7, 1), id="index-not-allowed"),
        pytest.param(AUTH, b'{"event":{}}\n{"event":"x","index":"main"}', (200, 0, None), id="ok"),
        pytest.param({**AUTH, "Content-Encoding": "deflate"}, b'{"event":1}', (415, None, None), id="deflate"),
    ],
)
def test_fake_answers_like_hec(
    hec: FakeHec, headers: dict[str, str], body: bytes, expected: tuple[int, int | None, int | None]
) -> None:
    response = httpx.post(hec.url + EVENT, content=body, headers=headers)

    if expected[1] is None:
        assert response.status_code == expected[0]
    else:
        answer = response.json()
        assert (response.status_code, answer["code"], answer.get("invalid-event-number")) == expected


def test_fake_indexes_the_objects_before_a_bad_one_and_stops_quietly_at_an_unknown_key(hec: FakeHec) -> None:
    httpx.post(hec.url + EVENT, content=b'{"event":"a"}{"event":"b"}{"event":" "}{"event":"c"}', headers=AUTH)
    response = httpx.post(hec.url + EVENT, content=b'{"event":"d"}{"event":"e","extra":1}{"event":"f"}', headers=AUTH)

    assert response.json() == {"text": "Success", "code": 0}
    assert [e["event"] for e in hec.events] == ["a", "b", "d"]


def test_fake_health_ignores_the_token(hec: FakeHec) -> None:
    response = httpx.get(hec.url + "/services/collector/health")

    assert response.json() == {"text": "HEC is healthy", "code": 17}


def test_fake_gunzips_and_enforces_max_content_length() -> None:
    with FakeHec(tokens=[TOKEN], max_content_length=100) as fake:
        small = httpx.post(
            fake.url + EVENT, content=gzip.compress(b'{"event":"x"}' * 30), headers={**AUTH, "Content-Encoding": "gzip"}
        )
        large = httpx.post(fake.url + EVENT, content=b'{"event":"x"}' * 30, headers=AUTH)

    assert small.status_code == 200
    assert large.status_code == 413
    assert fake.event_count == 30


def test_fake_acks_are_per_channel_from_zero_and_read_true_once() -> None:
    with FakeHec(ack_tokens=[TOKEN]) as fake:
        one, two = str(uuid.uuid4()), str(uuid.uuid4())
        ack_url = fake.url + "/services/collector/ack"

        def post(channel: str | None) -> httpx.Response:
            headers = {**AUTH, "X-Splunk-Request-Channel": channel} if channel else AUTH
            return httpx.post(fake.url + EVENT, content=b'{"event":1}', headers=headers)

        assert post(None).json()["code"] == 10
        assert post("not-a-guid").json()["code"] == 11
        assert [post(one).json()["ackId"], post(one).json()["ackId"], post(two).json()["ackId"]] == [0, 1, 0]

        first = httpx.post(ack_url, params={"channel": one}, json={"acks": [0, 1, 2]}, headers=AUTH)
        again = httpx.post(ack_url, params={"channel": one}, json={"acks": [0, 1]}, headers=AUTH)
        other = httpx.post(ack_url, params={"channel": two}, json={"acks": [1]}, headers=AUTH)

    assert first.json() == {"acks": {"0": True, "1": True, "2": False}}
    assert again.json() == {"acks": {"0": False, "1": False}}
    assert other.json() == {"acks": {"1": False}}


def test_fake_refuses_ack_polls_on_a_token_without_useack(hec: FakeHec) -> None:
    response = httpx.post(
        hec.url + "/services/collector/ack", params={"channel": str(uuid.uuid4())}, json={"acks": [0]}, headers=AUTH
    )

    assert (response.status_code, response.json()["code"]) == (400, 14)


def test_fake_counting_mode_keeps_ids_not_events(make_sink: SinkFactory) -> None:
    with FakeHec(tokens=[TOKEN], counting=True) as fake:
        sink = make_sink(fake.url)
        sink.send(make_records(3))
        sink.send(make_records(2))

        assert fake.event_ids == {"evt-0", "evt-1", "evt-2"}
        assert (fake.event_count, fake.duplicate_count, fake.request_count) == (5, 2, 2)
        with pytest.raises(RuntimeError, match="counting"):
            _ = fake.events
