"""A fake The Auth API on loopback: its management API (from the vendor's OpenAPI spec) and the webhook deliveries
that start keytrail's event path, so the whole loop runs with no Auth API account.

What the reference marks UNKNOWN is our own choice here, stated once: the delivery envelope is
`{"id", "topic", "createdAt", "projectId", "accountId", "data"}` (or the bare entity, by switch); a rotate sends
`api-key.created` for the new key then `api-key.deleted` for the old one; unknown DTO fields are ignored.

`FakeState` holds everything and is also the admin surface for tests (pause or delete a subscription, create keys,
inject faults, read deliveries); `create_fake_app(state)` serves it; `FakeAuthApi` runs it on a free port in a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import queue
import secrets
import socket
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal, Self

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from config.settings import DEFAULT_TOPICS

TopicsShape = Literal["strings", "objects", "missing"]
PingHeadersField = Literal["both", "headers", "customHeaders"]
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
FAULT_MESSAGES = {
    401: "Unauthorized",
    403: "Invalid roles for this account",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
Json = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _token(length: int = 32) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


class FakeApiError(Exception):
    """An answer in NestJS's HttpException shape: `{"statusCode", "message", "error"}`."""

    def __init__(self, status: int, message: str | list[str], *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(str(message))
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"statusCode": self.status, "message": self.message, "error": HTTPStatus(self.status).phrase}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _not_found(what: str) -> FakeApiError:
    return FakeApiError(404, f"{what} not found")


FORBIDDEN = "Invalid roles for this account"


# Validation of request DTOs, worded like NestJS's class-validator.

Check = Callable[[str, Any], str | None]


def _string(name: str, value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"{name} must be a string"


def _url(name: str, value: Any) -> str | None:
    ok = isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) > len("https://")
    return None if ok else f"{name} must be a URL address"


def _object(name: str, value: Any) -> str | None:
    return None if isinstance(value, dict) else f"{name} must be an object"


