"""Times on the wire and in records: ISO 8601 read into aware UTC datetimes, written as `2026-11-28T10:00:00.123Z`.

Records store their times in that one form (UTC, milliseconds, `Z`), so times compare as strings. Reading is
lenient in what ISO 8601 allows (`Z` or `z`, an offset, none at all meaning UTC, any fraction) and strict about
range: a time that names no instant of years 1 to 9999 once in UTC (`0001-01-01T00:00:00+01:00` is year 0 in UTC,
`9999-12-31T23:59:59-01:00` is year 10000) is refused here, once, instead of overflowing in whoever uses it.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

MAX_TIME_TEXT = 64  # longer text is no time a sender means (and parsing it is wasted work)


class TimeOutOfRange(ValueError):
    """The text is an ISO 8601 time, but outside years 1 to 9999 once in UTC."""


def parse_utc(text: str) -> datetime:
    """ISO 8601 → an aware datetime in UTC; a time without an offset is UTC. Raises ValueError when the text is no
    ISO 8601 time, and TimeOutOfRange (a ValueError) when it lies outside what a datetime holds once in UTC."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise TimeOutOfRange(f"time out of range: {text!r}") from None


def utc_or_none(value: object) -> datetime | None:
    """`parse_utc` for values from outside (a payload field, a record's time): None for anything that is not a
    usable time — not a string, empty, longer than `MAX_TIME_TEXT`, not ISO 8601, or out of range."""
    if not isinstance(value, str) or not value or len(value) > MAX_TIME_TEXT:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


def format_utc(moment: datetime) -> str:
    """The record form: UTC, milliseconds, `Z` (`2026-11-28T10:00:00.123Z`). A naive `moment` is local time."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=2)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def now_utc() -> str:
    """Now, in the record form. The receiver stamps every request with it, so each second's prefix is formatted
    once (a cache, safe across threads) instead of building a datetime per call."""
    now = time.time()
    second = int(now)
    return f"{_second_text(second)}.{int((now - second) * 1000):03d}Z"
