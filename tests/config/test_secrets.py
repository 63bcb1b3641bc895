"""No secret printed: generated secrets, written literally in the config, never appear in a repr, in CLI output,
in an error, or in a log line at debug level — JSON or console, on a terminal or not, with a traceback or not."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import string
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog
from harness import REDIS_URL, ServerThread, SettingsFactory, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from config import ConfigError, Settings, settings_from_mapping
from config.logging import configure_logging
from ingest.app import create_app
from keytrail.cli import main
from sinks import build_sinks

# Each example writes files and calls the CLI in-process; function-scoped fixtures (tmp_path, capsys) are reset by
# hand inside each example.
BOUNDED = settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class FakeTty(io.StringIO):
    """A stream that says it is a terminal: what makes keytrail pick the console renderer with colors."""

    def isatty(self) -> bool:
        return True


@dataclass(frozen=True)
class Planted:
    """A generated secret and the parts of it that must never be printed (its distinctive head and tail)."""

    value: str
    marks: tuple[str, ...]


MARK = st.text(alphabet=string.ascii_letters + string.digits, min_size=6, max_size=6)
# Printable ASCII, with the characters that break URL parsing and naive masks drawn often.
MIDDLE = st.text(alphabet=st.sampled_from("@/:%?#&= ") | st.characters(min_codepoint=0x20, max_codepoint=0x7E))
SECRET_NAMES = (
    "tenant_token",
    "signing_secret",
    "access_key",
    "api_token",
    "pepper",
    "hec_token",
    "crm_token",
    "slack_path",
    "redis_password",
    "audit_password",
)


@st.composite
def planted(draw: st.DrawFn) -> Planted:
    head, tail = "QZ" + draw(MARK), draw(MARK) + "ZQ"
    return Planted(f"{head}{draw(MIDDLE.filter(lambda s: len(s) <= 16))}{tail}", (head, tail))


@st.composite
def secret_sets(draw: st.DrawFn) -> dict[str, Planted]:
    secrets = {name: draw(planted()) for name in SECRET_NAMES}
    key = base64.b64encode(b"keytrail-test-" + draw(MARK).encode() + draw(MARK).encode()).decode()
    secrets["webhook_secret"] = Planted("whsec_" + key, (key,))
    return secrets


def config_data(secrets: dict[str, Planted], directory: Path, *, encode_urls: bool = True) -> dict[str, Any]:
    """Every secret option keytrail has, each holding one generated secret as a literal."""

    def password(name: str) -> str:
        value = secrets[name].value
        return quote(value, safe="") if encode_urls else value

    return {
        "data_dir": str(directory / "data"),
        "redis": {"url": f"redis://:{password('redis_password')}@127.0.0.1:1/0", "autostart": False},
        "audit": {
            "url": f"postgresql://keytrail:{password('audit_password')}@127.0.0.1:1/keytrail",
            "pepper": secrets["pepper"].value,
        },
        "server": {"port": free_port()},
        "api": {"tokens": [secrets["api_token"].value]},
        "tenants": {
            "acme": {
                "token": secrets["tenant_token"].value,
                "signing_secrets": [secrets["signing_secret"].value],
                "access_key": secrets["access_key"].value,
            }
        },
        "sinks": [
            {
                "name": "hec",
                "type": "splunk_hec",
                "url": "https://splunk.example:8088",
                "token": secrets["hec_token"].value,
            },
            {
                "name": "crm",
                "type": "webhook",
                "url": f"https://crm.example/in?token={secrets['crm_token'].value}",
                "secret": secrets["webhook_secret"].value,
            },
            {
                "name": "chat",
                "type": "slack",
                "webhook_url": f"https://hooks.slack.com/services/{secrets['slack_path'].value}",
            },
            {"name": "siem", "type": "syslog", "host": "127.0.0.1", "transport": "udp", "port": 1},
            {"name": "archive", "type": "file", "path": str(directory / "out" / "audit.jsonl")},
        ],
    }


def to_toml(data: dict[str, Any]) -> str:
    """Just enough TOML for `config_data` (json.dumps of printable ASCII is a valid TOML basic string)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict | list)]
    for section, table in data.items():
        if section == "tenants":
            for name, tenant in table.items():
                lines += [f"[tenants.{name}]", *(f"{k} = {value(v)}" for k, v in tenant.items())]
        elif isinstance(table, dict):
            lines += [f"[{section}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    for sink in data["sinks"]:
        lines += ["[[sinks]]", *(f"{k} = {value(v)}" for k, v in sink.items())]
    return "\n".join(lines) + "\n"


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def leaked(secrets: dict[str, Planted], text: str) -> list[str]:
    """The secrets whose marks appear in `text` (terminal colour codes removed: they could split a mark)."""
    plain = ANSI.sub("", text)
    return [f"{name}: {mark}" for name, secret in secrets.items() for mark in secret.marks if mark in plain]


# -- (a) reprs ---------------------------------------------------------------------------------------------------------


@BOUNDED
@given(secrets=secret_sets())
def test_settings_and_built_sinks_never_show_a_literal_secret(secrets: dict[str, Planted], tmp_path: Path) -> None:
    built = settings_from_mapping(config_data(secrets, tmp_path), {})
    sinks = build_sinks(built)
    try:
        shown = [repr(built), str(built), *map(repr, built.sinks), *map(repr, built.tenants.values())]
        shown += [text for sink in sinks.values() for text in (repr(sink), str(sink), f"{sink}")]
    finally:
        for sink in sinks.values():
            sink.close()
    assert leaked(secrets, "\n".join(shown)) == []


# -- (b) CLI output ----------------------------------------------------------------------------------------------------


@BOUNDED
@given(secrets=secret_sets(), encode_urls=st.booleans())
def test_cli_never_prints_a_secret_and_answers_bad_urls_in_one_line(
    secrets: dict[str, Planted], encode_urls: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "keytrail.toml"
    config.write_text(to_toml(config_data(secrets, tmp_path, encode_urls=encode_urls)))
    capsys.readouterr()
    for command in (["config", "check"], ["config", "check", "--format", "json"], ["status"]):
        code = main(["--config", str(config), *command])
        out, err = capsys.readouterr()
        assert leaked(secrets, out + err) == [], command
        assert "Traceback" not in err
        # One line, or a config error's list of problems (one per line).
        assert all(line.startswith(("keytrail: ", "  - ")) for line in err.splitlines()), err
        if command[0] == "status":
            assert code == 1  # nothing answers at 127.0.0.1:1
        elif encode_urls:
            assert code == 0, err


@pytest.mark.parametrize(
    "url",
    [
        "redis://:PW1secret@PW2secret@127.0.0.1:1/0",
        "redis://:PW1secret/PW2secret@127.0.0.1:1/0",
        "redis://:PW1secret@127.0.0.1:notaport/0",
        "redis://:PW1secret@127.0.0.1:99999/0",
    ],
)
@pytest.mark.parametrize("command", [["status"], ["worker"], ["serve"], ["up"], ["config", "check"]])
def test_a_bad_or_tricky_redis_url_is_one_masked_line_for_every_command(
    url: str, command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "keytrail.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {free_port()}\n[redis]\nurl = "{url}"\nautostart = false\n'
    )
    code = main(["--config", str(config), *command])
    out, err = capsys.readouterr()
    assert "secret" not in out + err
    assert "Traceback" not in err
    if command != ["config", "check"] or "@PW2" not in url:  # a doubled '@' is valid for Redis; it is only masked
        assert code != 0
        assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://keytrail:PW1secret@PW2secret@127.0.0.1:1/db",
        "postgresql://keytrail:PW1secret/PW2secret@127.0.0.1:1/db",
        "postgresql://keytrail:PW1secret%zzPW2secret@127.0.0.1:1/db",
        "postgresql://keytrail:PW1secret@127.0.0.1:notaport/db",
        "postgresql://keytrail:PW1secret@127.0.0.1:1/db",
    ],
)
@pytest.mark.parametrize("command", [["status"], ["audit", "verify"], ["config", "check"]])
def test_a_bad_database_url_is_one_masked_line(
    url: str, command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], redis: Redis
) -> None:
    config = tmp_path / "keytrail.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{REDIS_URL}"\n[audit]\nurl = "{url}"\n')
    code = main(["--config", str(config), *command])
    out, err = capsys.readouterr()
    assert "secret" not in out + err
    assert "Traceback" not in err
    if command != ["config", "check"] or not url.endswith("127.0.0.1:1/db"):  # nothing answers on port 1
        assert code != 0
        assert len(err.splitlines()) == 1, err


