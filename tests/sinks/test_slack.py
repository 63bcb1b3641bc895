"""The Slack sink against a loopback peer that behaves like a Slack incoming webhook."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from config.errors import ConfigError
from config.settings import Secret, SinkSettings
from events.records import AuditRecord
from sinks.base import Outcome
from sinks.errors import SinkRejected, SinkUnavailable
from sinks.slack import SlackSink, WebhookRevoked, classify, escape, render_message, render_summary

MakeRecord = Callable[..., AuditRecord]
TOKEN = "XXXXsecretTOKEN"


class FakeSlack:
    """One workspace's incoming webhooks. `/services/T1/B1/<token>` is live; the token `revoked`, `archived` and
    `forbidden` hooks answer like Slack does for those states. `script` forces the next responses of live hooks."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self.script: list[tuple[int, str, dict[str, str]]] = []
        self.app = Starlette(routes=[Route("/services/{team}/{bot}/{token}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> PlainTextResponse:
        self.requests += 1
        dead = {
            "revoked": (404, "no_service"),
            "archived": (410, "channel_is_archived"),
            "forbidden": (403, "action_prohibited"),
        }
        if request.path_params["token"] in dead:
            status, text = dead[request.path_params["token"]]
            return PlainTextResponse(text, status_code=status)
        if self.script:
            status, text, headers = self.script.pop(0)
            return PlainTextResponse(text, status_code=status, headers=headers)
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        problem = block_kit_problem(payload)
        if problem:
            return PlainTextResponse(problem, status_code=400)
        self.received.append(payload)
        return PlainTextResponse("ok")


def block_kit_problem(payload: Any) -> str | None:
    """The checks Slack applies that our messages could plausibly break (limits from Slack's Block Kit reference)."""
    if not isinstance(payload, dict):
        return "invalid_payload"
    if not payload.get("text") and not payload.get("blocks"):
        return "no_text"
    blocks = payload.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "invalid_blocks"
    for block in blocks:
        text = block.get("text", {}).get("text", "")
        fields = block.get("fields", [])
        elements = block.get("elements", [])
        if (
            block.get("type") not in {"section", "context", "header", "divider"}
            or len(text) > 3000
            or len(fields) > 10
            or any(len(field["text"]) > 2000 for field in fields)
            or len(elements) > 10
            or any(len(element["text"]) > 3000 for element in elements)
        ):
            return "invalid_blocks"
    return None


@pytest.fixture
def slack(serve: Callable[[Any], str]) -> tuple[FakeSlack, str]:
    fake = FakeSlack()
    return fake, serve(fake.app)


@pytest.fixture
def slack_sink() -> Iterator[Callable[..., SlackSink]]:
    """`slack_sink(base_url, token=..., **kwargs)`: a sink for that webhook (no pacing unless asked), closed after."""
    built: list[SlackSink] = []

    def make(base_url: str, token: str = TOKEN, **kwargs: Any) -> SlackSink:
        kwargs.setdefault("min_interval", 0.0)
        built.append(SlackSink("alerts", Secret(f"{base_url}/services/T1/B1/{token}"), **kwargs))
        return built[-1]

    yield make
    for sink in built:
        sink.close()


# --- rendering ------------------------------------------------------------------------------------------------


def test_message_shows_topic_tenant_entity_fingerprint_key_hint_and_event_id(make_record: MakeRecord) -> None:
    record = make_record(event_id="evt-77")
    text = json.dumps(render_message(record), ensure_ascii=False)
    for expected in ("api-key.created", "acme", "API Key", "billing key", "9c1d2e3f" * 8, "live_…9f3a", "evt-77"):
        assert expected in text


@pytest.mark.parametrize(
    "hostile",
    ["<!channel>", "<!here|here>", "<@U024BE7LH>", "<https://evil.example|click me>", "a & b", "<#C123>"],
)
def test_text_from_records_cannot_inject_mentions_or_links(make_record: MakeRecord, hostile: str) -> None:
    record = make_record(entity_name=hostile, tenant=hostile, topic=hostile)
    for payload in (render_message(record), render_summary([record] * 12)):
        rendered = json.dumps(payload, ensure_ascii=False)
        assert "<" not in rendered
        assert ">" not in rendered
        assert escape(hostile) in rendered


def test_escape_replaces_exactly_the_three_control_characters() -> None:
    assert escape("<&>*_~`") == "&lt;&amp;&gt;*_~`"


def test_summary_counts_topics_and_lists_event_ids(make_record: MakeRecord) -> None:
    records = [make_record(topic="api-key.created") for _ in range(3)] + [make_record(topic="api-key.deleted")]
    payload = render_summary(records)
    text = json.dumps(payload)
    assert "4 key-lifecycle events" in text
    assert "*api-key.created*\\n3" in text
    assert "*api-key.deleted*\\n1" in text
    assert all(record.event_id in text for record in records)


def test_summary_of_a_huge_batch_stays_within_block_kit_limits(make_record: MakeRecord) -> None:
    records = [make_record(topic=f"topic.{n % 40}", tenant=f"tenant-{n % 50}") for n in range(5000)]
    payload = render_summary(records)
    assert block_kit_problem(payload) is None
    assert "more)" in json.dumps(payload)


# --- classification -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "reason"),
    [
        (200, "ok", {}, None, None),
        (429, "rate_limited", {"Retry-After": "7"}, SinkUnavailable, "Slack HTTP 429: rate_limited"),
        (500, "rollup_error", {}, SinkUnavailable, "Slack HTTP 500: rollup_error"),
        (503, "", {}, SinkUnavailable, "Slack HTTP 503"),
        (400, "invalid_payload", {}, SinkRejected, "Slack HTTP 400: invalid_payload"),
        (400, "no_text", {}, SinkRejected, "Slack HTTP 400: no_text"),
        (400, "user_not_found", {}, SinkRejected, "Slack HTTP 400: user_not_found"),
        (403, "action_prohibited", {}, WebhookRevoked, "Slack HTTP 403: action_prohibited"),
        (403, "invalid_token", {}, WebhookRevoked, "Slack HTTP 403: invalid_token"),
        (403, "team_disabled", {}, WebhookRevoked, "Slack HTTP 403: team_disabled"),
        (403, "posting_to_general_channel_denied", {}, WebhookRevoked, "posting_to_general_channel_denied"),
        (404, "channel_not_found", {}, WebhookRevoked, "Slack HTTP 404: channel_not_found"),
        (404, "no_service", {}, WebhookRevoked, "Slack HTTP 404: no_service"),
        (410, "channel_is_archived", {}, WebhookRevoked, "Slack HTTP 410: channel_is_archived"),
        (200, "channel_is_archived", {}, WebhookRevoked, "channel_is_archived"),
        (200, "invalid_payload", {}, SinkRejected, "invalid_payload"),
    ],
)
def test_classify_slack_answers(
    status: int, body: str, headers: dict[str, str], expected: type[Exception] | None, reason: str | None
) -> None:
    error = classify(httpx.Response(status, text=body, headers=headers))
    if expected is None:
        assert error is None
        return
    assert type(error) is expected
    assert error is not None
    assert reason in error.reason
    if isinstance(error, SinkUnavailable) and status == 429:
        assert error.retry_after == 7.0


def test_network_errors_are_retried_without_quoting_the_url() -> None:
    request = httpx.Request("POST", f"https://hooks.slack.com/services/T1/B1/{TOKEN}")
    error = classify(httpx.ConnectError(f"cannot reach {request.url}", request=request))
    assert isinstance(error, SinkUnavailable)
    assert TOKEN not in error.reason


# --- against the loopback Slack -------------------------------------------------------------------------------


def test_each_record_is_posted_and_accepted(
    slack_sink: Callable[..., SlackSink], slack: tuple[FakeSlack, str], make_record: MakeRecord
) -> None:
    fake, url = slack
    records = [make_record() for _ in range(3)]
    report = slack_sink(url).send(records)
    assert report.outcomes == {r.record_id: Outcome.DELIVERED for r in records}
    assert [payload["blocks"][2]["elements"][0]["text"] for payload in fake.received] == [
        f"event_id {r.event_id} · keytrail" for r in records
    ]


def test_batch_above_the_threshold_is_one_summary_message(
    slack_sink: Callable[..., SlackSink], slack: tuple[FakeSlack, str], make_record: MakeRecord
) -> None:
    fake, url = slack
    records = [make_record() for _ in range(4)]
    report = slack_sink(url, summary_threshold=3).send(records)
    assert report.outcomes == {r.record_id: Outcome.DELIVERED for r in records}
    assert len(fake.received) == 1
    assert "4 key-lifecycle events" in fake.received[0]["blocks"][0]["text"]["text"]


def test_rate_limit_on_the_first_message_retries_the_batch_after_retry_after(
    slack_sink: Callable[..., SlackSink], slack: tuple[FakeSlack, str], make_record: MakeRecord
) -> None:
    fake, url = slack
    fake.script.append((429, "rate_limited", {"Retry-After": "30"}))
    with pytest.raises(SinkUnavailable) as caught:
        slack_sink(url).send([make_record(), make_record()])
    assert caught.value.retry_after == 30.0
    assert fake.requests == 1


def test_rate_limit_mid_batch_keeps_what_was_posted(
    slack_sink: Callable[..., SlackSink], slack: tuple[FakeSlack, str], make_record: MakeRecord
) -> None:
    fake, url = slack
    first, second, third = make_record(), make_record(), make_record()
    fake.script += [(200, "ok", {}), (429, "rate_limited", {"Retry-After": "2"})]
    report = slack_sink(url).send([first, second, third])
    assert report.outcomes == {
        first.record_id: Outcome.DELIVERED,
        second.record_id: Outcome.RETRY,
        third.record_id: Outcome.RETRY,
    }
    assert report.retry_after == 2.0
    assert fake.requests == 2


@pytest.mark.parametrize(
    ("token", "text"),
    [("revoked", "no_service"), ("archived", "channel_is_archived"), ("forbidden", "action_prohibited")],
)
def test_a_dead_webhook_dead_letters_the_batch_after_one_request(
    slack_sink: Callable[..., SlackSink], slack: tuple[FakeSlack, str], make_record: MakeRecord, token: str, text: str
) -> None:
    fake, url = slack
    records = [make_record() for _ in range(3)]
    report = slack_sink(url, token=token).send(records)
    assert report.outcomes == {r.record_id: Outcome.REJECTED for r in records}
    assert all(text in reason for reason in report.reasons.values())
    assert fake.requests == 1


def test_an_invalid_payload_dead_letters_that_record_only(
    slack_sink: Callable[..., SlackSink], slack: tuple[FakeSlack, str], make_record: MakeRecord
) -> None:
    fake, url = slack
    bad, good = make_record(), make_record()
    fake.script.append((400, "invalid_payload", {}))
    report = slack_sink(url).send([bad, good])
    assert report.outcomes == {bad.record_id: Outcome.REJECTED, good.record_id: Outcome.DELIVERED}
    assert report.reasons[bad.record_id] == "Slack HTTP 400: invalid_payload"


def test_server_error_is_retry_later(
    slack_sink: Callable[..., SlackSink], slack: tuple[FakeSlack, str], make_record: MakeRecord
) -> None:
    fake, url = slack
    fake.script.append((500, "rollup_error", {}))
    with pytest.raises(SinkUnavailable, match="rollup_error"):
        slack_sink(url).send([make_record()])


def test_unreachable_slack_is_retry_later_and_the_reason_hides_the_token(
    slack_sink: Callable[..., SlackSink], make_record: MakeRecord
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(SinkUnavailable) as caught:
        slack_sink(f"http://127.0.0.1:{port}", timeout=2.0).send([make_record()])
    assert TOKEN not in caught.value.reason
    assert TOKEN not in repr(caught.value)


def test_messages_to_one_webhook_are_spaced_by_min_interval(make_record: MakeRecord) -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, text="ok")))
    paced = SlackSink(
        "alerts", Secret("https://hooks.slack.com/services/T/B/x"), client=client, clock=lambda: now[0], sleep=sleep
    )
    paced.send([make_record(), make_record(), make_record()])
    now[0] += 0.25
    paced.send([make_record()])
    paced.close()
    client.close()
    assert sleeps == [1.0, 1.0, 0.75]


