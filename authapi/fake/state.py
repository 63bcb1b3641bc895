"""The fake's whole state: its operations put together, the switches that pick a reading of the spec, seeding, the
faults tests inject, and the record of the requests it served."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from authapi.fake.accounts import AccountOperations
from authapi.fake.delivery import Deliverer
from authapi.fake.entities import Json, access_key_entity, audit_base, project_entity, timestamp
from authapi.fake.errors import FAULT_MESSAGES, FakeApiError
from authapi.fake.keys import KeyOperations
from authapi.fake.strictness import ChangeFault, ChangeFaults, Strictness
from authapi.fake.validation import check_number, validate
from authapi.fake.webhooks import PingHeadersField, TopicsShape, WebhookOperations
from config.settings import TenantSettings

__all__ = ["FakeState", "PingHeadersField", "RecordedRequest", "TopicsShape"]


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


class FakeState(WebhookOperations, KeyOperations, AccountOperations):
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
        super().__init__()
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
        self.requests: list[RecordedRequest] = []
        self._faults: deque[_Fault] = deque()
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

    # Seeding.

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

    def seed_tenants(self, tenants: Iterable[TenantSettings]) -> int:
        """Seed each tenant that has an access key, with its account and projects (named after the tenant where the
        config names none), so `keytrail subscribe` works against the fake unchanged; how many were seeded."""
        seeded = 0
        for tenant in tenants:
            if tenant.access_key is not None:
                account = tenant.account_id or f"acct-{tenant.name}"
                self.seed(tenant.access_key.reveal(), account, tenant.project_ids or [f"proj-{tenant.name}"])
                seeded += 1
        return seeded

    # Faults.

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

    # What was served and delivered.

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def admin_deliveries(self) -> list[Json]:
        with self._lock:
            return [dataclasses.asdict(attempt) for attempt in self.deliveries]
