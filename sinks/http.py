"""Reading a peer's Retry-After, shared by the HTTP sinks and The Auth API client."""

from __future__ import annotations

import math
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

# A peer asking for more than a day is misconfigured or hostile; never wait longer than this on its word.
MAX_RETRY_AFTER = 24 * 3600.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from `now` (unix time, default: the clock): delta-seconds (decimals accepted) or
    an HTTP date; clamped to 0..MAX_RETRY_AFTER; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
