"""The fake The Auth API: its management API answers like the spec, and it delivers webhooks like the real service."""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from harness import start_fake_authapi
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from authapi.fake import FakeAuthApi, LoopbackServer
from authapi.fake.strictness import ChangeFault
from config.settings import DEFAULT_TOPICS

ACCESS_KEY = "test_access_fake_0123456789"
ACCOUNT = "acct-1"


@dataclass
class Capture:
    """A loopback webhook target that records what arrives; answers 500 to the first `fail_first` requests."""

    fail_first: int = 0
    received: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = json.loads(await request.body())
            with self.lock:
                self.received.append((dict(request.headers), body))
                failing = len(self.received) <= self.fail_first
            return JSONResponse({}, status_code=500 if failing else 202)

        return Starlette(routes=[Route("/hook", hook, methods=["POST", "PUT"])])

    def bodies(self) -> list[Any]:
        with self.lock:
            return [body for _, body in self.received]


def start(stack: ExitStack, **options: Any) -> FakeAuthApi:
    fake: FakeAuthApi = start_fake_authapi(stack, ACCESS_KEY, ACCOUNT, ["proj-1", "proj-2"], **options)
    return fake


def capture(stack: ExitStack, fail_first: int = 0) -> Capture:
    target = Capture(fail_first=fail_first)
    target.url = stack.enter_context(LoopbackServer(target.app())).url + "/hook"
    return target


def api(fake: FakeAuthApi, key: str = ACCESS_KEY) -> httpx.Client:
    return httpx.Client(base_url=fake.url, headers={"x-api-key": key}, timeout=5)


