"""The fake's tables and the rules every operation shares: who may act on what, and whose hooks hear an event.

`Store` holds accounts, projects, keys and subscriptions in memory behind one re-entrant lock (an operation that
takes it may call another that does). The operations on them are its subclasses, one per family of endpoints
(`webhooks`, `keys`, `accounts`); `FakeState` in `state` puts them together.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from authapi.fake.delivery import Deliverer, DeliveryAttempt
from authapi.fake.entities import Json, timestamp
from authapi.fake.errors import FORBIDDEN, FakeApiError, not_found


class Store:
    """The tables and the access rules; `_deliverer` is set by `FakeState`, which knows the delivery switches."""

    _deliverer: Deliverer

    def __init__(self) -> None:
        self.accounts: dict[str, Json] = {}
        self.projects: dict[str, Json] = {}
        self.access_keys: dict[str, Json] = {}
        self.api_keys: dict[str, Json] = {}
        self.webhooks: dict[str, Json] = {}
        self.hook_secrets: dict[str, str] = {}
        self._lock = threading.RLock()

    # Access control.

    def authenticate(self, presented: str | None) -> Json:
        if not presented:
            raise FakeApiError(401, "missing access key")
        with self._lock:
            found = self.access_keys.get(presented)
            if found is None or not found["isActive"]:
                raise FakeApiError(401, "Invalid access key")
            return found

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

    # Deliveries.

    @property
    def deliveries(self) -> list[DeliveryAttempt]:
        """Every delivery attempt so far, oldest first."""
        return self._deliverer.attempts

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

    def _rename(self, entity: Json, name: str, topic: str) -> Json:
        """A rename, as the PATCH of a project or an access key makes it: stamped, announced, answered."""
        entity.update(name=name, updatedAt=timestamp())
        self._emit(topic, entity)
        return dict(entity)

    def wait_for_deliveries(self, timeout: float = 10.0) -> bool:
        """Block until every emitted event has been delivered or given up on; False if `timeout` ran out first."""
        return self._deliverer.wait(timeout)

    def start(self) -> None:
        self._deliverer.start()

    def close(self, timeout: float = 10.0) -> None:
        self._deliverer.close(timeout)
