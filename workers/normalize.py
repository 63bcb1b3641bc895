"""Pure functions that turn one accepted (already redacted) event into an OCSF-shaped AuditRecord.

No I/O, no clock reads, no logging: the same event in always gives the same record out. Whatever the event holds,
the record can be stored and rendered: strings are valid UTF-8 without NUL, integers fit 64 bits, floats are
finite and nesting is bounded (`clean`); an event that still defeats the normalizer becomes `unreadable_record`.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import orjson

from events.envelope import parse_envelope
from events.records import Activity, Actor, AuditRecord, Entity, EntityType, Severity
from events.redaction import is_redacted
from events.times import format_utc, utc_or_none

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
EPOCH = "1970-01-01T00:00:00.000Z"  # the receipt time of a job entry without a usable one (never from a receiver)
MAX_DEPTH = 128  # nesting kept in a stored body; deeper values become TOO_DEEP (orjson refuses 255 levels)
TOO_DEEP = "<nested too deep>"
MAX_FIELD = 512  # characters of an indexed column (PostgreSQL refuses btree entries over ~2.7 kB)


def record_id(tenant: str, event_id: str, received_at: str) -> str:
    """Derived from the accepted event, so normalizing it twice (an RQ retry) names the same record. A redelivery
    (another receipt time) gets another id, but is never stored: the store is idempotent on (tenant, event id).

    Time-ordered: the receipt time in milliseconds (12 hex digits), then 12 hex digits of a hash of tenant and
    event id. New records land at the end of the id indexes instead of on random pages, so appends do not slow
    down as the store grows."""
    moment = utc_or_none(received_at)
    millis = max(0, int(moment.timestamp() * 1000)) if moment else 0
    digest = hashlib.sha256(f"{tenant}\n{event_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"rec_{millis:012x}" + digest[:12]


def classify_topic(topic: str, entity: dict[str, Any]) -> tuple[EntityType, Activity]:
    resource, _, verb = topic.partition(".")
    entity_type = ENTITY_BY_RESOURCE.get(resource) or infer_entity_type(entity)
    return entity_type, ACTIVITY_BY_VERB.get(verb, Activity.OTHER)


def infer_entity_type(entity: dict[str, Any]) -> EntityType:
    """For bodies without a known topic: guess from the shape (reference §3.5)."""
    key = entity.get("key")
    if isinstance(key, dict) and is_redacted(key):
        return EntityType.ACCESS_KEY if (_str(key.get("prefix")) or "").endswith("access_") else EntityType.API_KEY
    if "env" in entity and "accountId" in entity and "name" in entity:
        return EntityType.PROJECT
    return EntityType.UNKNOWN


def normalize_time(value: Any) -> str | None:
    """ISO 8601 in UTC with milliseconds and `Z`, or None when the value is not a usable time (see events.times)."""
    parsed = utc_or_none(value)
    return None if parsed is None else format_utc(parsed)


def _utf8(value: str) -> str:
    """The string as UTF-8 can carry it: a lone surrogate (valid in JSON text, not in UTF-8) becomes its escape."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _str(value: Any) -> str | None:
    """A non-empty string field as a column can hold it: UTF-8, no NUL (PostgreSQL text refuses it), at most
    MAX_FIELD characters. Anything else is None."""
    if not isinstance(value, str) or not value:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return _utf8(value[:MAX_FIELD])


