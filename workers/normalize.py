"""Pure functions that turn one accepted (already redacted) event into an OCSF-shaped AuditRecord.

No I/O, no clock reads, no logging: the same event in always gives the same record out.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from ingest.envelope import parse_envelope
from ingest.redaction import is_redacted
from workers.records import Activity, Actor, AuditRecord, Entity, EntityType, Severity

ENTITY_BY_RESOURCE = {
    "api-key": EntityType.API_KEY,
    "access-key": EntityType.ACCESS_KEY,
    "project": EntityType.PROJECT,
}
ACTIVITY_BY_VERB = {
    "created": Activity.CREATE,
    "updated": Activity.UPDATE,
    "deleted": Activity.DELETE,
}
# Changes to management credentials matter more to a security team than changes to client keys.
SEVERITY = {
    "access-key.created": Severity.MEDIUM,
    "access-key.updated": Severity.MEDIUM,
    "access-key.deleted": Severity.MEDIUM,
    "api-key.deleted": Severity.LOW,
    "project.updated": Severity.LOW,
    "api-key.created": Severity.INFORMATIONAL,
    "api-key.updated": Severity.INFORMATIONAL,
    "api-key.firstUsed": Severity.INFORMATIONAL,
}
UNKNOWN_TOPIC = "unknown"


def record_id(tenant: str, event_id: str, received_at: str) -> str:
    """Derived from the accepted event, so normalizing it twice (an RQ retry) names the same record. A redelivery
    (another receipt time) gets another id, but is never stored: the store is idempotent on (tenant, event id).

    Time-ordered: the receipt time in milliseconds (12 hex digits), then 12 hex digits of a hash of tenant and
    event id. New records land at the end of the id indexes instead of on random pages, so appends do not slow
    down as the store grows."""
    moment = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
    millis = int(moment.timestamp() * 1000)
    return f"rec_{millis:012x}" + hashlib.sha256(f"{tenant}\n{event_id}".encode()).hexdigest()[:12]


def classify_topic(topic: str, entity: dict[str, Any]) -> tuple[EntityType, Activity]:
    resource, _, verb = topic.partition(".")
    entity_type = ENTITY_BY_RESOURCE.get(resource) or infer_entity_type(entity)
    return entity_type, ACTIVITY_BY_VERB.get(verb, Activity.OTHER)


def infer_entity_type(entity: dict[str, Any]) -> EntityType:
    """For bodies without a known topic: guess from the shape (reference §3.5)."""
    key = entity.get("key")
    if isinstance(key, dict) and is_redacted(key):
        return EntityType.ACCESS_KEY if str(key.get("prefix", "")).endswith("access_") else EntityType.API_KEY
    if "env" in entity and "accountId" in entity and "name" in entity:
        return EntityType.PROJECT
    return EntityType.UNKNOWN


def normalize_time(value: Any) -> str | None:
    """ISO 8601 in UTC with milliseconds and `Z`, or None when the value is not a usable time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _entity(entity_type: EntityType, data: dict[str, Any]) -> Entity:
    key = next((data[name] for name in ("key", "token", "accessKey") if is_redacted(data.get(name))), None)
    name = _str(data.get("name"))
    if key is not None:
        return Entity(
            type=entity_type,
            uid=key["fingerprint"],
            name=name,
            fingerprint=key["fingerprint"],
            prefix=key.get("prefix") or None,
            last4=key.get("last4") or None,
        )
    return Entity(type=entity_type, uid=_str(data.get("id")), name=name)


def _actor(data: dict[str, Any], activity: Activity) -> Actor | None:
    order = ("createdBy", "lastChangedBy") if activity is Activity.CREATE else ("lastChangedBy", "createdBy")
    for field in order:
        uid = _str(data.get(field))
        if uid is not None:
            return Actor(uid=uid, type=_str(data.get(f"{field}Type")))
    return None


def normalize(event: dict[str, Any], *, version: str) -> AuditRecord:
    """One accepted event (the receiver's `AcceptedEvent` as a dict) → its audit record, unchained."""
    payload = json.loads(event["body"])
    envelope = parse_envelope(payload)
    topic = envelope.topic or event.get("topic") or UNKNOWN_TOPIC
    entity_type, activity = classify_topic(topic, envelope.entity)
    data = envelope.entity
    if entity_type is EntityType.PROJECT:
        project_id = _str(data.get("id")) or envelope.project_id
    else:
        project_id = _str(data.get("projectId")) or envelope.project_id
    received_at = event["received_at"]
    event_time = (
        normalize_time(envelope.time)
        or normalize_time(data.get("updatedAt") if activity is not Activity.CREATE else data.get("createdAt"))
        or received_at
    )
    return AuditRecord(
        record_id=record_id(event["tenant"], event["event_key"], event["received_at"]),
        event_id=event["event_key"],
        tenant=event["tenant"],
        topic=topic,
        time=event_time,
        received_at=received_at,
        activity_id=activity,
        severity_id=SEVERITY.get(topic, Severity.LOW),
        entity=_entity(entity_type, data),
        project_id=project_id,
        account_id=_str(data.get("accountId")) or envelope.account_id,
        actor=_actor(data, activity),
        metadata={
            "product": "The Auth API",
            "keytrail_version": version,
            "envelope": "wrapped" if envelope.wrapped else "bare",
        },
        raw_sha256=event["raw_sha256"],
        raw_redacted=payload,
    )
