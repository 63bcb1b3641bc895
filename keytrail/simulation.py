"""Realistic deliveries of every topic, shaped like reference/theauthapi.md §3-4, for `simulate`, tests and bench."""

from __future__ import annotations

import json
import random
import string
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from config.settings import DEFAULT_TOPICS, TenantSettings
from events.times import format_utc
from events.wire import SIGNATURE_HEADER, TOKEN_HEADER

TOPICS = DEFAULT_TOPICS


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    body: bytes
    headers: dict[str, str]
    secret: str | None  # the raw key or token the body carries (tests check it appears nowhere afterwards)


def _random_key(rng: random.Random, prefix: str) -> str:
    return prefix + "".join(rng.choices(string.ascii_letters + string.digits, k=40))


def make_entity(topic: str, rng: random.Random, now: datetime) -> tuple[dict[str, Any], str | None]:
    account_id, project_id = str(uuid.UUID(int=rng.getrandbits(128))), str(uuid.UUID(int=rng.getrandbits(128)))
    created = now - timedelta(days=rng.randint(0, 30))
    base = {
        "isActive": not topic.endswith(".deleted"),
        "createdBy": "user-" + str(rng.randint(1, 99)),
        "createdByType": "USER",
        "createdIn": None,
        "lastChangedBy": None if topic.endswith(".created") else "access-key-" + str(rng.randint(1, 9)),
        "lastChangedByType": None if topic.endswith(".created") else "ACCESS_KEY",
        "createdAt": format_utc(created),
        "updatedAt": format_utc(now),
    }
    if topic.startswith("api-key."):
        key = _random_key(rng, rng.choice(["live_", "test_"]))
        return {
            "key": key,
            "name": f"customer key {rng.randint(1, 9999)}",
            "customMetaData": {"plan": rng.choice(["free", "pro", "enterprise"])},
            "customAccountId": f"acct_{rng.randint(1, 500)}",
            "customUserId": f"user_{rng.randint(1, 5000)}",
            "env": key.split("_", 1)[0],
            "projectId": project_id,
            "expiresAt": None,
            "rateLimitConfigs": {"rateLimit": 10, "rateLimitTtl": 60},
            "creationContext": {},
            **base,
        }, key
    if topic.startswith("access-key."):
        token = _random_key(rng, "live_access_")
        return {"key": token, "name": "ci deploy", "accountId": account_id, "projectId": project_id, **base}, token
    return {
        "id": project_id,
        "name": f"Project {rng.randint(1, 99)}",
        "accountId": account_id,
        "env": rng.choice(["live", "test"]),
        **base,
    }, None


def make_delivery(
    tenant: TenantSettings,
    topic: str,
    *,
    rng: random.Random | None = None,
    bare: bool = False,
    now: datetime | None = None,
) -> Delivery:
    """One delivery as The Auth API would send it, verified for `tenant` (token and/or signature header)."""
    rng = rng or random.Random()  # noqa: S311 - test data, not secrets
    moment = now or datetime.now(UTC)
    entity, secret = make_entity(topic, rng, moment)
    if bare:
        body: dict[str, Any] = entity
    else:
        body = {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "topic": topic,
            "createdAt": format_utc(moment),
            "projectId": entity.get("projectId", entity.get("id")),
            "accountId": entity.get("accountId"),
            "data": entity,
        }
    headers = {"content-type": "application/json", "user-agent": "keytrail-simulate"}
    if tenant.token is not None:
        headers[TOKEN_HEADER] = tenant.token.reveal()
    if tenant.signing_secrets:
        headers[SIGNATURE_HEADER] = tenant.signing_secrets[0].reveal()
    return Delivery(topic, json.dumps(body).encode(), headers, secret)
