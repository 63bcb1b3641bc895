"""Reads The Auth API's (undocumented) delivery envelope defensively: topic, entity, event GUID, event time."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

TOPIC_FIELDS = ("topic", "event", "type", "eventType")
DATA_FIELDS = ("data", "payload", "body")
ID_FIELDS = ("id", "eventId", "uuid", "guid")
TIME_FIELDS = ("createdAt", "timestamp", "time", "occurredAt", "sentAt")
GUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{7,127}$")


@dataclass(frozen=True, slots=True)
class Envelope:
    topic: str | None
    entity: dict[str, Any]
    # True when the body wraps the entity (`data`/`payload`/`body`); False for a bare entity.
    wrapped: bool
    guid: str | None
    time: str | None
    project_id: str | None
    account_id: str | None


def _first_str(body: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def parse_envelope(body: dict[str, Any]) -> Envelope:
    topic = _first_str(body, TOPIC_FIELDS)
    for name in DATA_FIELDS:
        inner = body.get(name)
        if isinstance(inner, dict):
            guid = _first_str(body, ID_FIELDS)
            return Envelope(
                topic=topic,
                entity=inner,
                wrapped=True,
                guid=guid if guid and GUID.match(guid) else None,
                time=_first_str(body, TIME_FIELDS),
                project_id=_first_str(body, ("projectId",)),
                account_id=_first_str(body, ("accountId",)),
            )
    # A bare entity: its own `id` names the project or key, not the event, so it is no event GUID.
    return Envelope(topic=topic, entity=body, wrapped=False, guid=None, time=None, project_id=None, account_id=None)


def event_key(envelope: Envelope, raw: bytes) -> str:
    """The dedupe key: the envelope's GUID, else the SHA-256 of the raw body (same bytes, same event)."""
    return envelope.guid or hashlib.sha256(raw).hexdigest()
