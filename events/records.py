"""The audit record: what one webhook event becomes (OCSF 1.x Entity Management, class 3004) and what sinks render."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any

CLASS_UID = 3004  # OCSF Entity Management
CATEGORY_UID = 3  # OCSF Identity & Access Management
GENESIS_HASH = "0" * 64  # prev_hash of the first record in a tenant's chain


class Activity(IntEnum):
    CREATE = 1
    READ = 2
    UPDATE = 3
    DELETE = 4
    OTHER = 99


class Severity(IntEnum):
    UNKNOWN = 0
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4


class EntityType(StrEnum):
    API_KEY = "API Key"
    ACCESS_KEY = "Access Key"
    PROJECT = "Project"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Entity:
    """The key, access key or project the event is about. A key's `uid` is its fingerprint, never the key."""

    type: EntityType
    uid: str | None = None
    name: str | None = None
    fingerprint: str | None = None
    prefix: str | None = None
    last4: str | None = None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made the change (`createdBy` / `lastChangedBy`) and whether it was a user or an access key."""

    uid: str
    type: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored event. `event_id` is the downstream dedupe key; `prev_hash`/`hash` chain a tenant's records."""

    record_id: str
    event_id: str
    tenant: str
    topic: str
    time: str
    received_at: str
    activity_id: Activity
    severity_id: Severity
    entity: Entity
    project_id: str | None = None
    account_id: str | None = None
    actor: Actor | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    raw_sha256: str = ""
    raw_redacted: dict[str, Any] = field(default_factory=dict)
    class_uid: int = CLASS_UID
    category_uid: int = CATEGORY_UID
    prev_hash: str = ""
    hash: str = ""

    @property
    def type_uid(self) -> int:
        return self.class_uid * 100 + int(self.activity_id)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data. Spelled out rather than `dataclasses.asdict`, which deep-copies the raw
        payload and was most of a worker's time; `raw_redacted` is shared, not copied, so do not mutate it."""
        entity, actor = self.entity, self.actor
        return {
            "record_id": self.record_id,
            "event_id": self.event_id,
            "tenant": self.tenant,
            "topic": self.topic,
            "time": self.time,
            "received_at": self.received_at,
            "activity_id": int(self.activity_id),
            "severity_id": int(self.severity_id),
            "entity": {
                "type": str(entity.type),
                "uid": entity.uid,
                "name": entity.name,
                "fingerprint": entity.fingerprint,
                "prefix": entity.prefix,
                "last4": entity.last4,
            },
            "project_id": self.project_id,
            "account_id": self.account_id,
            "actor": {"uid": actor.uid, "type": actor.type} if actor else None,
            "metadata": dict(self.metadata),
            "raw_sha256": self.raw_sha256,
            "raw_redacted": self.raw_redacted,
            "class_uid": self.class_uid,
            "category_uid": self.category_uid,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "type_uid": self.type_uid,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRecord:
        values = {k: v for k, v in data.items() if k != "type_uid"}
        entity = dict(values.pop("entity"))
        entity["type"] = EntityType(entity["type"])
        actor = values.pop("actor", None)
        values["activity_id"] = Activity(values["activity_id"])
        values["severity_id"] = Severity(values["severity_id"])
        return cls(**values, entity=Entity(**entity), actor=Actor(**actor) if actor else None)

    def chained(self, prev_hash: str) -> AuditRecord:
        """This record placed after `prev_hash`: hash = SHA-256(prev_hash ‖ canonical JSON of the rest)."""
        linked = replace(self, prev_hash=prev_hash, hash="")
        return replace(linked, hash=chain_hash(prev_hash, linked.canonical_json()))

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, `hash` left out: the bytes the chain hash covers."""
        data = self.to_dict()
        data.pop("hash")
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical.encode("utf-8")).hexdigest()
