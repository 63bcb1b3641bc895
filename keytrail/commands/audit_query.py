"""From command-line arguments to audit-store reads: values parsed as the HTTP API parses them, filters → query."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from keytrail.cli import CliError

if TYPE_CHECKING:  # the stores are imported by the commands that use them: `keytrail --help` stays fast
    from audit.stores.base import AuditStore, RecordQuery
    from config.settings import Settings

SEARCH_LIMIT_MAX = 10_000  # a page, not an export: `audit export` streams any size


def parse_when(value: str, *, now: datetime | None = None) -> str:
    """ISO 8601 (`2026-11-01`, `2026-11-01T10:00:00Z`) or relative to now (`24h`, `7d`) → ISO UTC with `Z`."""
    from audit.queries import QueryError, parse_time

    try:
        return parse_time(value, now=now)
    except QueryError as exc:
        raise CliError(str(exc)) from None


def count(name: str, maximum: int, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number in ASCII digits within bounds, parsed as the HTTP API parses `limit`
    (a bad value is argparse's one-line usage error, exit 2)."""

    def parse(value: str) -> int:
        from audit.queries import QueryError, parse_count

        try:
            return parse_count(name, value, minimum=minimum, maximum=maximum)
        except QueryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def text(name: str, max_length: int | None = None) -> Callable[[str], str]:
    """An argparse type: free text as the HTTP API takes it (not blank, bounded, no control characters)."""

    def parse(value: str) -> str:
        from audit.queries import MAX_TEXT, QueryError, parse_text

        try:
            return parse_text(name, value, max_length=max_length or MAX_TEXT)
        except QueryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def seconds(name: str, minimum: float, maximum: float) -> Callable[[str], float]:
    """An argparse type: seconds as a plain decimal (no `nan`, `inf` or exponent) within bounds."""

    def parse(value: str) -> float:
        stripped = value.strip()
        plain = stripped.isascii() and stripped.replace(".", "", 1).isdigit() and len(stripped) <= 12
        if not plain or not minimum <= float(stripped) <= maximum:
            raise argparse.ArgumentTypeError(f"{name} must be a number of seconds from {minimum:g} to {maximum:g}")
        return float(stripped)

    return parse


def add_filters(parser: argparse.ArgumentParser) -> None:
    """The record filters of `search`, `tail` and `export`, named as the HTTP API names them."""
    group = parser.add_argument_group("filters")
    group.add_argument("--tenant")
    group.add_argument("--topic", help="glob, e.g. 'api-key.*'")
    group.add_argument("--key", help="a raw key (fingerprinted here, never stored), a fingerprint fp_…, or live_")
    group.add_argument("--project", help="project id")
    group.add_argument("--account", help="account id")
    group.add_argument("--entity-type", help="api-key, access-key, project or unknown")
    group.add_argument("--event-id", help="the event's dedupe id")
    group.add_argument("--since", help="event time from: ISO 8601 or relative (24h, 7d)")
    group.add_argument("--until", help="event time before: ISO 8601 or relative")


def record_query(
    args: argparse.Namespace,
    settings: Settings,
    *,
    limit: int = 100,
    max_limit: int = SEARCH_LIMIT_MAX,
    order: str = "newest",
    cursor: str | None = None,
) -> RecordQuery:
    """The filters given on the command line as a store query; a raw `--key` is fingerprinted with the pepper."""
    from audit.queries import FILTERS, QueryError, build_query
    from config.datadir import pepper
    from events.redaction import fingerprint

    filters = {name: getattr(args, name, None) for name in FILTERS}
    try:
        return build_query(
            filters,
            fingerprint_of=lambda raw: fingerprint(pepper(settings), raw),
            limit=limit,
            max_limit=max_limit,
            order=order,
            cursor=cursor,
        )
    except QueryError as exc:
        raise CliError(str(exc)) from None


@contextmanager
def audit_store(settings: Settings) -> Iterator[AuditStore]:
    """The configured audit store, closed on exit; one that cannot be opened is a one-line failure."""
    from audit.stores import StoreUnavailable, open_store

    try:
        store = open_store(settings.audit.url)
    except StoreUnavailable as exc:
        raise CliError(f"audit store unavailable: {exc}") from None
    try:
        yield store
    finally:
        store.close()
