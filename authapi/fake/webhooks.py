"""The fake's subscriptions: the /webhooks endpoints (list, create, read, update, delete, topics, ping), read as
leniently or as strictly as `strictness` says, and the test-only changes made behind keytrail's back (drift)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx

from authapi.fake.entities import Json, random_token, timestamp
from authapi.fake.errors import FakeApiError, not_found
from authapi.fake.store import Store
from authapi.fake.strictness import CREATE_WEBHOOK_DTO, TEST_WEBHOOK_DTO, UPDATE_WEBHOOK_DTO, Strictness
from authapi.fake.validation import (
    HTTP_METHODS,
    WEBHOOK_FIELDS,
    check_choice,
    check_object,
    check_string,
    check_url,
    validate,
)
from config.settings import DEFAULT_TOPICS

TopicsShape = Literal["strings", "objects", "missing"]
PingHeadersField = Literal["both", "headers", "customHeaders"]


class WebhookOperations(Store):
    """The webhook endpoints; their switches (documented on `FakeState`) are set by `FakeState`."""

    strictness: Strictness
    topics_shape: TopicsShape
    strict_webhook_list: bool
    ping_headers_field: PingHeadersField
    signing_secret: str | None

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

    # Changes behind keytrail's back, and the admin view of the subscriptions.

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

    def admin_webhooks(self) -> list[Json]:
        return [{**hook, "secret": self.hook_secrets[hook["id"]]} for hook in self.webhooks_in()]
