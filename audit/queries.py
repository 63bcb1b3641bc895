"""Filters as users type them (CLI flags, API query parameters) → a `RecordQuery` for the store; page cursors."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from audit.stores.base import AuditStore, RecordQuery, StoredRecord
from events.records import AuditRecord, EntityType
from events.times import TimeOutOfRange, format_utc, parse_utc

RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FINGERPRINT = re.compile(r"^fp_[0-9a-f]{32}$")
KEY_PREFIX = re.compile(r"^(?:live|test)_(?:access_)?$")
ENTITY_TYPES = {t.value.lower().replace(" ", "-"): t.value for t in EntityType}
FILTERS = ("tenant", "topic", "key", "project", "account", "entity_type", "event_id", "since", "until")


class QueryError(ValueError):
    """A filter value that cannot be used; the message (one line) names the filter and says what would work."""


# Every value a user types is bounded here, so that none can overflow a datetime, a timedelta or a store's
# integers, or carry a byte the store refuses (NUL in PostgreSQL text, a lone surrogate in UTF-8) deeper down.
MAX_TEXT = 1024  # characters of one free-text value: tenant, topic glob, ids, a key
MAX_TIME_TEXT = 64
MAX_CURSOR = 512  # an issued cursor is about 100 characters
MAX_SEQ = 2**63 - 1  # a store position: SQLite INTEGER and PostgreSQL BIGINT
MAX_AGE = timedelta(days=36525)  # how far back a relative time reaches: 100 years
UNUSABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # control characters and lone surrogates
CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+={0,2}")
TIME_HINT = "use ISO 8601 like 2026-11-01T10:00:00Z, or relative like 24h / 7d"
NOT_ISSUED = "cursor is not one this server issued"


def quoted(value: str, width: int = 40) -> str:
    """A user's value as it may appear in an error: quoted, escaped (one printable line whatever it holds) and cut."""
    shown = repr(value[:width])
    return shown if len(value) <= width else shown[:-1] + "…" + shown[-1]


def parse_text(name: str, value: str, *, max_length: int = MAX_TEXT) -> str:
    """A free-text value (tenant, topic glob, an id, a key) without surrounding blanks; QueryError if it is empty,
    longer than `max_length`, or holds a control character or a lone surrogate."""
    text = value.strip()
    if not text:
        raise QueryError(f"{name} must not be empty")
    if len(text) > max_length:
        raise QueryError(f"{name} is longer than {max_length} characters")
    if UNUSABLE.search(text):
        raise QueryError(f"{name} must not contain control characters or lone surrogates")
    return text


def parse_count(name: str, value: str, *, maximum: int, minimum: int = 1) -> int:
    """A whole number as typed, in ASCII digits only (`str.isdigit` also takes `²`; `int` takes other scripts'
    digits, `_` and signs), within bounds."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise QueryError(f"{name} must be a whole number from {minimum} to {maximum}")
    significant = text.lstrip("0") or "0"
    if len(significant) > len(str(maximum)) or not minimum <= int(significant) <= maximum:
        raise QueryError(f"{name} must be between {minimum} and {maximum}")
    return int(significant)


def parse_time(value: str, *, now: datetime | None = None) -> str:
    """ISO 8601 (`2026-11-01`, `2026-11-01T10:00:00Z`) or relative to now (`24h`, `7d`, at most 100 years back)
    → ISO UTC with ms and `Z`, the format records store, so times compare as strings. A time outside years
    1..9999 once in UTC is a QueryError, as is anything else that is not a time."""
    moment = now or datetime.now(UTC)
    text = value.strip()
    if len(text) > MAX_TIME_TEXT or UNUSABLE.search(text):
        raise QueryError(f"not a time: {quoted(value)} ({TIME_HINT})")
    match = RELATIVE.match(text) if text.isascii() else None  # `\d` alone would take other scripts' digits
    if match:
        age = timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
        if age > MAX_AGE:
            raise QueryError(f"{text} reaches back more than {MAX_AGE.days} days; give a date instead")
        try:
            parsed = moment - age
        except OverflowError:
            raise QueryError(f"{text} reaches back before year 1") from None
    else:
        try:
            parsed = parse_utc(text)
        except TimeOutOfRange:
            raise QueryError(f"time out of range: {quoted(value)} (years 1 to 9999, in UTC)") from None
        except ValueError:
            raise QueryError(f"not a time: {quoted(value)} ({TIME_HINT})") from None
    return format_utc(parsed)


def parse_entity_type(value: str) -> str:
    """`api-key`, `API Key`, `access-key`, `project`, `unknown` (any case) → the stored entity type."""
    normalized = value.strip().lower().replace(" ", "-").replace("_", "-")
    if normalized not in ENTITY_TYPES:
        raise QueryError(f"entity type {quoted(value)} is not one of {', '.join(ENTITY_TYPES)}")
    return ENTITY_TYPES[normalized]


def key_filter(value: str, fingerprint_of: Callable[[str], str]) -> dict[str, str]:
    """`--key`: a fingerprint (`fp_…`) is used as is, a bare prefix (`live_`, `test_access_`) matches every key
    with it, and anything else is a raw key, fingerprinted here with the local pepper and then forgotten."""
    text = parse_text("key", value)
    if FINGERPRINT.match(text):
        return {"fingerprint": text}
    if KEY_PREFIX.match(text):
        return {"key_prefix": text}
    return {"fingerprint": fingerprint_of(text)}


def encode_cursor(seq: int, order: str, time: str | None = None) -> str:
    """An opaque page token: the last record's position and the order it belongs to."""
    state: dict[str, Any] = {"s": seq, "o": order}
    if time is not None:
        state["t"] = time
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, order: str) -> tuple[int, str | None]:
    """The position and time an `encode_cursor` token names. Cursors are not signed: a client may forge one, so
    every field is checked to be what this server could have issued (a position a store integer holds, a time
    that is plain text), and anything else is a QueryError."""
    text = token.strip()
    if not text:
        raise QueryError("cursor must not be empty")
    if len(text) > MAX_CURSOR or not CURSOR_TEXT.fullmatch(text):
        raise QueryError(NOT_ISSUED)
    try:
        state = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        seq, time, cursor_order = state["s"], state.get("t"), state["o"]
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise QueryError(NOT_ISSUED) from None
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise QueryError(NOT_ISSUED)
    if time is not None and (not isinstance(time, str) or len(time) > MAX_TIME_TEXT or UNUSABLE.search(time)):
        raise QueryError(NOT_ISSUED)
    if cursor_order != order or (order == "event_time") != (time is not None):
        raise QueryError(f"cursor belongs to a query in another order (this one is {order})")
    return seq, time


