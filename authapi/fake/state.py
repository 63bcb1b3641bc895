"""The fake's in-memory state: accounts, projects, keys and subscriptions, their operations, seeding and faults."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from authapi.fake.delivery import Deliverer, DeliveryAttempt
from authapi.fake.entities import Json, access_key_entity, audit_base, project_entity, random_token, timestamp
from authapi.fake.errors import FAULT_MESSAGES, FORBIDDEN, FakeApiError, not_found
from authapi.fake.strictness import (
    CREATE_WEBHOOK_DTO,
    TEST_WEBHOOK_DTO,
    UPDATE_WEBHOOK_DTO,
    ChangeFault,
    ChangeFaults,
    Strictness,
)
from authapi.fake.validation import (
    ACCESS_KEY_CREATE,
    API_KEY_CREATE,
    API_KEY_UPDATE,
    HTTP_METHODS,
    WEBHOOK_FIELDS,
    check_choice,
    check_number,
    check_object,
    check_string,
    check_url,
    query_int,
    validate,
)
from config.settings import DEFAULT_TOPICS

TopicsShape = Literal["strings", "objects", "missing"]
PingHeadersField = Literal["both", "headers", "customHeaders"]


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
    """Accounts, projects, keys and subscriptions in memory, behind one lock, plus the deliverer of their events.

    Switches: `topics_shape` (strings, objects, or a 404), `strict_webhook_list` (GET /webhooks requires
    accountId, projectId and topic as the spec says), `ping_headers_field` (which DTO field the ping reads its
    headers from), `duplicates_every` (deliver every Nth event twice; 0 never), `out_of_order` (deliver events in
    swapped pairs), `bare_entity` (the body is just the entity), `signing_secret` (one fixed per-hook secret).
    The delivery switches and the `delivery_*` settings go to the `Deliverer`. The stricter readings of the webhook
    endpoints (`patch_whitelist`, `forbid_unknown_properties`, `account_wide_hooks`, `ignored_webhook_fields`,
    `patch_ignored_fields`, `fault_after_change` every `fault_after_change_every` changes) are in `strictness`.
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
        patch_whitelist: bool = False,
        forbid_unknown_properties: bool = False,
        account_wide_hooks: bool = False,
        ignored_webhook_fields: Sequence[str] = (),
        patch_ignored_fields: Sequence[str] = (),
        fault_after_change: ChangeFault | None = None,
        fault_after_change_every: int = 1,
    ) -> None:
        self.strictness = Strictness(
            patch_whitelist,
            forbid_unknown_properties,
            account_wide_hooks,
            tuple(ignored_webhook_fields),
            tuple(patch_ignored_fields),
        )
        self.change_faults = ChangeFaults(fault_after_change, fault_after_change_every)
        self.topics_shape = topics_shape
        self.strict_webhook_list = strict_webhook_list
        self.ping_headers_field = ping_headers_field
        self.signing_secret = signing_secret
        self.accounts: dict[str, Json] = {}
        self.projects: dict[str, Json] = {}
        self.access_keys: dict[str, Json] = {}
        self.api_keys: dict[str, Json] = {}
        self.webhooks: dict[str, Json] = {}
        self.hook_secrets: dict[str, str] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: deque[_Fault] = deque()
        self._lock = threading.RLock()
        self._deliverer = Deliverer(
            self._lock,
            duplicates_every=duplicates_every,
            out_of_order=out_of_order,
            bare_entity=bare_entity,
            max_attempts=delivery_attempts,
            backoff_seconds=delivery_backoff_seconds,
            timeout_seconds=delivery_timeout_seconds,
            out_of_order_hold_seconds=out_of_order_hold_seconds,
        )

    @property
    def deliveries(self) -> list[DeliveryAttempt]:
        """Every delivery attempt so far, oldest first."""
        return self._deliverer.attempts

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
            self.accounts.setdefault(account_id, {**audit_base(timestamp()), "id": account_id, "name": account_id})
            ids = list(project_ids)
            for project_id in ids:
                self.projects.setdefault(
                    project_id, project_entity(project_id, f"project {project_id}", account_id, env)
                )
            scope = ids[0] if project_scoped and ids else None
            self.access_keys[access_key] = access_key_entity(access_key, "seeded access key", account_id, scope, {})

    def fail_next(
        self, status: int, count: int = 1, *, retry_after: float | None = None, message: str | None = None
    ) -> None:
        """The next `count` API requests (admin routes excluded) answer `status` instead of being served."""
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, message or FAULT_MESSAGES.get(status, "Error")))

    def admin_fault(self, body: Mapping[str, Any]) -> None:
        validate(
            body, {"status": (True, check_number), "count": (False, check_number), "retryAfter": (False, check_number)}
        )
        self.fail_next(int(body["status"]), int(body.get("count") or 1), retry_after=body.get("retryAfter"))

    def fail_after_next_change(self, kind: ChangeFault = "error", count: int = 1) -> None:
        """The next `count` hook changes are made, then answered with a 500 (`error`) or a dropped connection."""
        self.change_faults.queue(kind, count)

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
                raise not_found("Webhook")
            self.webhooks[webhook_id].update(fields, updatedAt=timestamp())

    def delete_webhook(self, webhook_id: str) -> None:
        with self._lock:
            if self.webhooks.pop(webhook_id, None) is None:
                raise not_found("Webhook")

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
        return self._deliverer.wait(timeout)

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
            raise not_found("Project")
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
            raise not_found("Account")
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
            validate(query, dict.fromkeys(("accountId", "projectId", "topic"), (True, check_string)))
        with self._lock:
            if "accountId" in query:
                self._account(caller, query["accountId"])
            if "projectId" in query:
                self._project(caller, query["projectId"])
            found = []
            for hook in self.webhooks.values():
                if not self._may_hook(caller, hook):
                    continue
                if query.get("accountId", hook["accountId"]) != hook["accountId"]:
                    continue
                # An account-wide hook applies to every project of its account, so it is listed with each.
                if hook["projectId"] is not None and query.get("projectId", hook["projectId"]) != hook["projectId"]:
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
        self.strictness.check_properties(body, CREATE_WEBHOOK_DTO)
        with self._lock:
            if self.strictness.account_wide_hooks and body.get("projectId") is None:
                project_id, account_id = None, self._hook_account(caller, body.get("accountId"))
            else:
                project = self._project(caller, body.get("projectId"))
                project_id, account_id = project["id"], project["accountId"]
            now = timestamp()
            fields = {
                "name": body["name"],
                "url": body["url"],
                "topics": list(body["topics"]),
                "httpMethod": body["httpMethod"],
                "customHeaders": dict(body.get("customHeaders") or {}),
                "status": body.get("status") or "live",
            }
            empty: Json = {"customHeaders": {}, "status": "live", "topics": []}
            kept = {**{k: v for k, v in empty.items() if k in fields}, **self.strictness.stored(fields)}
            hook: Json = {
                "id": str(uuid.uuid4()),
                **kept,
                "projectId": project_id,
                "accountId": account_id,
                "isActive": True,
                "createdAt": now,
                "updatedAt": now,
            }
            self.webhooks[hook["id"]] = hook
            self.hook_secrets[hook["id"]] = self.signing_secret or random_token(40)
            return dict(hook)

    def _hook_account(self, caller: Json | None, account_id: str | None) -> str:
        """The account of a new account-wide hook; only an account-level access key may make one."""
        if caller is not None and caller.get("projectId"):
            raise FakeApiError(400, ["projectId should not be empty"])
        chosen = account_id or (caller["accountId"] if caller else None)
        if chosen is None:
            raise FakeApiError(400, ["projectId should not be empty"])
        return str(self._account(caller, chosen)["id"])

    def _may_hook(self, caller: Json | None, hook: Mapping[str, Any]) -> bool:
        if hook["projectId"] is None:
            return caller is None or (not caller.get("projectId") and caller["accountId"] == hook["accountId"])
        project = self.projects.get(hook["projectId"])
        return project is not None and self._may(caller, project)

    def _webhook(self, caller: Json | None, webhook_id: str) -> Json:
        hook = self.webhooks.get(webhook_id)
        if hook is None or not self._may_hook(caller, hook):
            raise not_found("Webhook")
        return hook

    def get_webhook(self, caller: Json | None, webhook_id: str) -> Json:
        with self._lock:
            return dict(self._webhook(caller, webhook_id))

    def update_webhook(self, caller: Json | None, webhook_id: str, body: Mapping[str, Any]) -> Json:
        # The spec requires name and url; the vendor's samples patch `status` alone, so by default every field is
        # optional and the sample's fields apply too. The strict readings follow UpdateWebhookDTO.
        strict = self.strictness
        lenient = ("name", "url", "topics", "httpMethod", "customHeaders", "status")
        allowed = UPDATE_WEBHOOK_DTO if strict.spec_update else lenient
        strict.check_properties(body, UPDATE_WEBHOOK_DTO)
        required = ("name", "url") if strict.spec_update else ()
        validate(body, {name: (name in required, WEBHOOK_FIELDS[name]) for name in allowed})
        with self._lock:
            hook = self._webhook(caller, webhook_id)
            changes = strict.stored({k: body[k] for k in allowed if body.get(k) is not None})
            hook.update(
                {k: v for k, v in changes.items() if k not in strict.patch_ignored_fields}, updatedAt=timestamp()
            )
            return {**hook, **changes}  # the answer claims every change, kept or not

    def remove_webhook(self, caller: Json | None, webhook_id: str) -> bool:
        with self._lock:
            del self.webhooks[self._webhook(caller, webhook_id)["id"]]
            return True

    async def ping(self, body: Mapping[str, Any]) -> Json:
        """Really send `body` to `url` with the caller's headers, and report what came back."""
        self.strictness.check_properties(body, TEST_WEBHOOK_DTO)
        validate(
            body,
            {
                "url": (True, check_url),
                "httpMethod": (True, check_choice(*HTTP_METHODS)),
                "body": (False, check_object),
            },
        )
        headers: dict[str, str] = {}
        for name in ("headers", "customHeaders"):
            if self.ping_headers_field in ("both", name) and isinstance(body.get(name), dict):
                headers.update({str(k): str(v) for k, v in body[name].items()})
        result: Json = {"url": body["url"], "httpMethod": body["httpMethod"], "status": None, "error": None}
        try:
            async with httpx.AsyncClient(timeout=self._deliverer.timeout_seconds) as http:
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
            offset = query_int(query.get("offset"), 0)
            limit = query_int(query.get("limit"), len(found))
            return [dict(k) for k in found[offset : offset + limit]]

    def create_api_key(self, caller: Json | None, body: Mapping[str, Any]) -> Json:
        validate(body, API_KEY_CREATE)
        with self._lock:
            project = self._project(caller, body.get("projectId"))
            key = body.get("key") or f"{project['env']}_{random_token(40)}"
            if key in self.api_keys:
                raise FakeApiError(400, "key already exists")
            now = timestamp()
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
            found["updatedAt"] = timestamp()
            self._emit("api-key.updated", found)
            return dict(found)

    def delete_api_key(self, caller: Json | None, key: str) -> bool:
        with self._lock:
            found = self._api_key(caller, key, active=False)
            if found["isActive"]:
                found.update(isActive=False, updatedAt=timestamp())
                self._emit("api-key.deleted", found)
            return True

    def reactivate_api_key(self, caller: Json | None, key: str) -> Json:
        with self._lock:
            found = self._api_key(caller, key, active=False)
            if not found["isActive"]:
                found.update(isActive=True, updatedAt=timestamp())
                self._emit("api-key.updated", found)
            return dict(found)

    def rotate_api_key(self, caller: Json | None, key: str) -> Json:
        with self._lock:
            old = self._api_key(caller, key)
            project = self.projects[old["projectId"]]
            now = timestamp()
            new = {**old, "key": f"{project['env']}_{random_token(40)}", "createdAt": now, "updatedAt": now}
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
                found["lastUsedAt"] = timestamp()
                self._emit("api-key.firstUsed", found)
            return dict(found)

    # Projects, accounts, access keys.

    def list_projects(self, caller: Json | None, query: Mapping[str, str]) -> list[Json]:
        validate(query, {"accountId": (True, check_string)})
        with self._lock:
            self._account(caller, query["accountId"])
            return [
                dict(p) for p in self.projects.values() if p["accountId"] == query["accountId"] and self._may(caller, p)
            ]

    def create_project(self, caller: Json | None, body: Mapping[str, Any]) -> Json:
        validate(
            body,
            {
                "name": (True, check_string),
                "accountId": (True, check_string),
                "env": (True, check_choice("live", "test")),
            },
        )
        with self._lock:
            self._account(caller, body["accountId"])
            if caller is not None and caller.get("projectId"):
                raise FakeApiError(403, FORBIDDEN)
            project = project_entity(str(uuid.uuid4()), body["name"], body["accountId"], body["env"])
            self.projects[project["id"]] = project
            return dict(project)

    def get_project(self, caller: Json | None, project_id: str) -> Json:
        with self._lock:
            return dict(self._project(caller, project_id))

    def update_project(self, caller: Json | None, project_id: str, body: Mapping[str, Any]) -> Json:
        validate(body, {"name": (True, check_string)})
        with self._lock:
            project = self._project(caller, project_id)
            project.update(name=body["name"], updatedAt=timestamp())
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
        validate(query, {"accountId": (True, check_string)})
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
            created = access_key_entity(f"{env}_access_{random_token(40)}", body["name"], account_id, project_id, body)
            self.access_keys[created["key"]] = created
            self._emit("access-key.created", created)
            return dict(created)

    def _access_key(self, caller: Json | None, key: str) -> Json:
        found = self.access_keys.get(key)
        if found is None or (caller is not None and found["accountId"] != caller["accountId"]):
            raise not_found("Access key")
        return found

    def update_access_key(self, caller: Json | None, key: str, body: Mapping[str, Any]) -> Json:
        validate(body, {"name": (True, check_string)})
        with self._lock:
            found = self._access_key(caller, key)
            found.update(name=body["name"], updatedAt=timestamp())
            self._emit("access-key.updated", found)
            return dict(found)

    def deactivate_access_key(self, caller: Json | None, key: str) -> bool:
        self.set_access_key_active(caller, key, False)
        return True

    def set_access_key_active(self, caller: Json | None, key: str, active: bool) -> Json:
        with self._lock:
            found = self._access_key(caller, key)
            if found["isActive"] is not active:
                found.update(isActive=active, updatedAt=timestamp())
                self._emit("access-key.updated" if active else "access-key.deleted", found)
            return dict(found)

    # Deliveries.

    def _emit(self, topic: str, entity: Mapping[str, Any]) -> None:
        """Queue `topic` for every live subscription of the entity's project (or account) that takes it."""
        project_id = entity.get("projectId") if topic != "project.updated" else entity.get("id")
        project = self.projects.get(project_id) if isinstance(project_id, str) else None
        account_id = project["accountId"] if project else entity.get("accountId")
        hooks = (
            (hook, self.hook_secrets[hook["id"]])
            for hook in self.webhooks.values()
            if hook["status"] == "live"
            and topic in hook["topics"]
            and (
                hook["projectId"] == project_id
                if project_id and hook["projectId"] is not None
                else hook["accountId"] == account_id
            )
        )
        self._deliverer.emit(topic, project_id, account_id, entity, hooks)

    def start(self) -> None:
        self._deliverer.start()

    def close(self, timeout: float = 10.0) -> None:
        self._deliverer.close(timeout)