def test_without_redis_a_429_pauses_this_process_and_a_turn_beyond_max_wait_is_retry_later(
    make_record: MakeRecord,
) -> None:
    now = [100.0]
    answers = [httpx.Response(429, text="rate_limited", headers={"Retry-After": "20"})]
    posted: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return answers.pop(0) if answers else httpx.Response(200, text="ok")

    client = httpx.Client(transport=httpx.MockTransport(answer))
    paced = SlackSink(
        "alerts",
        Secret("https://hooks.slack.com/services/T/B/x"),
        max_wait=5.0,
        client=client,
        clock=lambda: now[0],
        sleep=lambda seconds: pytest.fail(f"slept {seconds} s past max_wait"),
    )
    with pytest.raises(SinkUnavailable):
        paced.send([make_record()])
    with pytest.raises(SinkUnavailable) as caught:
        paced.send([make_record()])
    assert caught.value.retry_after == 20.0
    assert len(posted) == 1
    now[0] += 20.0
    record = make_record()
    assert paced.send([record]).outcomes == {record.record_id: Outcome.DELIVERED}
    assert len(posted) == 2
    paced.close()
    client.close()


# --- options --------------------------------------------------------------------------------------------------


def test_options_and_defaults() -> None:
    built = SlackSink.from_settings(
        SinkSettings(name="alerts", type="slack", options={"webhook_url": Secret("https://hooks.slack.com/x")})
    )
    built.close()
    assert (built.summary_threshold, built.min_interval, built.burst, built.max_wait) == (10, 1.0, 1, 30.0)


def test_bad_options_are_listed_without_revealing_the_url() -> None:
    options = {"webhook_url": f"http://hooks.slack.com/{TOKEN}", "summary_threshold": 0, "channel": "#x"}
    with pytest.raises(ConfigError) as caught:
        SlackSink.from_settings(SinkSettings(name="alerts", type="slack", options=options))
    problems = "\n".join(caught.value.problems)
    for key in ("webhook_url", "summary_threshold", "channel"):
        assert f"sinks.alerts.{key}:" in problems
    assert TOKEN not in problems
