"""No raw key anywhere, end to end: generated keys planted in signed deliveries never reach Redis, the store, a sink,
the logs, the audit API or `keytrail audit search`."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes.hec import FakeHec
from harness import ServerThread, SettingsFactory, drain, signed_headers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from key_strategies import SHAPED_KEYS, custom_keys, payloads
from redis import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config import Settings
from config.logging import configure_logging
from keytrail.cli import main
from keytrail.serving import create_app

HEC_TOKEN = "11111111-2222-3333-4444-555555555555"
CRM_SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
API_TOKEN = "api-token-for-the-no-raw-key-test"
TOPICS = ["api-key.created", "api-key.updated", "access-key.created", "project.updated"]


class FakeCrm:
    """An inbound webhook endpoint that keeps every raw body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.app = Starlette(routes=[Route("/hooks/keytrail", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.bodies.append(await request.body())
        return Response(status_code=204)


@pytest.fixture
def peers() -> Iterator[tuple[FakeHec, FakeCrm, str]]:
    crm = FakeCrm()
    with FakeHec(tokens=[HEC_TOKEN]) as hec, ServerThread(crm.app) as server:
        yield hec, crm, f"{server.url}/hooks/keytrail"


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A signed-able body: an envelope (or a bare entity) with keys in its key field, its data, and maybe its id."""
    data, planted = draw(payloads(custom_keys(min_size=10)))
    key = draw(SHAPED_KEYS | custom_keys(min_size=10))
    planted.append(key)
    data["key"] = key
    if draw(st.booleans()):
        return json.dumps(data).encode(), planted
    event_id = str(uuid.uuid4())
    if draw(st.booleans()):
        event_id = draw(SHAPED_KEYS)  # a key where the event GUID goes
        planted.append(event_id)
    body = {"id": event_id, "topic": draw(st.sampled_from(TOPICS)), "createdAt": "2026-11-28T10:00:00.000Z"}
    return json.dumps({**body, "data": data}).encode(), planted


def redis_contents(redis: Redis) -> bytes:
    """Every value in the test database, with RQ's zlib-compressed job data inflated."""
    parts: list[bytes] = []
    for key in redis.keys("*"):
        kind = redis.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [redis.get(key) or b""]
        elif kind == b"hash":
            values = [item for pair in redis.hgetall(key).items() for item in pair]
        elif kind == b"list":
            values = redis.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            values = list(redis.smembers(key)) if kind == b"set" else redis.zrange(key, 0, -1)
        for value in values:
            parts.append(key + b"=" + value)
            with contextlib.suppress(zlib.error):  # not compressed: kept as is above
                parts.append(zlib.decompress(value))
    return b"\n".join(parts)


def audit_search_output(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    config = tmp_path / "cli.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\n[audit]\nurl = "{settings.audit.url}"\n', encoding="utf-8")
    capsys.readouterr()
    code = main(["--config", str(config), "audit", "search", "--limit", "100", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out + captured.err


def test_no_generated_key_survives_anywhere_end_to_end(
    make_settings: SettingsFactory,
    redis: Redis,
    peers: tuple[FakeHec, FakeCrm, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hec, crm, crm_url = peers
    settings_ = make_settings(
        api={"tokens": [API_TOKEN]},
        sinks=[
            {"name": "archive", "type": "file", "path": str(tmp_path / "out" / "audit.jsonl")},
            {"name": "splunk", "type": "splunk_hec", "url": hec.url, "token": HEC_TOKEN, "gzip": False},
            {"name": "crm", "type": "webhook", "url": crm_url, "secret": CRM_SECRET},
        ],
    )
    logs = io.StringIO()
    configure_logging("debug", json=True, stream=logs)

    # Hypothesis's first example is its simplest (empty payloads): draw several and post the 20 richest.
    drawn: dict[bytes, list[str]] = {}

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(deliveries(), min_size=10, max_size=10))
    def generate(batch: list[tuple[bytes, list[str]]]) -> None:
        drawn.update(batch)

    generate()
    richest = sorted(drawn.items(), key=lambda item: len(item[1]), reverse=True)[:20]
    planted = [key for _, keys in richest for key in keys]

    with ServerThread(create_app(settings_)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        for body, _ in richest:
            response = client.post("/hooks/theauthapi/acme", content=body, headers=signed_headers())
            assert response.status_code == 202, response.text
        queued = redis_contents(redis)
        drain(settings_)
        api_output = client.get(
            "/api/audit/records", params={"limit": "100"}, headers={"authorization": f"Bearer {API_TOKEN}"}
        )
        assert api_output.status_code == 200, api_output.text
        assert len(api_output.json()["records"]) == len(richest)

    db = Path(settings_.audit.url.removeprefix("sqlite:///"))
    places: dict[str, bytes] = {
        "redis job": queued,
        "redis after drain": redis_contents(redis),
        "store file": b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*")),
        "file sink": (tmp_path / "out" / "audit.jsonl").read_bytes(),
        "hec": json.dumps(hec.events).encode(),
        "crm": b"\n".join(crm.bodies),
        "logs": logs.getvalue().encode(),
        "audit api": api_output.content,
        "audit search": audit_search_output(settings_, tmp_path, capsys).encode(),
    }
    assert hec.events
    assert crm.bodies
    assert len(planted) >= 60
    leaks = {name: [key for key in planted if key.encode() in blob] for name, blob in places.items()}
    assert leaks == {name: [] for name in places}
