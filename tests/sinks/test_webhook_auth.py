"""The webhook sink's credentials and body templates, against loopback CRMs and an OAuth token endpoint that enforce
them the way HubSpot, Salesforce and Dynamics do (401 without or with a wrong or expired credential)."""

from __future__ import annotations

import base64
import json
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from config.errors import ConfigError
from config.loader import settings_from_mapping
from config.settings import Secret, SinkSettings
from events.records import AuditRecord
from sinks import build_sinks
from sinks.base import Outcome
from sinks.errors import SinkUnavailable
from sinks.templates import parse_template
from sinks.webhook import WebhookSink
from sinks.webhook_auth import ClientCredentials

MakeRecord = Callable[..., AuditRecord]
BEARER = "pat-na1-SHOULD_NOT_LEAK"
CLIENT_ID = "3MVG9-client"
CLIENT_SECRET = "cs-SHOULD_NOT_LEAK"


class Crm:
    """An inbound endpoint that answers 401 unless `check(headers)` holds; keeps what it accepted."""

    def __init__(self, check: Callable[[dict[str, str]], bool]) -> None:
        self.check = check
        self.accepted: list[tuple[dict[str, str], Any]] = []
        self.refused = 0
        self.app = Starlette(routes=[Route("/in", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        headers = dict(request.headers)
        if not self.check(headers):
            self.refused += 1
            return JSONResponse({"message": "Authentication credentials not found"}, status_code=401)
        self.accepted.append((headers, json.loads(await request.body())))
        return PlainTextResponse("", status_code=204)


class TokenEndpoint:
    """An OAuth 2.0 token endpoint (client credentials) with its own clock: tokens live `lifetime` seconds, and
    `valid(token)` says whether one is live now. `script` forces the next answers (status, body)."""

    def __init__(self, lifetime: int | None = 1) -> None:
        self.now = 1_900_000_000.0
        self.lifetime = lifetime
        self.issued: dict[str, float] = {}
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.app = Starlette(routes=[Route("/oauth2/token", self.token, methods=["POST"])])

    async def token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        self.requests.append((dict(request.headers), form))
        if self.script:
            status, body = self.script.pop(0)
            return JSONResponse(body, status_code=status)
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        in_body = form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if request.headers.get("authorization") != expected and not in_body:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = secrets.token_urlsafe(16)
        self.issued[token] = self.now + (self.lifetime or 10**9)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.lifetime is not None:
            answer["expires_in"] = self.lifetime
        return JSONResponse(answer)

    def valid(self, headers: dict[str, str]) -> bool:
        token = headers.get("authorization", "").removeprefix("Bearer ")
        return self.issued.get(token, 0.0) > self.now


@pytest.fixture
def sinks() -> Iterator[Callable[..., WebhookSink]]:
    built: list[WebhookSink] = []

    def make(options: dict[str, Any], **kwargs: Any) -> WebhookSink:
        sink = WebhookSink.from_settings(SinkSettings(name="crm", type="webhook", options=options))
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def oauth_sink(token_url: str, crm_url: str, clock: Callable[[], float], **extra: Any) -> WebhookSink:
    credentials = ClientCredentials(Secret(token_url), CLIENT_ID, Secret(CLIENT_SECRET), scope="api", clock=clock)
    return WebhookSink("crm", Secret(crm_url), None, credentials=credentials, clock=clock, **extra)


# --- bearer, basic, headers -----------------------------------------------------------------------------------


def test_bearer_token_is_sent_and_no_signing_secret_is_needed(
    serve: Callable[[Any], str], sinks: Callable[..., WebhookSink], make_record: MakeRecord
) -> None:
    crm = Crm(lambda h: h.get("authorization") == f"Bearer {BEARER}")
    url = serve(crm.app) + "/in"
    record = make_record()
    sink = sinks({"url": url, "auth": "bearer", "token": Secret(BEARER)})
    assert sink.send([record]).outcomes == {record.record_id: Outcome.DELIVERED}
    assert "webhook-signature" not in crm.accepted[0][0]
    assert BEARER not in repr(sink)


def test_a_wrong_bearer_token_holds_the_records_with_an_alert(
    serve: Callable[[Any], str], sinks: Callable[..., WebhookSink], make_record: MakeRecord
) -> None:
    crm = Crm(lambda h: h.get("authorization") == f"Bearer {BEARER}")
    url = serve(crm.app) + "/in"
    with pytest.raises(SinkUnavailable) as caught:
        sinks({"url": url, "auth": "bearer", "token": Secret("revoked")}).send([make_record()])
    assert caught.value.alert
    assert "HTTP 401" in caught.value.reason
    assert crm.refused == 1
    assert not crm.accepted


def test_basic_auth_and_custom_headers_are_sent(
    serve: Callable[[Any], str], sinks: Callable[..., WebhookSink], make_record: MakeRecord
) -> None:
    expected = "Basic " + base64.b64encode(b"keytrail:pw-SHOULD_NOT_LEAK").decode()
    crm = Crm(lambda h: h.get("authorization") == expected and h.get("x-api-key") == "k-123")
    url = serve(crm.app) + "/in"
    options = {
        "url": url,
        "auth": "basic",
        "username": "keytrail",
        "password": Secret("pw-SHOULD_NOT_LEAK"),
        "headers": {"X-Api-Key": Secret("k-123"), "X-Source": "keytrail"},
    }
    sink = sinks(options)
    assert sink.send([make_record()]).ids(Outcome.DELIVERED)
    assert crm.accepted[0][0]["x-source"] == "keytrail"
    assert "pw-SHOULD_NOT_LEAK" not in repr(sink)
    assert "k-123" not in repr(sink)


def test_header_secrets_come_from_the_environment_via_the_loader(
    serve: Callable[[Any], str], make_record: MakeRecord, tmp_path: Path
) -> None:
    crm = Crm(lambda h: h.get("x-api-key") == "from-env")
    url = serve(crm.app) + "/in"
    table = {"name": "crm", "type": "webhook", "url": url, "auth": "bearer", "token": "env:CRM_TOKEN"}
    table["headers"] = {"X-Api-Key": "env:CRM_KEY"}
    settings = settings_from_mapping(
        {"data_dir": str(tmp_path), "sinks": [table]}, {"CRM_TOKEN": "t", "CRM_KEY": "from-env"}
    )
    sink = build_sinks(settings)["crm"]
    assert sink.send([make_record()]).ids(Outcome.DELIVERED)
    sink.close()


# --- OAuth 2.0 client credentials -----------------------------------------------------------------------------


def test_oauth_token_is_fetched_once_and_cached_while_it_lives(
    serve: Callable[[Any], str], make_record: MakeRecord
) -> None:
    issuer = TokenEndpoint(lifetime=3600)
    crm = Crm(issuer.valid)
    sink = oauth_sink(serve(issuer.app) + "/oauth2/token", serve(crm.app) + "/in", lambda: issuer.now)
    records = [make_record() for _ in range(3)]
    assert sink.send(records).ids(Outcome.DELIVERED) == [r.record_id for r in records]
    sink.close()
    assert len(issuer.requests) == 1
    headers, form = issuer.requests[0]
    assert form == {"grant_type": "client_credentials", "scope": "api"}
    assert headers["authorization"].startswith("Basic ")


def test_an_expired_token_is_refreshed_before_sending(serve: Callable[[Any], str], make_record: MakeRecord) -> None:
    issuer = TokenEndpoint(lifetime=1)
    crm = Crm(issuer.valid)
    sink = oauth_sink(serve(issuer.app) + "/oauth2/token", serve(crm.app) + "/in", lambda: issuer.now)
    assert sink.send([make_record()]).ids(Outcome.DELIVERED)
    issuer.now += 2  # the sink's clock too: it knows its token is stale
    assert sink.send([make_record()]).ids(Outcome.DELIVERED)
    sink.close()
    assert len(issuer.requests) == 2
    assert crm.refused == 0


def test_a_401_drops_the_cached_token_and_the_record_is_sent_once_more(
    serve: Callable[[Any], str], make_record: MakeRecord
) -> None:
    issuer = TokenEndpoint(lifetime=1)
    crm = Crm(issuer.valid)
    frozen = issuer.now
    # The sink's clock stands still while the issuer's moves: its cached token looks live but the CRM refuses it
    # (a token revoked or expired early, or a Salesforce token, which comes without expires_in).
    sink = oauth_sink(serve(issuer.app) + "/oauth2/token", serve(crm.app) + "/in", lambda: frozen)
    assert sink.send([make_record()]).ids(Outcome.DELIVERED)
    issuer.now += 2
    record = make_record()
    assert sink.send([record]).outcomes == {record.record_id: Outcome.DELIVERED}
    sink.close()
    assert crm.refused == 1
    assert len(issuer.requests) == 2
    assert len(crm.accepted) == 2


def test_client_secret_can_go_in_the_form_body(
    serve: Callable[[Any], str], sinks: Callable[..., WebhookSink], make_record: MakeRecord
) -> None:
    issuer = TokenEndpoint(lifetime=None)
    crm = Crm(issuer.valid)
    options = {
        "url": serve(crm.app) + "/in",
        "auth": "oauth2",
        "token_url": Secret(serve(issuer.app) + "/oauth2/token"),
        "client_id": CLIENT_ID,
        "client_secret": Secret(CLIENT_SECRET),
        "client_auth": "body",
    }
    assert sinks(options).send([make_record()]).ids(Outcome.DELIVERED)
    headers, form = issuer.requests[0]
    assert "authorization" not in headers
    assert form["client_secret"] == CLIENT_SECRET


def test_token_endpoint_down_is_retry_later(serve: Callable[[Any], str], make_record: MakeRecord) -> None:
    crm = Crm(lambda h: True)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sink = oauth_sink(f"http://127.0.0.1:{port}/oauth2/token", serve(crm.app) + "/in", lambda: 0.0)
    with pytest.raises(SinkUnavailable) as caught:
        sink.send([make_record()])
    sink.close()
    assert not caught.value.alert
    assert "token endpoint" in caught.value.reason
    assert not crm.accepted


def test_token_endpoint_busy_is_retry_later_without_alert(serve: Callable[[Any], str], make_record: MakeRecord) -> None:
    issuer = TokenEndpoint()
    issuer.script.append((503, {"error": "temporarily_unavailable"}))
    sink = oauth_sink(serve(issuer.app) + "/oauth2/token", serve(Crm(lambda h: True).app) + "/in", lambda: 0.0)
    with pytest.raises(SinkUnavailable) as caught:
        sink.send([make_record()])
    sink.close()
    assert not caught.value.alert


def test_token_endpoint_refusing_the_client_holds_the_records_with_an_alert(
    serve: Callable[[Any], str], make_record: MakeRecord
) -> None:
    issuer = TokenEndpoint()
    crm = Crm(issuer.valid)
    credentials = ClientCredentials(Secret(serve(issuer.app) + "/oauth2/token"), CLIENT_ID, Secret("wrong"))
    sink = WebhookSink("crm", Secret(serve(crm.app) + "/in"), None, credentials=credentials)
    with pytest.raises(SinkUnavailable) as caught:
        sink.send([make_record(), make_record()])
    sink.close()
    assert caught.value.alert
    assert caught.value.reason.startswith("token endpoint HTTP 401")
    assert "wrong" not in caught.value.reason
    assert not crm.accepted
    assert "wrong" not in repr(sink)


# --- body templates -------------------------------------------------------------------------------------------

FIRST_CALL = json.dumps(
    {
        "event": "first call made",
        "key": "${entity.fingerprint}",
        "label": "key $entity.name in ${project_id}",
        "severity": "$severity_id",
        "actor": "${actor.uid}",
        "product": "${metadata.product}",
    }
)


def test_a_template_shapes_the_body_for_its_topic_and_others_keep_the_envelope(
    serve: Callable[[Any], str], sinks: Callable[..., WebhookSink], make_record: MakeRecord
) -> None:
    crm = Crm(lambda h: True)
    url = serve(crm.app) + "/in"
    sink = sinks({"url": url, "auth": "bearer", "token": Secret(BEARER), "templates": {"*.firstUsed": FIRST_CALL}})
    first = make_record(topic="api-key.firstUsed", entity_name='quote " and } brace', actor=None)
    other = make_record(topic="api-key.created")
    assert len(sink.send([first, other]).ids(Outcome.DELIVERED)) == 2
    assert crm.accepted[0][1] == {
        "event": "first call made",
        "key": first.entity.fingerprint,
        "label": f'key quote " and }} brace in {first.project_id}',
        "severity": int(first.severity_id),
        "actor": None,
        "product": "The Auth API",
    }
    assert crm.accepted[1][1]["type"] == "api-key.created"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ('{"a": "${entity.fingerprint"}', "bad placeholder"),
        ('{"a": "$ 5"}', "bad placeholder"),
        ('{"a": "${entity.nope}"}', "unknown field 'entity.nope'"),
        ('{"a": "$secret"}', "unknown field 'secret'"),
        ('{"a": $topic}', "not valid JSON"),
        ("42", None),
    ],
)
def test_bad_templates_are_refused(template: str, problem: str | None) -> None:
    if problem is None:
        parse_template("*", template)
        return
    with pytest.raises(ValueError, match=problem):
        parse_template("*", template)


# --- configuration --------------------------------------------------------------------------------------------


def load_problems(tmp_path: Path, table: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    """The problems `config check` prints: settings loading, then building the sinks."""
    base = {"name": "crm", "type": "webhook", "url": "https://crm.example/in"}
    try:
        settings = settings_from_mapping({"data_dir": str(tmp_path), "sinks": [base | table]}, environ or {})
        for sink in build_sinks(settings).values():
            sink.close()
    except ConfigError as exc:
        return list(exc.problems)
    return []


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"auth": "jwt", "token": "x"}, "sinks.crm.auth: 'jwt' is not one of none, bearer, basic, oauth2"),
        ({"auth": "bearer"}, "sinks.crm.token: required (a literal, env:NAME or file:/path)"),
        ({"auth": "bearer", "token": "env:MISSING_TOKEN"}, "sinks.crm.token: environment variable MISSING_TOKEN"),
        ({"auth": "basic", "password": "p"}, "sinks.crm.username: required"),
        (
            {"auth": "oauth2", "client_id": "c", "client_secret": "s"},
            "sinks.crm.token_url: required (a literal, env:NAME or file:/path)",
        ),
        (
            {"auth": "oauth2", "token_url": "https://t/x", "client_id": "c", "client_secret": "s", "client_auth": "x"},
            "sinks.crm.client_auth: 'x' is not one of basic, body",
        ),
        ({"auth": "bearer", "token": "t", "password": "p"}, "sinks.crm.password: only used with auth = 'basic'"),
        ({}, "sinks.crm.secret: required"),
        ({"auth": "bearer", "token": "t", "headers": {"Authorization": "x"}}, "sinks.crm.headers.Authorization:"),
        ({"auth": "bearer", "token": "t", "headers": {"bad name": "x"}}, "sinks.crm.headers.bad name:"),
        (
            {"auth": "bearer", "token": "t", "templates": {"api-key.firstUsed": '{"a": "${nope}"}'}},
            "sinks.crm.templates.api-key.firstUsed: unknown field 'nope'",
        ),
    ],
)
def test_config_problems_are_one_line_each(tmp_path: Path, table: dict[str, Any], expected: str) -> None:
    problems = load_problems(tmp_path, table)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_config_problems_never_show_secrets(tmp_path: Path) -> None:
    table = {"auth": "oauth2", "token_url": "ftp://SHOULD_NOT_LEAK", "client_id": "c", "client_secret": "s3cr3t!"}
    problems = load_problems(tmp_path, table)
    assert problems == ["sinks.crm.token_url: must start with https:// (or http://)"]


@pytest.mark.parametrize("example", ["hubspot.toml", "salesforce.toml"])
def test_example_configs_load(example: str) -> None:
    import tomllib

    data = tomllib.loads((Path(__file__).parents[2] / "examples" / example).read_text())
    environ = dict.fromkeys(("HUBSPOT_TOKEN", "SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET"), "x")
    for sink in build_sinks(settings_from_mapping(data, environ)).values():
        sink.close()
