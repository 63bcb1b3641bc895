"""HEC classification, pure: one answer to an `/event` request (status + `code`) → one Verdict, by the code table.

Every row comes from reference/sinks.md §1.6 (the code table) and §1.7 (`invalid-event-number`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any

from sinks.errors import SinkDisabled, SinkError, SinkRejected, SinkUnavailable
from sinks.http import parse_retry_after

# The HEC code table (§1.6), grouped by what we do about a code.
RETRY_CODES = frozenset({8, 9, 18, 19, 20})
# Config (or a proxy eating our body: we never send an empty one, so code 5 is not about the records): hold + alert.
ALERT_CODES = frozenset({1, 2, 3, 4, 5, 10, 11, 14, 16, 21, 22})
# One event was bad; `invalid-event-number` says which, and HEC indexed the ones before it (§1.7).
PER_EVENT_CODES = frozenset({6, 12, 13, 15})
INCORRECT_INDEX = 7
REASON_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Accepted:
    """200 code 0: HEC took every event of the request; with acks on, they count once `ack_id` reads true."""

    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class EventRefused:
    """400 with `invalid-event-number`: events before `position` are indexed, the one at `position` is refused for
    `reason`, and the ones after it were never read (send them again)."""

    position: int
    reason: str


@dataclass(frozen=True, slots=True)
class Split:
    """The request was refused as a whole (413, or a bad event HEC did not locate): send each half on its own; a
    single event that is still refused is rejected for `reason`."""

    reason: str


# A SinkError member is the fate of the whole request: SinkUnavailable (retry, maybe alert), SinkRejected, SinkDisabled.
Verdict = Accepted | EventRefused | Split | SinkError


def classify(  # noqa: PLR0911 - one return per row of the HEC code table
    status: int,
    body: bytes | Mapping[str, Any],
    n_events: int,
    *,
    retry_after: str | None = None,
    index: str | None = None,
    now: datetime | None = None,
) -> Verdict:
    """What an answer to a request of `n_events` events means, by the HEC code table (§1.6, §1.7).

    `retry_after` is the raw Retry-After header; `index` the configured index, named in a code 7 reason.
    """
    payload = read_payload(body)
    code = as_int(payload.get("code"))
    label = describe(status, code, payload)
    hint = parse_retry_after(retry_after, now=now)

    if 200 <= status < 300:
        if code in (None, 0):
            return Accepted(ack_id=as_int(payload.get("ackId")))
        return SinkUnavailable(f"{label}: not an answer to an event request; check the url", alert=True)
    if status == 413:
        return Split(label)
    if status in (401, 403) or code in ALERT_CODES:
        return SinkUnavailable(f"{label}: check the sink's token and HEC settings", retry_after=hint, alert=True)
    if code in PER_EVENT_CODES:
        position = as_int(payload.get("invalid-event-number"))
        if position is not None and 0 <= position < n_events:
            return EventRefused(position, label)
        return EventRefused(0, label) if n_events == 1 else Split(label)
    if code == INCORRECT_INDEX:
        # Every envelope carries the one configured index, so the whole request shares the refusal.
        where = f"index {index!r}" if index else "the token's default index"
        return SinkRejected(f"{label}: {where} is not allowed for this token")
    if status in (408, 429) or status >= 500 or code in RETRY_CODES:
        return SinkUnavailable(label, retry_after=hint)
    if status == 410:
        return SinkDisabled(label)
    if status in (404, 405, 415):
        # A wrong URL or a proxy that refuses gzip is configuration, not a property of these records.
        return SinkUnavailable(f"{label}: check the sink's url and gzip settings", retry_after=hint, alert=True)
    if 400 <= status < 500:
        return SinkRejected(label)
    return SinkUnavailable(f"{label}: unexpected answer; check the sink's url", retry_after=hint, alert=True)


def read_payload(body: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """HEC's JSON answer, or {} when the body is not a JSON object (a proxy's error page)."""
    if isinstance(body, Mapping):
        return body
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe(status: int, code: int | None, payload: Mapping[str, Any], what: str = "HEC") -> str:
    """`HEC <status> code <code>: <text>`, the text from the answer or else the status phrase, on one short line."""
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = "unknown status"
    text = " ".join(text.split())[:REASON_LIMIT]
    return f"{what} {status}" + (f" code {code}" if code is not None else "") + f": {text}"