def _entity(entity_type: EntityType, data: dict[str, Any]) -> Entity:
    key = next((data[name] for name in ("key", "token", "accessKey") if is_redacted(data.get(name))), None)
    name = _str(data.get("name"))
    fingerprint = _str(key.get("fingerprint")) if key is not None else None
    if key is not None and fingerprint is not None:
        return Entity(
            type=entity_type,
            uid=fingerprint,
            name=name,
            fingerprint=fingerprint,
            prefix=_str(key.get("prefix")),
            last4=_str(key.get("last4")),
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
    """One accepted event (the receiver's `AcceptedEvent` as a dict) → its audit record, unchained. Raises when
    the event cannot be read; the caller then keeps `unreadable_record(event)` instead (never drops it)."""
    tenant, event_id, received_at = _identity(event)
    parsed = parse_body(event["body"])
    payload = clean(parsed)
    if not isinstance(payload, dict):
        raise TypeError(f"body is a JSON {type(payload).__name__}, not an object")
    envelope = parse_envelope(payload)
    topic = _str(envelope.topic) or _str(event.get("topic")) or UNKNOWN_TOPIC
    entity_type, activity = classify_topic(topic, envelope.entity)
    data = envelope.entity
    if entity_type is EntityType.PROJECT:
        project_id = _str(data.get("id")) or _str(envelope.project_id)
    else:
        project_id = _str(data.get("projectId")) or _str(envelope.project_id)
    event_time = (
        normalize_time(envelope.time)
        or normalize_time(data.get("updatedAt") if activity is not Activity.CREATE else data.get("createdAt"))
        or received_at
    )
    metadata = {"product": "The Auth API", "keytrail_version": version, "envelope": "bare"}
    if envelope.wrapped:
        metadata["envelope"] = "wrapped"
    if payload is not parsed:
        metadata["sanitized"] = "true"  # some value was rewritten to be storable (see `clean`)
    record = AuditRecord(
        record_id=record_id(tenant, event_id, received_at),
        event_id=event_id,
        tenant=tenant,
        topic=topic,
        time=event_time,
        received_at=received_at,
        activity_id=activity,
        severity_id=SEVERITY.get(topic, Severity.LOW),
        entity=_entity(entity_type, data),
        project_id=project_id,
        account_id=_str(data.get("accountId")) or _str(envelope.account_id),
        actor=_actor(data, activity),
        metadata=metadata,
        raw_sha256=_str(event.get("raw_sha256")) or "",
        raw_redacted=payload,
    )
    orjson.dumps(record.to_dict())  # the strictest encoder on the path: a record it refuses is unreadable
    return record


def unreadable_record(event: Any, *, version: str, error: str) -> AuditRecord:
    """The record kept for an event that defeats `normalize`: a generic entity event, built only from the job's
    own fields, each checked, so that it cannot fail whatever the event holds. The body is left out."""
    tenant, event_id, received_at = _identity(event)
    topic = _str(event.get("topic")) if isinstance(event, dict) else None
    raw_sha256 = _str(event.get("raw_sha256")) if isinstance(event, dict) else None
    return AuditRecord(
        record_id=record_id(tenant, event_id, received_at),
        event_id=event_id,
        tenant=tenant,
        topic=topic or UNKNOWN_TOPIC,
        time=received_at,
        received_at=received_at,
        activity_id=Activity.OTHER,
        severity_id=Severity.LOW,
        entity=Entity(type=EntityType.UNKNOWN),
        metadata={"product": "The Auth API", "keytrail_version": version, "envelope": "unreadable"},
        raw_sha256=raw_sha256 or "",
        raw_redacted={"unparsed": True, "error": _str(error) or "unknown"},
    )


def _identity(event: Any) -> tuple[str, str, str]:
    """Tenant, event id and receipt time from the job's own fields (set by the receiver, never by the body), the
    same on the normal and the unreadable path: a retried event is stored once whichever path it takes."""
    fields: dict[str, Any] = event if isinstance(event, dict) else {}
    tenant = _str(fields.get("tenant")) or "unknown"
    received_at = normalize_time(fields.get("received_at")) or EPOCH
    event_id = _str(fields.get("event_key")) or _str(fields.get("raw_sha256")) or _digest(event)
    return tenant, event_id, received_at


def _digest(event: Any) -> str:
    """A stable name for a job entry that carries no event key at all."""
    try:
        canonical = json.dumps(event, sort_keys=True, default=repr).encode("ascii")
    except (ValueError, TypeError, RecursionError):
        canonical = b"unidentifiable"
    return hashlib.sha256(canonical).hexdigest()


def parse_body(body: str) -> Any:
    """The redacted body as JSON data. `NaN`, `Infinity` and numbers too large for a float stay text: sinks write
    strict JSON, where they do not exist."""
    return json.loads(body, parse_constant=str, parse_float=_finite_float)


def _finite_float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def clean(value: Any) -> Any:
    """`value` itself when every store and sink can encode it (orjson is the strictest encoder on the path: UTF-8
    only, 64-bit integers, bounded depth), else a rewritten copy. An older receiver let such bodies through."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _rewritten(value)
    return value


def _rewritten(value: Any) -> Any:
    """A copy with lone surrogates escaped, out-of-range integers as text and nesting cut at MAX_DEPTH. Walks
    with its own stack, so no depth can exhaust Python's."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    while stack:
        source, target, slot, depth = stack.pop()
        if isinstance(source, dict | list) and depth >= MAX_DEPTH:
            target[slot] = TOO_DEEP
        elif isinstance(source, dict):
            copy: dict[str, Any] = {}
            target[slot] = copy
            for key, item in source.items():
                name = _utf8(key if isinstance(key, str) else str(key))
                copy[name] = None
                stack.append((item, copy, name, depth + 1))
        elif isinstance(source, list):
            items: list[Any] = [None] * len(source)
            target[slot] = items
            stack.extend((item, items, index, depth + 1) for index, item in enumerate(source))
        else:
            target[slot] = _scalar(source)
    return root[0]


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else _integer_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return _utf8(value if isinstance(value, str) else type(value).__name__)


def _integer_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # more digits than Python will print
        return f"<integer of {value.bit_length()} bits>"