ORDERS = ("newest", "oldest", "event_time")


def query_order(query: RecordQuery) -> str:
    return "event_time" if query.event_time_order else "oldest" if query.oldest_first else "newest"


def next_cursor(query: RecordQuery, last: StoredRecord | tuple[int, AuditRecord]) -> str:
    """The cursor for the page after one that ended with `last`."""
    if isinstance(last, StoredRecord):
        seq = last.seq
        time = last.data()["time"] if query.event_time_order else None
    else:
        seq, record = last
        time = record.time if query.event_time_order else None
    return encode_cursor(seq, query_order(query), time)


def build_query(
    filters: Mapping[str, str | None],
    *,
    fingerprint_of: Callable[[str], str],
    limit: int = 100,
    max_limit: int = 1000,
    order: str = "newest",
    cursor: str | None = None,
    now: datetime | None = None,
) -> RecordQuery:
    """One RecordQuery from user-typed filters (names as in FILTERS; None means unset, blank is an error).

    Raises QueryError naming the first bad value, so the CLI prints one line and the API answers 400."""
    unknown = sorted(name for name, value in filters.items() if value is not None and name not in FILTERS)
    if unknown:
        raise QueryError(f"unknown filter {quoted(unknown[0])} (filters: {', '.join(FILTERS)})")
    # A blank value is an error, not "no filter": `--key "$KEY"` with KEY unset must not turn "this key's
    # history" into "everything".
    values = {name: parse_text(name, value) for name, value in filters.items() if value is not None}
    if order not in ORDERS:
        raise QueryError(f"order must be one of {', '.join(ORDERS)}")
    if not 1 <= limit <= max_limit:
        raise QueryError(f"limit must be between 1 and {max_limit}")
    fields: dict[str, Any] = {
        "limit": limit,
        "oldest_first": order == "oldest",
        "event_time_order": order == "event_time",
        **{target: values[name] for name, target in PLAIN_FILTERS.items() if name in values},
        **_times(values, now),
    }
    if "key" in values:
        fields.update(key_filter(values["key"], fingerprint_of))
    if "entity_type" in values:
        fields["entity_type"] = parse_entity_type(values["entity_type"])
    if cursor is not None:
        fields["before_seq"], fields["cursor_time"] = decode_cursor(cursor, order)
    return RecordQuery(**fields)


PLAIN_FILTERS = {
    "tenant": "tenant",
    "topic": "topic",
    "project": "project_id",
    "account": "account_id",
    "event_id": "event_id",
}


def _times(values: Mapping[str, str], now: datetime | None) -> dict[str, str]:
    times: dict[str, str] = {}
    for name in ("since", "until"):
        if name in values:
            try:
                times[name] = parse_time(values[name], now=now)
            except QueryError as exc:
                raise QueryError(f"{name}: {exc}") from None
    if "since" in times and "until" in times and times["since"] >= times["until"]:
        raise QueryError("since must be before until")
    return times


def search_page(store: AuditStore, query: RecordQuery) -> tuple[list[tuple[int, AuditRecord]], str | None]:
    """One page and the cursor of the next (None on the last page): reads one record more than it returns."""
    found = store.search(replace(query, limit=query.limit + 1))
    page = found[: query.limit]
    return page, next_cursor(query, page[-1]) if len(found) > query.limit else None
