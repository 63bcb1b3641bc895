"""The shapes of the entities the fake stores and answers with, and the timestamps and random keys inside them."""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from typing import Any

from events.times import now_utc

Json = dict[str, Any]


def timestamp() -> str:
    return now_utc()


def random_token(length: int = 32) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def audit_base(now: str) -> Json:
    """The spec's `AuthBaseEntity` fields, as a fresh entity created through an access key carries them."""
    nobody = dict.fromkeys(("createdBy", "createdByType", "createdIn", "lastChangedBy", "lastChangedByType"))
    return {"isActive": True, **nobody, "createdAt": now, "updatedAt": now}


def project_entity(project_id: str, name: str, account_id: str, env: str) -> Json:
    return {**audit_base(timestamp()), "id": project_id, "name": name, "accountId": account_id, "env": env}


def access_key_entity(key: str, name: str, account_id: str, project_id: str | None, limits: Mapping[str, Any]) -> Json:
    return {
        **audit_base(timestamp()),
        "key": key,
        "name": name,
        "accountId": account_id,
        "projectId": project_id,
        "rateLimit": limits.get("rateLimit"),
        "rateLimitTtl": limits.get("rateLimitTtl"),
    }
