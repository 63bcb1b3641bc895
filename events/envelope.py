"""Reads The Auth API's (undocumented) delivery envelope defensively: topic, entity, event GUID, event time.

The receiver parses the envelope from the already-redacted payload, so a key placed in `id` or `topic` cannot
become an event key or a job's topic in clear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TOPIC_FIELDS = ("topic", "event", "type", "eventType")
DATA_FIELDS = ("data", "payload", "body")
ID_FIELDS = ("id", "eventId", "uuid", "guid")
TIME_FIELDS = ("createdAt", "timestamp", "time", "occurredAt", "sentAt")
GUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{7,127}$")


# Not frozen: a frozen dataclass's __init__ costs ~3x (one object.__setattr__ per field), and the receiver builds
# one per delivery; nothing mutates an Envelope.
@dataclass(slots=True)
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


def event_key(envelope: Envelope, body_digest: str) -> str:
    """The dedupe key: the envelope's GUID, else `body_digest` (same bytes, same event). The receiver passes the
    HMAC-SHA256 of the raw body keyed by the pepper (`Redactor.body_digest`), never a plain hash: the body may hold
    a short custom key that a plain hash would let anyone recover by guessing."""
    return envelope.guid or body_digest
