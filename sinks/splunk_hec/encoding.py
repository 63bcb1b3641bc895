"""HEC encoding, pure: an audit record → its event envelope → one line of an `/event` request body."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from events.records import AuditRecord
from events.times import utc_or_none

DEFAULT_SOURCE = "theauthapi"
DEFAULT_SOURCETYPE = "keytrail:audit"


def render_event(
    record: AuditRecord,
    *,
    index: str | None = None,
    source: str | None = DEFAULT_SOURCE,
    sourcetype: str | None = DEFAULT_SOURCETYPE,
    host: str | None = None,
) -> dict[str, Any]:
    """The HEC envelope of one record. Only keys HEC knows (an unknown key makes it drop events silently, §1.3);
    metadata on every envelope (it does not carry over between objects); `fields` flat strings for dedupe."""
    envelope: dict[str, Any] = {}
    epoch = epoch_seconds(record.time)
    if epoch is not None:
        envelope["time"] = epoch
    for key, value in (("host", host), ("source", source), ("sourcetype", sourcetype), ("index", index)):
        if value:
            envelope[key] = value
    envelope["event"] = record.to_dict()
    envelope["fields"] = {"event_id": str(record.event_id), "tenant": str(record.tenant), "topic": str(record.topic)}
    return envelope


def render_batch(
    records: Sequence[AuditRecord],
    *,
    index: str | None = None,
    source: str | None = DEFAULT_SOURCE,
    sourcetype: str | None = DEFAULT_SOURCETYPE,
    host: str | None = None,
) -> bytes:
    """One `/event` request body: the envelopes as concatenated JSON objects, one per line (not a JSON array)."""
    return b"".join(
        encode_envelope(render_event(r, index=index, source=source, sourcetype=sourcetype, host=host)) for r in records
    )


def encode_envelope(envelope: Mapping[str, Any]) -> bytes:
    """One line of a request body. NaN/Infinity are not JSON and would fail the whole request at HEC: refuse here."""
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def epoch_seconds(timestamp: str) -> float | None:
    """ISO 8601 → epoch seconds with millisecond precision (HEC's `time`); naive times are UTC; None if unreadable."""
    parsed = utc_or_none(timestamp)
    return None if parsed is None else round(parsed.timestamp(), 3)
