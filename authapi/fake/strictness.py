"""The fake's stricter readings of The Auth API's webhook endpoints, so the bootstrap is tested against each.

The spec (reference §2.2) documents `CreateWebhookDTO` and a smaller `UpdateWebhookDTO` (name, url, customHeaders);
the real service may be a NestJS app whose ValidationPipe drops fields outside a DTO (`whitelist`) or refuses them
(`forbidNonWhitelisted`). Which one it is, nobody outside knows, so the fake can play each:

- `patch_whitelist`: PATCH applies only UpdateWebhookDTO's fields and silently ignores the rest (topics, status…);
- `forbid_unknown_properties`: any property outside the request's DTO is a 400 naming it, NestJS-style;
- `account_wide_hooks`: a hook created without `projectId` belongs to the whole account (its `projectId` is null),
  gets every project's events and is listed with every project's hooks;
- `ignored_fields`: fields the service never stores (a subscription that no request can make right);
- `patch_ignored_fields`: fields a PATCH answers 200 for, echoed in the answer, but does not store;
- `fault_after_change`: the change is made, then the answer is a 500 (`"error"`) or a dropped connection (`"drop"`),
  for every `fault_after_change_every`-th change (create, update or delete of a hook).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from authapi.fake.errors import FakeApiError

ChangeFault = Literal["error", "drop"]

# The request DTOs of the vendor's OpenAPI spec (components.schemas), field names only.
CREATE_WEBHOOK_DTO = ("name", "url", "topics", "httpMethod", "projectId", "accountId", "customHeaders", "status")
UPDATE_WEBHOOK_DTO = ("name", "url", "customHeaders")
TEST_WEBHOOK_DTO = ("url", "httpMethod", "body", "headers")


@dataclass(frozen=True, slots=True)
class Strictness:
    patch_whitelist: bool = False
    forbid_unknown_properties: bool = False
    account_wide_hooks: bool = False
    ignored_fields: tuple[str, ...] = ()
    patch_ignored_fields: tuple[str, ...] = ()

    @property
    def spec_update(self) -> bool:
        """PATCH follows UpdateWebhookDTO to the letter (name and url required), as a strict NestJS app would."""
        return self.patch_whitelist or self.forbid_unknown_properties

    def check_properties(self, body: Mapping[str, Any], allowed: Iterable[str]) -> None:
        """400 for each property outside the DTO, worded like class-validator's `forbidNonWhitelisted`."""
        if not self.forbid_unknown_properties:
            return
        known = set(allowed)
        unknown = [f"property {name} should not exist" for name in body if name not in known]
        if unknown:
            raise FakeApiError(400, unknown)

    def stored(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """What the service keeps of `fields`."""
        return {k: v for k, v in fields.items() if k not in self.ignored_fields}


@dataclass(slots=True)
class ChangeFaults:
    """Counts hook changes and says which ones are answered with a fault after being made."""

    kind: ChangeFault | None = None
    every: int = 1
    _seen: int = 0
    _queued: list[ChangeFault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def queue(self, kind: ChangeFault, count: int = 1) -> None:
        with self._lock:
            self._queued.extend([kind] * count)

    def next_fault(self) -> ChangeFault | None:
        """Called once per change already made: the fault to answer it with, if any."""
        with self._lock:
            if self._queued:
                return self._queued.pop(0)
            self._seen += 1
            if self.kind is not None and self._seen % max(1, self.every) == 0:
                return self.kind
            return None
