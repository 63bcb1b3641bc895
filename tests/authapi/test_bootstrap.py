"""`keytrail subscribe | unsubscribe` against the fake The Auth API on loopback, the real receiver and real Redis."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import structlog

from authapi.client import AuthApiClient, AuthApiError
from authapi.drift import check_drift_all
from authapi.fake import FakeAuthApi, FakeState, LoopbackServer
from authapi.subscriptions import parse_topics
from config.loader import settings_from_mapping
from config.logging import configure_logging
from config.settings import DEFAULT_TOPICS, Secret
from events.wire import hook_url
from ingest.app import create_app
from keytrail.cli import main

REDIS_URL = "redis://127.0.0.1:6379/15"
ACCESS_KEY = "test_access_acme_0123456789"
TOKEN = "hook-token-acme-0123456789"
ACCOUNT = "acct-1"
PROJECTS = ("proj-1", "proj-2")


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI"):
            raise
        pytest.skip("no Redis at 127.0.0.1:6379")
    yield client
    client.flushdb()  # database 15 belongs to this module: pings, and the receiver's ingest queue
    client.close()


@pytest.fixture(autouse=True)
def _logging_back_to_real_stderr() -> Iterator[None]:
    # Commands configure logging onto the captured stderr; later threads must not write to a closed capture.
    yield
    configure_logging("error", stream=sys.__stderr__)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as opened:
        yield opened


FakeFactory = Callable[..., FakeAuthApi]


@pytest.fixture
def start_fake(stack: ExitStack) -> FakeFactory:
    def start(**options: Any) -> FakeAuthApi:
        fake = stack.enter_context(FakeAuthApi(FakeState(**options)))
        fake.state.seed(ACCESS_KEY, ACCOUNT, PROJECTS)
        return fake

    return start


@pytest.fixture
def fake(start_fake: FakeFactory) -> FakeAuthApi:
    return start_fake()


def tenant_table(public_url: str, *, token: str = TOKEN, projects: tuple[str, ...] = PROJECTS) -> dict[str, Any]:
    return {
        "token": token,
        "access_key": ACCESS_KEY,
        "account_id": ACCOUNT,
        "project_ids": list(projects),
        "public_url": public_url,
    }


def settings_data(tmp_path: Path, base_url: str, public_url: str, **tenant: Any) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "data"),
        "redis": {"url": REDIS_URL},
        "authapi": {"base_url": base_url, "timeout_seconds": 5.0},
        "tenants": {"acme": tenant_table(public_url, **tenant)},
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict))
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)

    lines.extend(f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict))
    for k, v in data.items():
        if isinstance(v, dict):
            table(k, v)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def receiver(stack: ExitStack, tmp_path: Path, store: redis.Redis) -> Callable[..., str]:
    """The real receiver (ingest.app) on loopback; returns its public URL."""

    def start(token: str = TOKEN) -> str:
        settings = settings_from_mapping(
            settings_data(tmp_path, "http://127.0.0.1:9", "http://unused", token=token), {}
        )
        return stack.enter_context(LoopbackServer(create_app(settings))).url

    return start


class Cli:
    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = config
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--config", str(self.config), *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> tuple[int, Any, str]:
        code, out, err = self(*argv, "--format", "json")
        return code, json.loads(out) if out.strip() else None, err


@pytest.fixture
def cli_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Cli]:
    def make(fake: FakeAuthApi, public_url: str = "http://127.0.0.1:9", **tenant: Any) -> Cli:
        data = settings_data(tmp_path, fake.url, public_url, **tenant)
        return Cli(write_config(tmp_path / "keytrail.toml", data), capsys)

    return make


def keytrail_hooks(fake: FakeAuthApi, public_url: str = "http://127.0.0.1:9") -> list[dict[str, Any]]:
    url = hook_url(public_url, "acme")
    return [h for h in fake.state.webhooks_in() if h["url"] == url]


# Subscribing: create, idempotence, dry run.


def test_subscribe_from_nothing_creates_one_subscription_per_project(fake: FakeAuthApi, cli_for: Any) -> None:
    code, report, _ = cli_for(fake).json("subscribe", "--no-ping")

    assert code == 0
    assert [(c["project_id"], c["action"]) for c in report["changes"]] == [("proj-1", "create"), ("proj-2", "create")]
    hooks = keytrail_hooks(fake)
    assert sorted(h["projectId"] for h in hooks) == list(PROJECTS)
    assert sorted(c["webhook_id"] for c in report["changes"]) == sorted(h["id"] for h in hooks)
    for hook in hooks:
        assert hook["name"] == "keytrail"
        assert hook["url"] == "http://127.0.0.1:9/hooks/theauthapi/acme"
        assert set(hook["topics"]) == set(DEFAULT_TOPICS)
        assert hook["httpMethod"] == "POST"
        assert hook["status"] == "live"
        assert hook["customHeaders"] == {"X-Keytrail-Token": TOKEN}


def test_second_run_changes_nothing(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")
    writes_before = len(fake.state.requests_to("POST", "/webhooks"))

    code, report, _ = cli.json("subscribe", "--no-ping")

    assert code == 0
    assert {c["action"] for c in report["changes"]} == {"unchanged"}
    assert len(fake.state.requests_to("POST", "/webhooks")) == writes_before
    assert not [r for r in fake.state.requests if r.method in ("PATCH", "DELETE")]
    assert len(keytrail_hooks(fake)) == 2


def test_dry_run_prints_the_plan_and_changes_nothing(fake: FakeAuthApi, cli_for: Any) -> None:
    code, out, _ = cli_for(fake)("subscribe", "--dry-run", "--format", "table")

    assert code == 0
    assert "dry run" in out
    assert out.count("create") == 2
    assert fake.state.webhooks_in() == []
    assert not fake.state.requests_to("POST", "/webhooks/ping")


def test_dry_run_names_the_fields_an_update_would_change(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")
    changed = next(h for h in keytrail_hooks(fake) if h["projectId"] == "proj-1")
    fake.state.patch_webhook(changed["id"], topics=["api-key.created"], name="renamed by someone")

    code, report, _ = cli.json("subscribe", "--dry-run")

    assert code == 0
    by_project = {c["project_id"]: c for c in report["changes"]}
    # topics are not in UpdateWebhookDTO, so no PATCH can repair them: the plan says the hook will be replaced.
    assert by_project["proj-1"]["action"] == "replace"
    assert by_project["proj-1"]["webhook_id"] == changed["id"]
    assert sorted(by_project["proj-1"]["differences"]) == ["name", "topics"]
    assert by_project["proj-2"]["action"] == "unchanged"
    assert fake.state.get_webhook(None, changed["id"])["topics"] == ["api-key.created"]


def test_subscribe_repairs_edited_headers_in_place_with_update_dto_fields_only(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")
    hook = keytrail_hooks(fake)[0]
    fake.state.patch_webhook(hook["id"], name="renamed", customHeaders={"X-Keytrail-Token": "stale"})

    code, report, _ = cli.json("subscribe", "--no-ping")

    assert code == 0
    assert [c["action"] for c in report["changes"] if c["webhook_id"] == hook["id"]] == ["update"]
    repaired = fake.state.get_webhook(None, hook["id"])
    assert repaired["name"] == "keytrail"
    assert repaired["customHeaders"] == {"X-Keytrail-Token": TOKEN}
    [patch] = fake.state.requests_to("PATCH", f"/webhooks/{hook['id']}")
    assert sorted(patch.body) == ["customHeaders", "name", "url"]  # UpdateWebhookDTO, nothing else
    assert len(keytrail_hooks(fake)) == 2


def test_subscribe_replaces_a_paused_subscription_new_one_first(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")
    hook = keytrail_hooks(fake)[0]
    fake.state.patch_webhook(hook["id"], status="paused", customHeaders={"X-Keytrail-Token": "stale"})

    code, report, _ = cli.json("subscribe", "--no-ping")

    assert code == 0
    [replaced] = [c for c in report["changes"] if c["project_id"] == hook["projectId"]]
    assert replaced["action"] == "replace"
    [now] = [h for h in keytrail_hooks(fake) if h["projectId"] == hook["projectId"]]
    assert now["id"] == replaced["webhook_id"] != hook["id"]
    assert (now["status"], now["customHeaders"]) == ("live", {"X-Keytrail-Token": TOKEN})
    writes = [(r.method, r.path) for r in fake.state.requests if r.method in ("POST", "DELETE")]
    assert writes[-2:] == [("POST", "/webhooks"), ("DELETE", f"/webhooks/{hook['id']}")]
    assert len(keytrail_hooks(fake)) == 2


def test_subscribe_removes_duplicate_keytrail_subscriptions(fake: FakeAuthApi, cli_for: Any) -> None:
    url = hook_url("http://127.0.0.1:9", "acme")
    fake.state.add_webhook("proj-1", url, name="keytrail", custom_headers={"X-Keytrail-Token": TOKEN})
    fake.state.add_webhook("proj-1", url, name="keytrail", custom_headers={"X-Keytrail-Token": TOKEN})

    code, report, _ = cli_for(fake).json("subscribe", "--no-ping")

    assert code == 0
    assert sorted(c["action"] for c in report["changes"] if c["project_id"] == "proj-1") == [
        "delete-duplicate",
        "unchanged",
    ]
    assert len([h for h in keytrail_hooks(fake) if h["projectId"] == "proj-1"]) == 1


def test_topics_option_limits_the_subscription(fake: FakeAuthApi, cli_for: Any) -> None:
    code, _, _ = cli_for(fake).json("subscribe", "--no-ping", "--topics", "api-key.created", "api-key.deleted")

    assert code == 0
    assert {tuple(h["topics"]) for h in keytrail_hooks(fake)} == {("api-key.created", "api-key.deleted")}


def test_projects_come_from_the_account_when_none_are_configured(fake: FakeAuthApi, cli_for: Any) -> None:
    code, report, _ = cli_for(fake, projects=()).json("subscribe", "--no-ping")

    assert code == 0
    assert sorted(c["project_id"] for c in report["changes"]) == list(PROJECTS)


# Drift.


def test_check_reports_paused_and_deleted_subscriptions_and_exits_2(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")
    paused, deleted = sorted(keytrail_hooks(fake), key=lambda h: h["projectId"])
    fake.state.pause_webhook(paused["id"])
    fake.state.delete_webhook(deleted["id"])

    code, report, err = cli.json("subscribe", "--check")

    assert code == 2
    assert report["in_sync"] is False
    problems = {d["project_id"]: d["problems"] for d in report["drift"]}
    assert problems == {"proj-1": ["paused"], "proj-2": ["missing"]}
    assert err.count("\n") == 1
    assert "drift in 2 subscription(s)" in err
    assert fake.state.get_webhook(None, paused["id"])["status"] == "paused"


def test_check_reports_changed_topics_and_headers(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")
    hook = keytrail_hooks(fake)[0]
    fake.state.patch_webhook(hook["id"], topics=["api-key.created"], customHeaders={})

    code, out, _ = cli("subscribe", "--check", "--format", "table")

    assert code == 2
    assert "topics changed" in out
    assert "customHeaders changed" in out


def test_check_after_subscribe_is_in_sync(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")

    code, report, err = cli.json("subscribe", "--check")

    assert (code, report, err) == (0, {"in_sync": True, "drift": []}, "")


def test_scheduled_check_logs_an_alert_per_drift(fake: FakeAuthApi, cli_for: Any, tmp_path: Path) -> None:
    cli_for(fake)("subscribe", "--no-ping")
    fake.state.pause_webhook(keytrail_hooks(fake)[0]["id"])
    settings = settings_from_mapping(settings_data(tmp_path, fake.url, "http://127.0.0.1:9"), {})

    configure_logging("info", stream=sys.__stderr__)  # the command above left it at "error"
    with structlog.testing.capture_logs() as logs:
        drifts = check_drift_all(settings)

    assert [d.problems for d in drifts] == [("paused",)]
    alerts = [e for e in logs if e["event"] == "subscription_drift_detected"]
    assert [(a["tenant"], a["problems"]) for a in alerts] == [("acme", ["paused"])]


def test_scheduled_check_logs_a_failed_tenant_and_goes_on(fake: FakeAuthApi, tmp_path: Path) -> None:
    data = settings_data(tmp_path, fake.url, "http://127.0.0.1:9")
    data["tenants"]["other"] = {**tenant_table("http://127.0.0.1:9"), "access_key": "wrong"}
    settings = settings_from_mapping(data, {})

    configure_logging("info", stream=sys.__stderr__)  # the command above left it at "error"
    with structlog.testing.capture_logs() as logs:
        drifts = check_drift_all(settings)

    assert {d.project_id for d in drifts} == set(PROJECTS)
    failed = [e for e in logs if e["event"] == "subscription_check_failed"]
    assert [e["tenant"] for e in failed] == ["other"]
    assert "HTTP 401" in failed[0]["error"]


# The ping, through the real receiver.


def test_ping_round_trip_through_the_receiver(
    fake: FakeAuthApi, cli_for: Any, receiver: Any, store: redis.Redis
) -> None:
    public_url = receiver()

    code, report, err = cli_for(fake, public_url).json("subscribe", "--ping-timeout", "10")

    assert code == 0, err
    [ping] = report["pings"]
    assert ping["seen"] is True
    assert ping["round_trip_ms"] >= 0
    assert store.get(f"keytrail:ping:acme:{ping['marker']}") is not None
    [sent] = fake.state.requests_to("POST", "/webhooks/ping")
    assert sent.body["url"] == f"{public_url}/hooks/theauthapi/acme"
    assert sent.body["body"]["keytrail_ping"] == ping["marker"]
    assert sent.body["headers"]["X-Keytrail-Token"] == TOKEN
    assert sent.body["customHeaders"]["X-Keytrail-Token"] == TOKEN


def test_ping_prints_the_round_trip_time(fake: FakeAuthApi, cli_for: Any, receiver: Any) -> None:
    code, out, _ = cli_for(fake, receiver())("subscribe", "--format", "table")

    assert code == 0
    assert "ping: tenant acme: seen by the receiver in" in out


@pytest.mark.parametrize("field", ["headers", "customHeaders"])
def test_ping_works_whichever_field_the_api_reads_headers_from(
    start_fake: FakeFactory, cli_for: Any, receiver: Any, field: str
) -> None:
    fake = start_fake(ping_headers_field=field)

    code, report, err = cli_for(fake, receiver()).json("subscribe")

    assert code == 0, err
    assert [p["seen"] for p in report["pings"]] == [True]


def test_ping_and_subscribe_work_when_the_api_forbids_properties_outside_each_dto(
    start_fake: FakeFactory, cli_for: Any, receiver: Any
) -> None:
    fake = start_fake(forbid_unknown_properties=True)

    code, report, err = cli_for(fake, receiver()).json("subscribe")

    assert code == 0, err
    assert [p["seen"] for p in report["pings"]] == [True]
    refused, accepted = fake.state.requests_to("POST", "/webhooks/ping")
    assert "customHeaders" in refused.body
    assert sorted(accepted.body) == ["body", "headers", "httpMethod", "url"]  # TestWebhookDTO


def test_ping_with_a_token_the_receiver_does_not_know_names_a_token_mismatch(
    fake: FakeAuthApi, cli_for: Any, receiver: Any
) -> None:
    public_url = receiver(token="the-receiver-has-another-token")

    code, out, err = cli_for(fake, public_url)("subscribe", "--ping-timeout", "1", "--format", "json")

    assert code == 1
    assert err.count("\n") == 1
    assert "token mismatch" in err
    assert TOKEN not in err
    assert json.loads(out)["pings"][0]["seen"] is False


def test_ping_to_a_receiver_that_is_down_names_it(fake: FakeAuthApi, cli_for: Any, store: redis.Redis) -> None:
    code, _, err = cli_for(fake, "http://127.0.0.1:9")("subscribe", "--ping-timeout", "0.5", "--format", "json")

    assert code == 1
    assert err.count("\n") == 1
    assert "receiver down" in err
    assert "http://127.0.0.1:9/hooks/theauthapi/acme" in err


def test_after_subscribe_the_fakes_deliveries_are_accepted_by_the_receiver(
    fake: FakeAuthApi, cli_for: Any, receiver: Any
) -> None:
    public_url = receiver()
    assert cli_for(fake, public_url)("subscribe")[0] == 0

    with httpx.Client(base_url=fake.url, headers={"x-api-key": ACCESS_KEY}) as http:
        key = http.post("/api-keys", json={"name": "first", "projectId": "proj-1"}).json()["key"]
        http.post(f"/api-keys/{key}/rotate")
    assert fake.state.wait_for_deliveries(10)

    attempts = [(a.topic, a.status) for a in fake.state.deliveries if a.url == hook_url(public_url, "acme")]
    assert attempts == [("api-key.created", 202), ("api-key.created", 202), ("api-key.deleted", 202)]


# Unsubscribe.


def test_unsubscribe_deletes_only_keytrails_subscriptions(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    foreign = [
        fake.state.add_webhook("proj-1", "https://crm.example.com/hooks"),
        fake.state.add_webhook("proj-2", "http://127.0.0.1:9/hooks/theauthapi/other-tenant"),
    ]
    cli("subscribe", "--no-ping")

    code, report, _ = cli.json("unsubscribe")

    assert code == 0
    assert len(report["deleted"]) == 2
    assert sorted(h["id"] for h in fake.state.webhooks_in()) == sorted(h["id"] for h in foreign)


def test_unsubscribe_dry_run_deletes_nothing(fake: FakeAuthApi, cli_for: Any) -> None:
    cli = cli_for(fake)
    cli("subscribe", "--no-ping")

    code, report, _ = cli.json("unsubscribe", "--dry-run")

    assert code == 0
    assert [r["action"] for r in report["deleted"]] == ["would delete", "would delete"]
    assert len(keytrail_hooks(fake)) == 2


# Where the spec and the vendor's samples disagree, both readings work.


@pytest.mark.parametrize("strict", [False, True], ids=["samples-projectId-only", "spec-all-three-required"])
def test_listing_subscriptions_works_with_either_reading_of_the_spec(
    start_fake: FakeFactory, cli_for: Any, strict: bool
) -> None:
    fake = start_fake(strict_webhook_list=strict)
    cli = cli_for(fake)

    assert cli("subscribe", "--no-ping")[0] == 0
    code, report, _ = cli.json("subscribe", "--no-ping")

    assert code == 0
    assert {c["action"] for c in report["changes"]} == {"unchanged"}
    assert len(keytrail_hooks(fake)) == 2
    listed = fake.state.requests_to("GET", "/webhooks")
    assert listed[0].query == {"projectId": "proj-1", "accountId": ACCOUNT}
    assert any("topic" in r.query for r in listed) is strict


@pytest.mark.parametrize("shape", ["strings", "objects"])
def test_topics_are_read_from_strings_or_objects(start_fake: FakeFactory, cli_for: Any, shape: str) -> None:
    fake = start_fake(topics_shape=shape)

    code, _, err = cli_for(fake).json("subscribe", "--no-ping")

    assert code == 0
    assert err == ""
    assert {frozenset(h["topics"]) for h in keytrail_hooks(fake)} == {frozenset(DEFAULT_TOPICS)}


def test_missing_topics_endpoint_falls_back_to_the_known_topics_with_a_warning(
    start_fake: FakeFactory, cli_for: Any
) -> None:
    fake = start_fake(topics_shape="missing")

    code, report, err = cli_for(fake).json("subscribe", "--no-ping")

    assert code == 0
    assert "warning" in err
    assert "8 known topics" in err
    assert report["warnings"]
    assert {frozenset(h["topics"]) for h in keytrail_hooks(fake)} == {frozenset(DEFAULT_TOPICS)}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (["a.b", "c.d"], ("a.b", "c.d")),
        ([{"name": "a.b"}, {"topic": "c.d"}, {"id": 3}], ("a.b", "c.d")),
        ({"topics": ["a.b"]}, ("a.b",)),
        ("a.b", ()),
        (None, ()),
    ],
)
def test_parse_topics_accepts_the_plausible_shapes(body: Any, expected: tuple[str, ...]) -> None:
    assert parse_topics(body) == expected


# The API's errors: one clear line, after bounded retries where retrying makes sense.


@pytest.mark.parametrize(
    ("status", "count", "expected"),
    [
        (401, 1, "HTTP 401 Unauthorized to GET /webhooks/topics (check tenants.acme.access_key)"),
        (
            403,
            1,
            "HTTP 403 Forbidden to GET /webhooks/topics: Invalid roles for this account"
            " (the access key may not manage tenants.acme's account or projects)",
        ),
        (429, 3, "HTTP 429 Too Many Requests to GET /webhooks/topics: Too many requests (after 3 attempts)"),
        (500, 3, "HTTP 500 Internal Server Error to GET /webhooks/topics: Internal server error (after 3 attempts)"),
    ],
)
def test_api_errors_give_one_clear_line(
    fake: FakeAuthApi, cli_for: Any, status: int, count: int, expected: str
) -> None:
    fake.state.fail_next(status, count, retry_after=0 if status == 429 else None)

    code, out, err = cli_for(fake)("subscribe", "--no-ping")

    assert code == 1
    assert out == ""
    assert err == f"keytrail: tenant acme: The Auth API answered {expected}\n"
    assert ACCESS_KEY not in err


def test_a_transient_5xx_is_retried(fake: FakeAuthApi, cli_for: Any) -> None:
    fake.state.fail_next(503, 2)

    code, report, _ = cli_for(fake).json("subscribe", "--no-ping")

    assert code == 0
    assert len(report["changes"]) == 2


def test_a_wrong_access_key_gets_the_apis_message(fake: FakeAuthApi, tmp_path: Path, capsys: Any) -> None:
    data = settings_data(tmp_path, fake.url, "http://127.0.0.1:9")
    data["tenants"]["acme"]["access_key"] = "live_access_not_known"
    cli = Cli(write_config(tmp_path / "k.toml", data), capsys)

    code, _, err = cli("subscribe", "--no-ping")

    assert code == 1
    assert "HTTP 401" in err
    assert "Invalid access key" in err
    assert "live_access_not_known" not in err


def test_unreachable_api_gives_one_line(tmp_path: Path, capsys: Any) -> None:
    data = settings_data(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    cli = Cli(write_config(tmp_path / "k.toml", data), capsys)

    code, _, err = cli("subscribe", "--no-ping")

    assert code == 1
    assert err.count("\n") == 1
    assert "The Auth API at http://127.0.0.1:9 is unreachable" in err


def test_a_tenant_without_public_url_is_named(fake: FakeAuthApi, tmp_path: Path, capsys: Any) -> None:
    data = settings_data(tmp_path, fake.url, "http://127.0.0.1:9")
    del data["tenants"]["acme"]["public_url"]
    cli = Cli(write_config(tmp_path / "k.toml", data), capsys)

    assert cli("subscribe") == (1, "", "keytrail: tenant acme: set tenants.acme.public_url to subscribe\n")


def test_an_unknown_tenant_is_named(fake: FakeAuthApi, cli_for: Any) -> None:
    code, _, err = cli_for(fake)("subscribe", "--tenant", "nobody")

    assert code == 1
    assert "no tenant named 'nobody'" in err


# The client on its own, driven by httpx.MockTransport handlers.


def client_for(handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float]) -> AuthApiClient:
    return AuthApiClient(
        "https://api.example.test", Secret(ACCESS_KEY), transport=httpx.MockTransport(handler), sleep=sleeps.append
    )


def test_client_sends_the_access_key_and_honours_retry_after() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "2"}, json={"statusCode": 429, "message": "slow down"})
        return httpx.Response(200, json=["api-key.created"])

    sleeps: list[float] = []
    with client_for(handler, sleeps) as client:
        assert client.topics() == ["api-key.created"]

    assert sleeps == [2.0]
    assert [r.headers["x-api-key"] for r in seen] == [ACCESS_KEY, ACCESS_KEY]


def test_client_reads_the_decimal_retry_after_seconds_header() -> None:
    answers = iter([httpx.Response(429, headers={"retry-after-seconds": "0.25"}), httpx.Response(200, json=[])])
    sleeps: list[float] = []
    with client_for(lambda request: next(answers), sleeps) as client:
        client.topics()

    assert sleeps == [0.25]


def test_client_joins_a_list_of_validation_messages_into_one_line() -> None:
    body = {"statusCode": 400, "message": ["name should not be empty", "url must be a URL address"], "error": "x"}
    with client_for(lambda request: httpx.Response(400, json=body), []) as client, pytest.raises(AuthApiError) as err:
        client.create_webhook({})

    assert str(err.value) == (
        "The Auth API answered HTTP 400 Bad Request to POST /webhooks: "
        "name should not be empty; url must be a URL address"
    )
    assert err.value.status == 400


def test_client_does_not_retry_a_create_that_failed_with_5xx() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(502, text="<html>bad gateway</html>")

    with client_for(handler, []) as client, pytest.raises(AuthApiError) as err:
        client.create_webhook({"name": "keytrail"})

    assert len(calls) == 1
    assert str(err.value) == "The Auth API answered HTTP 502 Bad Gateway to POST /webhooks: <html>bad gateway</html>"


def test_client_never_repeats_the_access_key_in_an_error() -> None:
    body = {"statusCode": 401, "message": f"key {ACCESS_KEY} is revoked"}
    with client_for(lambda request: httpx.Response(401, json=body), []) as client, pytest.raises(AuthApiError) as err:
        client.topics()

    assert ACCESS_KEY not in str(err.value)
    assert "[access key] is revoked" in str(err.value)
