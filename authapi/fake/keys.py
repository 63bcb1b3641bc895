"""The fake's keys: API keys (the end users' keys, whose changes are the events keytrail records) and access keys
(the management API's own credentials), each change emitting its event to the subscriptions that take it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authapi.fake.entities import Json, access_key_entity, random_token, timestamp
from authapi.fake.errors import FORBIDDEN, FakeApiError, not_found
from authapi.fake.store import Store
from authapi.fake.validation import ACCESS_KEY_CREATE, API_KEY_CREATE, API_KEY_UPDATE, check_string, query_int, validate


class KeyOperations(Store):
    """The /api-keys and /access-keys endpoints."""

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

    # Access keys.

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
            return self._rename(self._access_key(caller, key), body["name"], "access-key.updated")

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
