"""The fake's accounts and projects: the /accounts and /projects endpoints, scoped by the caller's access key."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from authapi.fake.entities import Json, project_entity
from authapi.fake.errors import FORBIDDEN, FakeApiError
from authapi.fake.store import Store
from authapi.fake.validation import check_choice, check_string, validate


class AccountOperations(Store):
    """The /accounts and /projects endpoints."""

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
            return self._rename(self._project(caller, project_id), body["name"], "project.updated")

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