# -- (c) logs ----------------------------------------------------------------------------------------------------------

RENDERERS = {
    "json": lambda: (io.StringIO(), True),
    "console-terminal": lambda: (FakeTty(), None),
    "console-plain": lambda: (io.StringIO(), False),
}


def crash_holding(secrets: dict[str, Planted], built: Settings) -> None:
    """Fails with every secret in its locals, as a request handler or a sink does mid-work."""
    headers = {
        "x-keytrail-token": secrets["tenant_token"].value,
        "theauthapi-signature": secrets["signing_secret"].value,
        "authorization": f"Bearer {secrets['api_token'].value}",
    }
    revealed = {name: secret.value for name, secret in secrets.items()}
    sink_options = [dict(sink.options) for sink in built.sinks]
    raise RuntimeError(f"delivery failed after {len(headers) + len(revealed) + len(sink_options)} steps")


@BOUNDED
@given(secrets=secret_sets(), renderer=st.sampled_from(sorted(RENDERERS)))
def test_debug_logs_of_a_crash_and_of_http_requests_show_no_secret(
    secrets: dict[str, Planted], renderer: str, tmp_path: Path
) -> None:
    data = config_data(secrets, tmp_path)
    built = settings_from_mapping(data, {})
    stream, as_json = RENDERERS[renderer]()
    configure_logging("debug", json=as_json, stream=stream)
    try:
        crash_holding(secrets, built)
    except RuntimeError:
        structlog.get_logger("keytrail.test").exception("delivery_crashed")
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    # httpx logs every request's URL at debug: the Slack and CRM URLs are the credentials themselves.
    with httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200))) as client:
        for sink in data["sinks"]:
            for key in ("webhook_url", "url"):
                if key in sink:
                    client.post(sink[key], content=b"{}")
    output = ANSI.sub("", stream.getvalue())
    assert leaked(secrets, output) == []
    assert output.count("RuntimeError: delivery failed") == 2  # both tracebacks are there, just without locals
    assert "HTTP Request: POST https://hooks.slack.com" in output or "HTTP Request: POST https://***" in output
    if as_json:
        lines = [json.loads(line) for line in output.splitlines()]
        crashed = [line for line in lines if "exception" in line]
        assert {line["event"] for line in crashed} == {"delivery_crashed", "Exception in ASGI application"}