def _headers(name: str, value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return None if ok else f"{name} must be an object of strings"


def _number(name: str, value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return None if ok else f"{name} must be a number conforming to the specified constraints"


def _choice(*allowed: str) -> Check:
    def check(name: str, value: Any) -> str | None:
        return None if value in allowed else f"{name} must be one of the following values: {', '.join(allowed)}"

    return check


def _topics(known: Sequence[str]) -> Check:
    def check(name: str, value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return f"{name} must contain at least 1 elements"
        if not all(isinstance(v, str) for v in value):
            return f"each value in {name} must be a string"
        if unknown := [v for v in value if v not in known]:
            return f"each value in {name} must be one of the following values: {', '.join(known)} (got {unknown[0]})"
        return None

    return check


def validate(body: Mapping[str, Any], rules: Mapping[str, tuple[bool, Check]]) -> None:
    """400 with the list of every problem, the way a NestJS ValidationPipe answers."""
    problems: list[str] = []
    for name, (required, check) in rules.items():
        if body.get(name) is None:
            if required:
                problems.append(f"{name} should not be empty")
            continue
        if (problem := check(name, body[name])) is not None:
            problems.append(problem)
    if problems:
        raise FakeApiError(400, problems)


WEBHOOK_FIELDS: dict[str, Check] = {
    "name": _string,
    "url": _url,
    "topics": _topics(DEFAULT_TOPICS),
    "httpMethod": _choice(*HTTP_METHODS),
    "projectId": _string,
    "accountId": _string,
    "customHeaders": _headers,
    "status": _choice("live", "paused"),
}


# Request DTOs from the spec: field → (required, check).
Rules = dict[str, tuple[bool, Check]]
API_KEY_UPDATE: Rules = {
    "name": (True, _string),
    **dict.fromkeys(("customAccountId", "customUserId", "expiry"), (False, _string)),
    **dict.fromkeys(("customMetaData", "rateLimitConfigs"), (False, _object)),
}
API_KEY_CREATE: Rules = {**API_KEY_UPDATE, "projectId": (False, _string), "key": (False, _string)}
ACCESS_KEY_CREATE: Rules = {
    "name": (True, _string),
    **dict.fromkeys(("accountId", "projectId"), (False, _string)),
    **dict.fromkeys(("rateLimit", "rateLimitTtl"), (False, _number)),
}


@dataclass(frozen=True, slots=True)
class Event:
    """One webhook event; `id` is the GUID a receiver deduplicates on, the same on every redelivery."""

    topic: str
    project_id: str | None
    account_id: str | None
    data: Json
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: str = field(default_factory=_now)

    def envelope(self) -> Json:
        return {
            "id": self.id,
            "topic": self.topic,
            "createdAt": self.created_at,
            "projectId": self.project_id,
            "accountId": self.account_id,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Target:
    webhook_id: str
    url: str
    method: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Delivery:
    event: Event
    targets: tuple[Target, ...]
    copies: int


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One HTTP attempt to deliver one event to one subscription; `status` is None when the request failed."""

    event_id: str
    topic: str
    webhook_id: str
    url: str
    attempt: int
    status: int | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    body: Any


@dataclass(slots=True)
class _Fault:
    status: int
    remaining: int
    retry_after: float | None
    message: str


class FakeState:
    """Accounts, projects, keys and subscriptions in memory, behind one lock, plus the delivery thread.

    Switches: `topics_shape` (strings, objects, or a 404), `strict_webhook_list` (GET /webhooks requires
    accountId, projectId and topic as the spec says), `ping_headers_field` (which DTO field the ping reads its
    headers from), `duplicates_every` (deliver every Nth event twice; 0 never), `out_of_order` (deliver events in
    swapped pairs), `bare_entity` (the body is just the entity), `signing_secret` (one fixed per-hook secret).
    """

    def __init__(
        self,
        *,
        topics_shape: TopicsShape = "strings",
        strict_webhook_list: bool = False,
        ping_headers_field: PingHeadersField = "both",
        duplicates_every: int = 0,
        out_of_order: bool = False,
        bare_entity: bool = False,
        signing_secret: str | None = None,
        delivery_attempts: int = 3,
        delivery_backoff_seconds: float = 0.05,
        delivery_timeout_seconds: float = 5.0,
        out_of_order_hold_seconds: float = 0.3,
    ) -> None:
        self.topics_shape = topics_shape
        self.strict_webhook_list = strict_webhook_list
        self.ping_headers_field = ping_headers_field
        self.duplicates_every = duplicates_every
        self.out_of_order = out_of_order
        self.bare_entity = bare_entity
        self.signing_secret = signing_secret
        self.delivery_attempts = max(1, delivery_attempts)
        self.delivery_backoff_seconds = delivery_backoff_seconds
        self.delivery_timeout_seconds = delivery_timeout_seconds
        self.out_of_order_hold_seconds = out_of_order_hold_seconds
        self.accounts: dict[str, Json] = {}
        self.projects: dict[str, Json] = {}
        self.access_keys: dict[str, Json] = {}
        self.api_keys: dict[str, Json] = {}
        self.webhooks: dict[str, Json] = {}
        self.hook_secrets: dict[str, str] = {}
        self.requests: list[RecordedRequest] = []
        self.deliveries: list[DeliveryAttempt] = []
        self._faults: deque[_Fault] = deque()
        self._events_emitted = 0
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._queue: queue.Queue[Delivery | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None

    # Seeding and the admin surface.

    def seed(
        self,
        access_key: str,
        account_id: str,
        project_ids: Iterable[str] = (),
        *,
        env: str = "live",
        project_scoped: bool = False,
    ) -> None:
        """An account with projects and an access key for them (account-level unless `project_scoped`)."""
        with self._lock:
            self.accounts.setdefault(account_id, {**_audit_base(_now()), "id": account_id, "name": account_id})
            ids = list(project_ids)
            for project_id in ids:
                self.projects.setdefault(
                    project_id, _project_entity(project_id, f"project {project_id}", account_id, env)
                )
            scope = ids[0] if project_scoped and ids else None
            self.access_keys[access_key] = _access_key_entity(access_key, "seeded access key", account_id, scope, {})

    def fail_next(
        self, status: int, count: int = 1, *, retry_after: float | None = None, message: str | None = None
    ) -> None:
        """The next `count` API requests (admin routes excluded) answer `status` instead of being served."""
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, message or FAULT_MESSAGES.get(status, "Error")))

    def admin_fault(self, body: Mapping[str, Any]) -> None:
        validate(body, {"status": (True, _number), "count": (False, _number), "retryAfter": (False, _number)})
        self.fail_next(int(body["status"]), int(body.get("count") or 1), retry_after=body.get("retryAfter"))

    def admin_webhooks(self) -> list[Json]:
        return [{**hook, "secret": self.hook_secrets[hook["id"]]} for hook in self.webhooks_in()]

    def admin_deliveries(self) -> list[Json]:
        with self._lock:
            return [dataclasses.asdict(attempt) for attempt in self.deliveries]

    def pause_webhook(self, webhook_id: str) -> None:
        self.patch_webhook(webhook_id, status="paused")

    def patch_webhook(self, webhook_id: str, **fields: Any) -> None:
        """Change a subscription behind keytrail's back (drift)."""
        with self._lock:
            if webhook_id not in self.webhooks:
                raise _not_found("Webhook")
            self.webhooks[webhook_id].update(fields, updatedAt=_now())

    def delete_webhook(self, webhook_id: str) -> None:
        with self._lock:
            if self.webhooks.pop(webhook_id, None) is None:
                raise _not_found("Webhook")

    def add_webhook(
        self,
        project_id: str,
        url: str,
        *,
        name: str = "someone else's hook",
        topics: Sequence[str] = DEFAULT_TOPICS,
        custom_headers: Mapping[str, str] | None = None,
        status: str = "live",
    ) -> Json:
        body = {
            "name": name,
            "url": url,
            "topics": list(topics),
            "httpMethod": "POST",
            "projectId": project_id,
            "customHeaders": dict(custom_headers or {}),
            "status": status,
        }
        return self.create_webhook(None, body)

    def webhooks_in(self, project_id: str | None = None) -> list[Json]:
        with self._lock:
            return [dict(h) for h in self.webhooks.values() if project_id in (None, h.get("projectId"))]

    def wait_for_deliveries(self, timeout: float = 10.0) -> bool:
        """Block until every emitted event has been delivered or given up on; False if `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # Access control.

    def authenticate(self, presented: str | None) -> Json:
        if not presented:
            raise FakeApiError(401, "missing access key")
        with self._lock:
            found = self.access_keys.get(presented)
            if found is None or not found["isActive"]:
                raise FakeApiError(401, "Invalid access key")
            return found

    def take_fault(self) -> None:
        with self._lock:
            if not self._faults:
                return
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.popleft()
        headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        raise FakeApiError(fault.status, fault.message, headers=headers)

    def _project(self, caller: Json | None, project_id: str | None) -> Json:
        """The project a call works on: the given one (if the caller may), else a project-scoped key's own."""
        if project_id is None:
            project_id = caller.get("projectId") if caller else None
            if project_id is None:
                raise FakeApiError(400, ["projectId should not be empty"])
        project = self.projects.get(project_id)
        if project is None:
            raise _not_found("Project")
        if not self._may(caller, project):
            raise FakeApiError(403, FORBIDDEN)
        return project

    @staticmethod
    def _may(caller: Json | None, project: Mapping[str, Any]) -> bool:
        if caller is None:
            return True
        if caller.get("projectId"):
            return bool(caller["projectId"] == project["id"])
        return bool(caller["accountId"] == project["accountId"])

    def _account(self, caller: Json | None, account_id: str) -> Json:
        account = self.accounts.get(account_id)
        if account is None:
            raise _not_found("Account")
        if caller is not None and caller["accountId"] != account_id:
            raise FakeApiError(403, FORBIDDEN)
        return account

    # Webhooks.

    def topics(self) -> list[Any]:
        if self.topics_shape == "missing":
            raise FakeApiError(404, "Cannot GET /webhooks/topics")
        if self.topics_shape == "objects":
            return [{"name": t, "description": f"sent when {t.replace('.', ' ')}"} for t in DEFAULT_TOPICS]
        return list(DEFAULT_TOPICS)

    def list_webhooks(self, caller: Json | None, query: Mapping[str, str]) -> list[Json]:
        if self.strict_webhook_list:
            validate(query, dict.fromkeys(("accountId", "projectId", "topic"), (True, _string)))
        with self._lock:
            if "accountId" in query:
                self._account(caller, query["accountId"])
            if "projectId" in query:
                self._project(caller, query["projectId"])
            found = []
            for hook in self.webhooks.values():
                project = self.projects.get(hook["projectId"])
                if project is None or not self._may(caller, project):
                    continue
                if any(query.get(k, hook[k]) != hook[k] for k in ("accountId", "projectId")):
                    continue
                if "topic" in query and query["topic"] not in hook["topics"]:
                    continue
                found.append(dict(hook))
            return found

    def create_webhook(self, caller: Json | None, body: Mapping[str, Any]) -> Json:
        rules = {
            name: (name in ("name", "url", "topics", "httpMethod"), check) for name, check in WEBHOOK_FIELDS.items()
        }
        validate(body, rules)
        with self._lock:
            project = self._project(caller, body.get("projectId"))
            now = _now()
            hook: Json = {
                "id": str(uuid.uuid4()),
                "name": body["name"],
                "url": body["url"],
                "topics": list(body["topics"]),
                "httpMethod": body["httpMethod"],
                "projectId": project["id"],
                "accountId": project["accountId"],
                "customHeaders": dict(body.get("customHeaders") or {}),
                "status": body.get("status") or "live",
                "isActive": True,
                "createdAt": now,
                "updatedAt": now,
            }
            self.webhooks[hook["id"]] = hook
            self.hook_secrets[hook["id"]] = self.signing_secret or _token(40)
            return dict(hook)

    def _webhook(self, caller: Json | None, webhook_id: str) -> Json:
        hook = self.webhooks.get(webhook_id)
        project = self.projects.get(hook["projectId"]) if hook else None
        if hook is None or project is None or not self._may(caller, project):
            raise _not_found("Webhook")
        return hook

    def get_webhook(self, caller: Json | None, webhook_id: str) -> Json:
        with self._lock:
            return dict(self._webhook(caller, webhook_id))

    def update_webhook(self, caller: Json | None, webhook_id: str, body: Mapping[str, Any]) -> Json:
        # The spec requires name and url; the vendor's samples patch `status` alone, so every field is optional.
        allowed = ("name", "url", "topics", "httpMethod", "customHeaders", "status")
        validate(body, {name: (False, WEBHOOK_FIELDS[name]) for name in allowed})
        with self._lock:
            hook = self._webhook(caller, webhook_id)
            hook.update({k: body[k] for k in allowed if body.get(k) is not None}, updatedAt=_now())
            return dict(hook)

    def remove_webhook(self, caller: Json | None, webhook_id: str) -> bool:
        with self._lock:
            del self.webhooks[self._webhook(caller, webhook_id)["id"]]
            return True

    async def ping(self, body: Mapping[str, Any]) -> Json:
        """Really send `body` to `url` with the caller's headers, and report what came back."""
        validate(body, {"url": (True, _url), "httpMethod": (True, _choice(*HTTP_METHODS)), "body": (False, _object)})
        headers: dict[str, str] = {}
        for name in ("headers", "customHeaders"):
            if self.ping_headers_field in ("both", name) and isinstance(body.get(name), dict):
                headers.update({str(k): str(v) for k, v in body[name].items()})
        result: Json = {"url": body["url"], "httpMethod": body["httpMethod"], "status": None, "error": None}
        try:
            async with httpx.AsyncClient(timeout=self.delivery_timeout_seconds) as http:
                answer = await http.request(body["httpMethod"], body["url"], json=body.get("body"), headers=headers)
        except httpx.HTTPError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        else:
            result["status"] = answer.status_code
        return result

    # API keys.

    def list_api_keys(self, caller: Json | None, query: Mapping[str, str]) -> list[Json]:
        with self._lock:
            if "projectId" not in query and caller is not None and not caller.get("projectId"):
                raise FakeApiError(400, "projectId is required when using an account-level access key")
            project = self._project(caller, query.get("projectId"))
            found = [k for k in self.api_keys.values() if k["projectId"] == project["id"]]
            for name in ("customAccountId", "customUserId"):
                if name in query:
                    wanted = None if query[name] == "null" else query[name]
                    found = [k for k in found if k.get(name) == wanted]
            if "name" in query:
                found = [k for k in found if str(k.get("name", "")).lower() == query["name"].lower()]
            if "isActive" in query:
                found = [k for k in found if k["isActive"] is (query["isActive"].lower() == "true")]
            offset = _int(query.get("offset"), 0)
            limit = _int(query.get("limit"), len(found))
            return [dict(k) for k in found[offset : offset + limit]]

    def create_api_key(self, caller: Json | None, body: Mapping[str, Any]) -> Json:
        validate(body, API_KEY_CREATE)
        with self._lock:
            project = self._project(caller, body.get("projectId"))
            key = body.get("key") or f"{project['env']}_{_token(40)}"
            if key in self.api_keys:
                raise FakeApiError(400, "key already exists")
            now = _now()
            created: Json = {
                "key": key,
                "name": body["name"],
                "customMetaData": dict(body.get("customMetaData") or {}),
                "customAccountId": body.get("customAccountId"),
                "customUserId": body.get("customUserId"),
                "env": project["env"],
                "createdAt": now,
                "updatedAt": now,
                "isActive": True,
                "expiresAt": body.get("expiry"),
                "rateLimitConfigs": body.get("rateLimitConfigs"),
                "creationContext": {},
                "projectId": project["id"],
            }
            self.api_keys[key] = created
            self._emit("api-key.created", created)
            return dict(created)

    def _api_key(self, caller: Json | None, key: str, *, active: bool = True) -> Json:
        found = self.api_keys.get(key)
        project = self.projects.get(found["projectId"]) if found else None
        if found is None or project is None or (active and not found["isActive"]):
            raise FakeApiError(404, "Invalid client key")
        if not self._may(caller, project):
            raise FakeApiError(403, FORBIDDEN)
        return found

    def get_api_key(self, caller: Json | None, key: str) -> Json:
        with self._lock:
            return dict(self._api_key(caller, key))

    def update_api_key(self, caller: Json | None, key: str, body: Mapping[str, Any]) -> Json:
        validate(body, API_KEY_UPDATE)
        with self._lock:
            found = self._api_key(caller, key)
            for name in ("name", "customMetaData", "customAccountId", "customUserId", "rateLimitConfigs"):
                if name in body:
                    found[name] = body[name]
            if "expiry" in body:
                found["expiresAt"] = body["expiry"]
            found["updatedAt"] = _now()
            self._emit("api-key.updated", found)
            return dict(found)

    def delete_api_key(self, caller: Json | None, key: str) -> bool:
        with self._lock:
            found = self._api_key(caller, key, active=False)
            if found["isActive"]:
                found.update(isActive=False, updatedAt=_now())
                self._emit("api-key.deleted", found)
            return True

    def reactivate_api_key(self, caller: Json | None, key: str) -> Json:
        with self._lock:
            found = self._api_key(caller, key, active=False)
            if not found["isActive"]:
                found.update(isActive=True, updatedAt=_now())
                self._emit("api-key.updated", found)
            return dict(found)

    def rotate_api_key(self, caller: Json | None, key: str) -> Json:
        with self._lock:
            old = self._api_key(caller, key)
            project = self.projects[old["projectId"]]
            now = _now()
            new = {**old, "key": f"{project['env']}_{_token(40)}", "createdAt": now, "updatedAt": now}
            old.update(isActive=False, updatedAt=now)
            self.api_keys[new["key"]] = new
            self._emit("api-key.created", new)
            self._emit("api-key.deleted", old)
            return dict(new)

    def authenticate_api_key(self, key: str) -> Json:
        """POST /api-keys/auth/{key}: the first success fires `api-key.firstUsed`."""
        with self._lock:
            found = self._api_key(None, key)
            if not found.get("lastUsedAt"):
                found["lastUsedAt"] = _now()
                self._emit("api-key.firstUsed", found)
            return dict(found)

    # Projects, accounts, access keys.

    def list_projects(self, caller: Json | None, query: Mapping[str, str]) -> list[Json]:
        validate(query, {"accountId": (True, _string)})
        with self._lock:
            self._account(caller, query["accountId"])
            return [
                dict(p) for p in self.projects.values() if p["accountId"] == query["accountId"] and self._may(caller, p)
            ]

    def create_project(self, caller: Json | None, body: Mapping[str, Any]) -> Json:
        validate(body, {"name": (True, _string), "accountId": (True, _string), "env": (True, _choice("live", "test"))})
        with self._lock:
            self._account(caller, body["accountId"])
            if caller is not None and caller.get("projectId"):
                raise FakeApiError(403, FORBIDDEN)
            project = _project_entity(str(uuid.uuid4()), body["name"], body["accountId"], body["env"])
            self.projects[project["id"]] = project
            return dict(project)

    def get_project(self, caller: Json | None, project_id: str) -> Json:
        with self._lock:
            return dict(self._project(caller, project_id))

    def update_project(self, caller: Json | None, project_id: str, body: Mapping[str, Any]) -> Json:
        validate(body, {"name": (True, _string)})
        with self._lock:
            project = self._project(caller, project_id)
            project.update(name=body["name"], updatedAt=_now())
            self._emit("project.updated", project)
            return dict(project)

    def delete_project(self, caller: Json | None, project_id: str) -> bool:
        with self._lock:
            del self.projects[self._project(caller, project_id)["id"]]
            return True

    def list_accounts(self, caller: Json | None) -> list[Json]:
        with self._lock:
            return [dict(a) for a in self.accounts.values() if caller is None or a["id"] == caller["accountId"]]

    def get_account(self, caller: Json | None, account_id: str) -> Json:
        with self._lock:
            return dict(self._account(caller, account_id))

    def list_access_keys(self, caller: Json | None, query: Mapping[str, str]) -> list[Json]:
        validate(query, {"accountId": (True, _string)})
        with self._lock:
            self._account(caller, query["accountId"])
            found = [k for k in self.access_keys.values() if k["accountId"] == query["accountId"]]
            if "projectId" in query:
                found = [k for k in found if k.get("projectId") == query["projectId"]]
            if "isActive" in query:
                found = [k for k in found if k["isActive"] is (query["isActive"].lower() == "true")]
            return [dict(k) for k in found]

    def create_access_key(self, caller: Json | None, body: Mapping[str, Any]) -> Json:
        validate(body, ACCESS_KEY_CREATE)
        with self._lock:
            account_id = body.get("accountId") or (caller["accountId"] if caller else None)
            if account_id is None:
                raise FakeApiError(400, ["accountId should not be empty"])
            self._account(caller, account_id)
            project_id = body.get("projectId") or (caller.get("projectId") if caller else None)
            env = "live"
            if project_id is not None:
                project = self._project(caller, project_id)
                env = project["env"]
            created = _access_key_entity(f"{env}_access_{_token(40)}", body["name"], account_id, project_id, body)
            self.access_keys[created["key"]] = created
            self._emit("access-key.created", created)
            return dict(created)

    def _access_key(self, caller: Json | None, key: str) -> Json:
        found = self.access_keys.get(key)
        if found is None or (caller is not None and found["accountId"] != caller["accountId"]):
            raise _not_found("Access key")
        return found

    def update_access_key(self, caller: Json | None, key: str, body: Mapping[str, Any]) -> Json:
        validate(body, {"name": (True, _string)})
        with self._lock:
            found = self._access_key(caller, key)
            found.update(name=body["name"], updatedAt=_now())
            self._emit("access-key.updated", found)
            return dict(found)

    def deactivate_access_key(self, caller: Json | None, key: str) -> bool:
        self.set_access_key_active(caller, key, False)
        return True

    def set_access_key_active(self, caller: Json | None, key: str, active: bool) -> Json:
        with self._lock:
            found = self._access_key(caller, key)
            if found["isActive"] is not active:
                found.update(isActive=active, updatedAt=_now())
                self._emit("access-key.updated" if active else "access-key.deleted", found)
            return dict(found)

    # Deliveries.

    def _emit(self, topic: str, entity: Mapping[str, Any]) -> None:
        """Queue `topic` for every live subscription of the entity's project (or account) that takes it."""
        project_id = entity.get("projectId") if topic != "project.updated" else entity.get("id")
        project = self.projects.get(project_id) if isinstance(project_id, str) else None
        account_id = project["accountId"] if project else entity.get("accountId")
        targets = tuple(
            Target(hook["id"], hook["url"], hook["httpMethod"], self._delivery_headers(hook))
            for hook in self.webhooks.values()
            if hook["status"] == "live"
            and topic in hook["topics"]
            and (hook["projectId"] == project_id if project_id else hook["accountId"] == account_id)
        )
        if not targets:
            return
        self._events_emitted += 1
        every = self.duplicates_every
        copies = 2 if every > 0 and self._events_emitted % every == 0 else 1
        delivery = Delivery(Event(topic, project_id, account_id, dict(entity)), targets, copies)
        self._in_flight += 1
        try:
            self._queue.put_nowait(delivery)
        except queue.Full:
            self._in_flight -= 1

    def _delivery_headers(self, hook: Mapping[str, Any]) -> dict[str, str]:
        headers = {"content-type": "application/json", "user-agent": "theauthapi-fake-webhooks/1"}
        headers.update(hook.get("customHeaders") or {})
        headers["theauthapi-signature"] = self.hook_secrets[hook["id"]]
        return headers

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver_loop, name="fake-authapi-deliveries", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _deliver_loop(self) -> None:
        held: Delivery | None = None
        held_until = 0.0
        with httpx.Client(timeout=self.delivery_timeout_seconds) as http:
            while True:
                try:
                    timeout = max(0.0, held_until - time.monotonic()) if held else None
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item, held = held, None
                    if item is not None:
                        self._send(http, item)
                    continue
                if item is None:
                    if held is not None:
                        self._send(http, held)
                    return
                if not self.out_of_order:
                    self._send(http, item)
                elif held is None:
                    held, held_until = item, time.monotonic() + self.out_of_order_hold_seconds
                else:
                    # The later event overtakes the earlier one, as the real service allows.
                    self._send(http, item)
                    self._send(http, held)
                    held = None

    def _send(self, http: httpx.Client, delivery: Delivery) -> None:
        event = delivery.event
        body = event.data if self.bare_entity else event.envelope()
        try:
            for target in delivery.targets:
                for _ in range(delivery.copies):
                    self._send_one(http, event, target, body)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _send_one(self, http: httpx.Client, event: Event, target: Target, body: Json) -> None:
        for attempt in range(1, self.delivery_attempts + 1):
            status: int | None = None
            error: str | None = None
            try:
                status = http.request(target.method, target.url, json=body, headers=dict(target.headers)).status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            with self._lock:
                self.deliveries.append(
                    DeliveryAttempt(event.id, event.topic, target.webhook_id, target.url, attempt, status, error)
                )
            if status is not None and 200 <= status < 300:
                return
            if attempt < self.delivery_attempts:
                time.sleep(self.delivery_backoff_seconds * 2 ** (attempt - 1))


def _audit_base(now: str) -> Json:
    """The spec's `AuthBaseEntity` fields, as a fresh entity created through an access key carries them."""
    nobody = dict.fromkeys(("createdBy", "createdByType", "createdIn", "lastChangedBy", "lastChangedByType"))
    return {"isActive": True, **nobody, "createdAt": now, "updatedAt": now}


def _project_entity(project_id: str, name: str, account_id: str, env: str) -> Json:
    return {**_audit_base(_now()), "id": project_id, "name": name, "accountId": account_id, "env": env}


def _access_key_entity(key: str, name: str, account_id: str, project_id: str | None, limits: Mapping[str, Any]) -> Json:
    return {
        **_audit_base(_now()),
        "key": key,
        "name": name,
        "accountId": account_id,
        "projectId": project_id,
        "rateLimit": limits.get("rateLimit"),
        "rateLimitTtl": limits.get("rateLimitTtl"),
    }


def _int(raw: str | None, default: int) -> int:
    try:
        return max(0, int(raw)) if raw is not None else default
    except ValueError:
        raise FakeApiError(400, ["limit and offset must be integer numbers"]) from None


# The HTTP surface.


@dataclass(frozen=True, slots=True)
class Call:
    caller: Json | None
    params: Mapping[str, str]
    query: Mapping[str, str]
    body: Json


Operation = Callable[[Call], Any]


async def _json_object(request: Request) -> Json:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise FakeApiError(400, "Unexpected token in JSON body") from None
    if not isinstance(body, dict):
        raise FakeApiError(400, "the request body must be a JSON object")
    return body


def _endpoint(
    state: FakeState, operation: Operation, *, status: int = 200, admin: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            if not admin:
                state.take_fault()
            body = await _json_object(request) if request.method in ("POST", "PATCH", "PUT") else {}
            caller = None if admin else state.authenticate(request.headers.get("x-api-key"))
            if not admin:
                state.record(RecordedRequest(request.method, request.url.path, dict(request.query_params), body))
            call = Call(caller, dict(request.path_params), dict(request.query_params), body)
            result = operation(call)
            if inspect.isawaitable(result):
                result = await result
        except FakeApiError as exc:
            return exc.response()
        return JSONResponse(result, status_code=status)

    return endpoint


def create_fake_app(state: FakeState) -> Starlette:
    """The Starlette app serving `state`; its lifespan runs the delivery thread."""

    def api(path: str, method: str, operation: Operation, status: int = 200) -> Route:
        return Route(path, _endpoint(state, operation, status=status), methods=[method])

    def admin(path: str, method: str, operation: Operation) -> Route:
        return Route(path, _endpoint(state, operation, admin=True), methods=[method])

    s = state
    routes = [
        api("/", "GET", lambda c: "Hello World!"),
        api("/webhooks/topics", "GET", lambda c: s.topics()),
        api("/webhooks/ping", "POST", lambda c: s.ping(c.body)),
        api("/webhooks", "GET", lambda c: s.list_webhooks(c.caller, c.query)),
        api("/webhooks", "POST", lambda c: s.create_webhook(c.caller, c.body), 201),
        api("/webhooks/{id}", "GET", lambda c: s.get_webhook(c.caller, c.params["id"])),
        api("/webhooks/{id}", "PATCH", lambda c: s.update_webhook(c.caller, c.params["id"], c.body)),
        api("/webhooks/{id}", "DELETE", lambda c: s.remove_webhook(c.caller, c.params["id"])),
        api("/api-keys", "GET", lambda c: s.list_api_keys(c.caller, c.query)),
        api("/api-keys/", "GET", lambda c: s.list_api_keys(c.caller, c.query)),
        api("/api-keys", "POST", lambda c: s.create_api_key(c.caller, c.body), 201),
        api("/api-keys/auth/{key}", "POST", lambda c: s.authenticate_api_key(c.params["key"])),
        api("/api-keys/auth/{key}", "GET", lambda c: s.authenticate_api_key(c.params["key"])),
        api("/api-keys/{key}", "GET", lambda c: s.get_api_key(c.caller, c.params["key"])),
        api("/api-keys/{key}", "PATCH", lambda c: s.update_api_key(c.caller, c.params["key"], c.body)),
        api("/api-keys/{key}", "DELETE", lambda c: s.delete_api_key(c.caller, c.params["key"])),
        api("/api-keys/{key}/reactivate", "PATCH", lambda c: s.reactivate_api_key(c.caller, c.params["key"])),
        api("/api-keys/{key}/rotate", "POST", lambda c: s.rotate_api_key(c.caller, c.params["key"]), 201),
        api("/projects", "GET", lambda c: s.list_projects(c.caller, c.query)),
        api("/projects", "POST", lambda c: s.create_project(c.caller, c.body), 201),
        api("/projects/{id}", "GET", lambda c: s.get_project(c.caller, c.params["id"])),
        api("/projects/{id}", "PATCH", lambda c: s.update_project(c.caller, c.params["id"], c.body)),
        api("/projects/{id}", "DELETE", lambda c: s.delete_project(c.caller, c.params["id"])),
        api("/accounts", "GET", lambda c: s.list_accounts(c.caller)),
        api("/accounts/{id}", "GET", lambda c: s.get_account(c.caller, c.params["id"])),
        api("/access-keys", "GET", lambda c: s.list_access_keys(c.caller, c.query)),
        api("/access-keys", "POST", lambda c: s.create_access_key(c.caller, c.body), 201),
        api("/access-keys/{key}", "PATCH", lambda c: s.update_access_key(c.caller, c.params["key"], c.body)),
        api("/access-keys/{key}", "DELETE", lambda c: s.deactivate_access_key(c.caller, c.params["key"])),
        api(
            "/access-keys/{key}/reactivate", "PATCH", lambda c: s.set_access_key_active(c.caller, c.params["key"], True)
        ),
        # Test-only admin surface: no x-api-key, never faulted, shows the per-hook secrets.
        admin("/__fake__/webhooks", "GET", lambda c: s.admin_webhooks()),
        admin("/__fake__/webhooks/{id}/pause", "POST", lambda c: s.pause_webhook(c.params["id"])),
        admin("/__fake__/webhooks/{id}", "DELETE", lambda c: s.delete_webhook(c.params["id"])),
        admin("/__fake__/faults", "POST", lambda c: s.admin_fault(c.body)),
        admin("/__fake__/deliveries", "GET", lambda c: s.admin_deliveries()),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.close()

    return Starlette(routes=routes, lifespan=lifespan)


# Running it.


class LoopbackServer:
    """Serves an ASGI app with uvicorn on a background thread; `with LoopbackServer(app) as server: server.url`.

    Port 0 picks a free port. Start-up and shut-down waits are bounded.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 10.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", ws="none", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.start_timeout)
        if self._socket is not None:
            self._socket.close()


class FakeAuthApi(LoopbackServer):
    """The fake on a free loopback port: `with FakeAuthApi() as fake: fake.state.seed(...); fake.url`."""

    def __init__(self, state: FakeState | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state or FakeState()
        super().__init__(create_fake_app(self.state), host=host, port=port)