def subscribe(http: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    body = {
        "name": "capture",
        "url": url,
        "topics": list(DEFAULT_TOPICS),
        "httpMethod": "POST",
        "projectId": "proj-1",
        "customHeaders": {"X-Keytrail-Token": "tok"},
        **fields,
    }
    response = http.post("/webhooks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# Deliveries.


def test_key_create_rotate_delete_are_delivered_with_topic_signature_and_custom_headers(stack: ExitStack) -> None:
    fake, target = start(stack), capture(stack)
    with api(fake) as http:
        hook = subscribe(http, target.url)
        created = http.post("/api-keys", json={"name": "ci key", "projectId": "proj-1"}).json()
        rotated = http.post(f"/api-keys/{created['key']}/rotate").json()
        assert http.delete(f"/api-keys/{rotated['key']}").json() is True
    assert fake.state.wait_for_deliveries(10)

    bodies = target.bodies()
    assert [(b["topic"], b["data"]["key"]) for b in bodies] == [
        ("api-key.created", created["key"]),
        ("api-key.created", rotated["key"]),
        ("api-key.deleted", created["key"]),
        ("api-key.deleted", rotated["key"]),
    ]
    assert len({b["id"] for b in bodies}) == 4
    assert all(b["projectId"] == "proj-1" and b["accountId"] == ACCOUNT for b in bodies)
    for headers, _ in target.received:
        assert headers["theauthapi-signature"] == fake.state.hook_secrets[hook["id"]]
        assert headers["x-keytrail-token"] == "tok"
        assert headers["content-type"] == "application/json"


def test_only_live_subscriptions_of_the_project_with_the_topic_get_the_event(stack: ExitStack) -> None:
    fake = start(stack)
    wanted, paused, other_project, other_topic = (capture(stack) for _ in range(4))
    with api(fake) as http:
        subscribe(http, wanted.url)
        subscribe(http, paused.url, status="paused")
        subscribe(http, other_project.url, projectId="proj-2")
        subscribe(http, other_topic.url, topics=["project.updated"])
        http.post("/api-keys", json={"name": "k", "projectId": "proj-1"})
    assert fake.state.wait_for_deliveries(10)

    assert [b["topic"] for b in wanted.bodies()] == ["api-key.created"]
    assert paused.bodies() == other_project.bodies() == other_topic.bodies() == []


def test_project_access_key_and_first_use_changes_are_delivered(stack: ExitStack) -> None:
    fake, target = start(stack), capture(stack)
    with api(fake) as http:
        subscribe(http, target.url)
        key = http.post("/api-keys", json={"name": "k", "projectId": "proj-1"}).json()["key"]
        assert http.post(f"/api-keys/auth/{key}").status_code == 200
        assert http.post(f"/api-keys/auth/{key}").status_code == 200
        assert http.patch("/projects/proj-1", json={"name": "renamed"}).status_code == 200
        token = http.post("/access-keys", json={"name": "ci", "projectId": "proj-1"}).json()["key"]
        assert http.delete(f"/access-keys/{token}").json() is True
    assert fake.state.wait_for_deliveries(10)

    assert [b["topic"] for b in target.bodies()] == [
        "api-key.created",
        "api-key.firstUsed",
        "project.updated",
        "access-key.created",
        "access-key.deleted",
    ]
    assert target.bodies()[3]["data"]["key"] == token


def test_a_failing_target_is_retried_a_bounded_number_of_times(stack: ExitStack) -> None:
    fake, flaky = start(stack, delivery_attempts=3, delivery_backoff_seconds=0.01), capture(stack, fail_first=1)
    dead = capture(stack, fail_first=100)
    with api(fake) as http:
        subscribe(http, flaky.url)
        subscribe(http, dead.url)
        http.post("/api-keys", json={"name": "k", "projectId": "proj-1"})
    assert fake.state.wait_for_deliveries(10)

    first, second = flaky.bodies()
    assert first == second
    assert len(dead.bodies()) == 3
    statuses = [(a.url, a.attempt, a.status) for a in fake.state.deliveries]
    assert (flaky.url, 2, 202) in statuses
    assert [s for u, _, s in statuses if u == dead.url] == [500, 500, 500]


def test_duplicates_carry_the_same_event_id(stack: ExitStack) -> None:
    fake, target = start(stack, duplicates_every=1), capture(stack)
    with api(fake) as http:
        subscribe(http, target.url)
        http.post("/api-keys", json={"name": "k", "projectId": "proj-1"})
    assert fake.state.wait_for_deliveries(10)

    first, second = target.bodies()
    assert first == second


def test_out_of_order_swaps_consecutive_events(stack: ExitStack) -> None:
    fake, target = start(stack, out_of_order=True), capture(stack)
    with api(fake) as http:
        subscribe(http, target.url)
        key = http.post("/api-keys", json={"name": "k", "projectId": "proj-1"}).json()["key"]
        http.patch(f"/api-keys/{key}", json={"name": "k2"})
    assert fake.state.wait_for_deliveries(10)

    assert [b["topic"] for b in target.bodies()] == ["api-key.updated", "api-key.created"]


def test_bare_entity_sends_just_the_key(stack: ExitStack) -> None:
    fake, target = start(stack, bare_entity=True), capture(stack)
    with api(fake) as http:
        subscribe(http, target.url)
        key = http.post("/api-keys", json={"name": "k", "projectId": "proj-1"}).json()["key"]
    assert fake.state.wait_for_deliveries(10)

    [body] = target.bodies()
    assert body["key"] == key
    assert "topic" not in body


def test_ping_really_sends_the_body_and_headers(stack: ExitStack) -> None:
    fake, target = start(stack), capture(stack)
    with api(fake) as http:
        answer = http.post(
            "/webhooks/ping",
            json={"url": target.url, "httpMethod": "PUT", "body": {"hello": 1}, "customHeaders": {"X-A": "b"}},
        )

    assert answer.status_code == 200
    assert answer.json()["status"] == 202
    [(headers, body)] = target.received
    assert body == {"hello": 1}
    assert headers["x-a"] == "b"
    assert "theauthapi-signature" not in headers


# The management API's answers.


def test_requests_need_a_known_access_key(stack: ExitStack) -> None:
    fake = start(stack)
    with httpx.Client(base_url=fake.url) as http:
        missing = http.get("/webhooks/topics")
        wrong = http.get("/webhooks/topics", headers={"x-api-key": "live_access_nope"})

    assert missing.status_code == wrong.status_code == 401
    assert wrong.json() == {"statusCode": 401, "message": "Invalid access key", "error": "Unauthorized"}


def test_missing_dto_fields_get_a_nestjs_400_listing_each(stack: ExitStack) -> None:
    fake = start(stack)
    with api(fake) as http:
        response = http.post("/webhooks", json={"url": "not a url", "topics": []})

    assert response.status_code == 400
    assert response.json() == {
        "statusCode": 400,
        "message": [
            "name should not be empty",
            "url must be a URL address",
            "topics must contain at least 1 elements",
            "httpMethod should not be empty",
        ],
        "error": "Bad Request",
    }


def test_webhook_crud_round_trip(stack: ExitStack) -> None:
    fake = start(stack)
    with api(fake) as http:
        hook = subscribe(http, "https://example.test/h")
        patched = http.patch(f"/webhooks/{hook['id']}", json={"status": "paused"}).json()
        listed = http.get("/webhooks", params={"projectId": "proj-1"}).json()
        deleted = http.delete(f"/webhooks/{hook['id']}")
        gone = http.get(f"/webhooks/{hook['id']}")

    assert patched["status"] == "paused"
    assert [h["id"] for h in listed] == [hook["id"]]
    assert deleted.json() is True
    assert gone.status_code == 404


def test_api_key_list_filters(stack: ExitStack) -> None:
    fake = start(stack)
    with api(fake) as http:
        http.post("/api-keys", json={"name": "a", "projectId": "proj-1", "customUserId": "u1"})
        b = http.post("/api-keys", json={"name": "B", "projectId": "proj-1"}).json()
        http.post("/api-keys", json={"name": "c", "projectId": "proj-2"})
        http.delete(f"/api-keys/{b['key']}")
        no_project = http.get("/api-keys")

        def names(**params: str) -> list[str]:
            return [k["name"] for k in http.get("/api-keys", params={"projectId": "proj-1", **params}).json()]

        assert names() == ["a", "B"]
        assert names(isActive="true") == ["a"]
        assert names(customUserId="null") == ["B"]
        assert names(name="b") == ["B"]
        assert names(limit="1", offset="1") == ["B"]
        assert http.get(f"/api-keys/{b['key']}").status_code == 404
        reactivated = http.patch(f"/api-keys/{b['key']}/reactivate").json()

    assert no_project.status_code == 400  # an account-level access key must name the project
    assert reactivated["isActive"] is True


def test_a_project_scoped_access_key_cannot_touch_another_project(stack: ExitStack) -> None:
    fake = start(stack)
    fake.state.seed("test_access_scoped", ACCOUNT, ["proj-2"], project_scoped=True)
    with api(fake, "test_access_scoped") as http:
        other = http.post("/api-keys", json={"name": "x", "projectId": "proj-1"})
        own = http.post("/api-keys", json={"name": "x"})

    assert other.status_code == 403
    assert own.status_code == 201
    assert own.json()["projectId"] == "proj-2"


def test_projects_accounts_and_access_keys(stack: ExitStack) -> None:
    fake = start(stack)
    with api(fake) as http:
        assert [p["id"] for p in http.get("/projects", params={"accountId": ACCOUNT}).json()] == ["proj-1", "proj-2"]
        assert http.get("/projects").status_code == 400
        created = http.post("/projects", json={"name": "p3", "accountId": ACCOUNT, "env": "test"})
        assert created.status_code == 201
        assert http.delete(f"/projects/{created.json()['id']}").json() is True
        assert http.get(f"/accounts/{ACCOUNT}").json()["id"] == ACCOUNT
        assert http.get("/accounts/someone-else").status_code == 404
        keys = http.get("/access-keys", params={"accountId": ACCOUNT}).json()
        assert [k["key"] for k in keys] == [ACCESS_KEY]


def test_injected_faults_answer_before_anything_else(stack: ExitStack) -> None:
    fake = start(stack)
    fake.state.fail_next(429, 2, retry_after=1.5)
    with api(fake) as http:
        first, second, third = (http.get("/webhooks/topics") for _ in range(3))

    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["retry-after"] == "1.5"
    assert first.json()["message"] == "Too many requests"


def test_admin_surface_pauses_deletes_and_shows_secrets(stack: ExitStack) -> None:
    fake = start(stack, signing_secret="fixed-secret")
    with api(fake) as http:
        hook = subscribe(http, "https://example.test/h")
        with httpx.Client(base_url=fake.url) as admin:
            assert admin.post(f"/__fake__/webhooks/{hook['id']}/pause").status_code == 200
            [shown] = admin.get("/__fake__/webhooks").json()
            assert admin.delete(f"/__fake__/webhooks/{hook['id']}").status_code == 200

    assert shown["status"] == "paused"
    assert shown["secret"] == "fixed-secret"
    assert fake.state.webhooks_in() == []


# Stricter readings of the webhook endpoints (authapi.fake.strictness).


def test_patch_whitelist_ignores_fields_outside_update_dto_and_answers_200(stack: ExitStack) -> None:
    fake = start(stack, patch_whitelist=True)
    with api(fake) as http:
        hook = subscribe(http, "https://example.test/h", topics=["api-key.created"])
        answer = http.patch(
            f"/webhooks/{hook['id']}",
            json={"name": "n2", "url": hook["url"], "topics": list(DEFAULT_TOPICS), "status": "paused"},
        )
        without_name = http.patch(f"/webhooks/{hook['id']}", json={"url": hook["url"]})

    assert answer.status_code == 200
    stored = fake.state.get_webhook(None, hook["id"])
    assert (stored["name"], stored["topics"], stored["status"]) == ("n2", ["api-key.created"], "live")
    assert without_name.status_code == 400
    assert without_name.json()["message"] == ["name should not be empty"]


def test_forbid_unknown_properties_answers_a_nestjs_400_naming_each(stack: ExitStack) -> None:
    fake = start(stack, forbid_unknown_properties=True)
    with api(fake) as http:
        created = http.post(
            "/webhooks",
            json={"name": "n", "url": "https://example.test/h", "topics": ["api-key.created"], "httpMethod": "POST",
                  "projectId": "proj-1", "colour": "red"},
        )  # fmt: skip
        hook = subscribe(http, "https://example.test/h")
        patched = http.patch(f"/webhooks/{hook['id']}", json={"name": "n", "url": hook["url"], "status": "paused"})
        pinged = http.post(
            "/webhooks/ping", json={"url": "http://127.0.0.1:9/", "httpMethod": "POST", "customHeaders": {}}
        )

    assert created.status_code == 400
    assert created.json() == {
        "statusCode": 400,
        "message": ["property colour should not exist"],
        "error": "Bad Request",
    }
    assert patched.status_code == 400
    assert patched.json()["message"] == ["property status should not exist"]
    assert fake.state.get_webhook(None, hook["id"])["status"] == "live"
    assert pinged.json()["message"] == ["property customHeaders should not exist"]


def test_account_wide_hook_is_listed_with_every_project_and_gets_their_events(stack: ExitStack) -> None:
    fake = start(stack, account_wide_hooks=True)
    target = capture(stack)
    with api(fake) as http:
        hook = subscribe(http, target.url, projectId=None, accountId=ACCOUNT)
        listed = [http.get("/webhooks", params={"projectId": p}).json() for p in ("proj-1", "proj-2")]
        for project in ("proj-1", "proj-2"):
            http.post("/api-keys", json={"name": "k", "projectId": project})
    assert fake.state.wait_for_deliveries(10)

    assert hook["projectId"] is None
    assert hook["accountId"] == ACCOUNT
    assert [[h["id"] for h in found] for found in listed] == [[hook["id"]], [hook["id"]]]
    assert sorted(body["projectId"] for body in target.bodies()) == ["proj-1", "proj-2"]


@pytest.mark.parametrize("kind", ["error", "drop"])
def test_a_fault_after_change_strikes_once_the_change_is_made(stack: ExitStack, kind: ChangeFault) -> None:
    fake = start(stack)
    fake.state.fail_after_next_change(kind)
    with api(fake) as http:
        if kind == "error":
            answer = http.post("/webhooks", json={**_hook_body(), "name": "made"})
            assert answer.status_code == 500
        else:
            with pytest.raises(httpx.RemoteProtocolError):
                http.post("/webhooks", json={**_hook_body(), "name": "made"})
        listed = http.get("/webhooks", params={"projectId": "proj-1"}).json()

    assert [h["name"] for h in listed] == ["made"]


def test_fault_after_change_every_nth_change_counts_only_changes(stack: ExitStack) -> None:
    fake = start(stack, fault_after_change="error", fault_after_change_every=2)
    with api(fake) as http:
        first = http.post("/webhooks", json=_hook_body())
        http.get("/webhooks", params={"projectId": "proj-1"})
        second = http.post("/webhooks", json=_hook_body())

    assert (first.status_code, second.status_code) == (201, 500)
    assert len(fake.state.webhooks_in("proj-1")) == 2


def test_ignored_fields_are_never_stored(stack: ExitStack) -> None:
    fake = start(stack, ignored_webhook_fields=["customHeaders"])
    with api(fake) as http:
        hook = subscribe(http, "https://example.test/h", customHeaders={"X-Keytrail-Token": "tok"})
        http.patch(f"/webhooks/{hook['id']}", json={"customHeaders": {"X-Keytrail-Token": "tok"}})

    assert fake.state.get_webhook(None, hook["id"])["customHeaders"] == {}


def _hook_body() -> dict[str, Any]:
    return {"name": "n", "url": "https://example.test/h", "topics": ["api-key.created"], "httpMethod": "POST",
            "projectId": "proj-1"}  # fmt: skip