def test_debug_logs_keep_the_host_of_a_request_but_not_its_path_query_or_password() -> None:
    stream = io.StringIO()
    configure_logging("debug", json=True, stream=stream)
    with httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204))) as client:
        client.post("https://hooks.slack.com/services/T000/B000/slackpathsecret")
        client.post("https://user:userpwsecret@crm.example:8443/in?token=querysecret")
    output = stream.getvalue()
    assert "secret" not in output
    assert "POST https://hooks.slack.com/***" in output
    assert "POST https://***@crm.example:8443/***" in output


# -- a real receiver on loopback, logging to a terminal ----------------------------------------------------------------

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]
REQUEST_TOKEN = "tok-requestsecret-0123456789"
REQUEST_SIGNATURE = "sig-requestsecret-abcdef"
BEARER = "bearer-requestsecret-xyz"


def with_faults(app: Any) -> ASGIApp:
    """The receiver, except that a request with `x-test-fault: receive` fails while its body is read, and one with
    `x-test-fault: send` fails as its answer is sent: internal errors raised deep in the receiver's own frames, whose
    locals hold the request headers. The first is the receiver's own `webhook_failed` (structlog), the second
    reaches uvicorn's "Exception in ASGI application" (stdlib logging)."""

    async def wrapped(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        fault = dict(scope.get("headers", [])).get(b"x-test-fault") if scope["type"] == "http" else None

        async def broken(*args: Any) -> Any:
            raise RuntimeError(f"injected fault: {fault!r}")

        await app(scope, broken if fault == b"receive" else receive, broken if fault == b"send" else send)

    return wrapped


def test_a_crash_inside_the_receiver_prints_no_request_secret_on_a_terminal(
    make_settings: SettingsFactory, redis: Redis
) -> None:
    terminal = FakeTty()
    configure_logging("debug", stream=terminal)
    built = make_settings(
        tenants={"acme": {"token": REQUEST_TOKEN, "signing_secrets": [REQUEST_SIGNATURE]}}, api={"tokens": [BEARER]}
    )
    headers = {
        "content-type": "application/json",
        "x-keytrail-token": REQUEST_TOKEN,
        "theauthapi-signature": REQUEST_SIGNATURE,
        "authorization": f"Bearer {BEARER}",
    }
    with ServerThread(with_faults(create_app(built))) as server, httpx.Client(base_url=server.url) as client:
        deep = client.post("/hooks/theauthapi/acme", content=b"[" * 100_000, headers=headers)
        on_read = client.post("/hooks/theauthapi/acme", content=b"{}", headers={**headers, "x-test-fault": "receive"})
        on_send = client.post("/hooks/theauthapi/acme", content=b"{}", headers={**headers, "x-test-fault": "send"})
    assert deep.status_code < 600
    assert on_read.status_code in (500, 503)
    assert on_send.status_code == 500
    output = ANSI.sub("", terminal.getvalue())
    # Both crashes were reported with their tracebacks...
    assert "injected fault: b'receive'" in output
    assert "injected fault: b'send'" in output
    assert "Exception in ASGI application" in output
    # ...and no header of the request is in them.
    assert "requestsecret" not in output


def test_unencoded_password_characters_are_config_problems_that_do_not_quote_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(
            {"redis": {"url": "redis://:pa/sssecret@h/0"}, "audit": {"url": "postgresql://u:p@sssecret@h/db"}}, {}
        )
    assert len(caught.value.problems) == 2
    assert "secret" not in str(caught.value)
