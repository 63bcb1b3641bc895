"""A fake The Auth API on loopback: its management API (from the vendor's OpenAPI spec) and the webhook deliveries
that start keytrail's event path, so the whole loop runs with no Auth API account.

What the reference marks UNKNOWN is our own choice here, stated once: the delivery envelope is
`{"id", "topic", "createdAt", "projectId", "accountId", "data"}` (or the bare entity, by switch); a rotate sends
`api-key.created` for the new key then `api-key.deleted` for the old one; unknown DTO fields are ignored.

`FakeState` holds everything and is also the admin surface for tests (pause or delete a subscription, create keys,
inject faults, read deliveries); `create_fake_app(state)` serves it; `FakeAuthApi` runs it on a free port in a thread.

One module per part: `state` (the whole state: switches, seeding, faults), `store` (the tables and access rules),
`webhooks`, `keys` and `accounts` (the operations of each family of endpoints), `strictness` (stricter readings of
the spec), `entities` (their shapes), `validation` (request DTOs), `errors` (NestJS error answers), `delivery` (the
webhook deliverer), `app` (the routes), `server` (running it).
"""

from __future__ import annotations

from authapi.fake.app import create_fake_app
from authapi.fake.server import FakeAuthApi, LoopbackServer
from authapi.fake.state import FakeState

__all__ = ["FakeAuthApi", "FakeState", "LoopbackServer", "create_fake_app"]
