"""`keytrail audit ...`: questions about the audit trail, answered from the audit store."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from keytrail.cli import CliError, settings_from_args
from keytrail.output import add_format_option, chosen_format, print_rows

RELATIVE = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
COLUMNS = ("time", "tenant", "topic", "entity_type", "entity", "project_id", "actor", "event_id")


def parse_when(value: str, *, now: datetime | None = None) -> str:
    """ISO 8601 (`2026-11-01`, `2026-11-01T10:00:00Z`) or relative to now (`24h`, `7d`) → ISO UTC with `Z`."""
    moment = now or datetime.now(UTC)
    match = RELATIVE.match(value.strip())
    if match:
        parsed = moment - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    else:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise CliError(f"not a time: {value!r} (use ISO 8601 like 2026-11-01T10:00:00Z, or 24h / 7d)") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="query the audit trail")
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", parser_class=type(audit))
    search = commands.add_parser("search", help="records matching filters, newest first")
    search.add_argument("--tenant")
    search.add_argument("--topic", help="glob, e.g. 'api-key.*'")
    search.add_argument("--since", help="ISO 8601 or relative (24h, 7d)")
    search.add_argument("--limit", type=int, default=50)
    add_format_option(search)
    search.set_defaults(handler=cmd_search)
    audit.set_defaults(handler=lambda args: audit.print_help() or 2)


def summary_row(record: Any) -> dict[str, Any]:
    entity = record.entity
    label = entity.name or ""
    if entity.fingerprint:
        label = f"{label} {entity.prefix or ''}…{entity.last4 or ''} {entity.fingerprint}".strip()
    elif entity.uid:
        label = f"{label} {entity.uid}".strip()
    return {
        "time": record.time,
        "tenant": record.tenant,
        "topic": record.topic,
        "entity_type": str(entity.type),
        "entity": label,
        "project_id": record.project_id,
        "actor": record.actor.uid if record.actor else None,
        "event_id": record.event_id,
        "record_id": record.record_id,
    }


def cmd_search(args: argparse.Namespace) -> int:
    from workers.stores import RecordQuery, open_store

    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    settings = settings_from_args(args)
    query = RecordQuery(
        tenant=args.tenant,
        topic=args.topic,
        since=parse_when(args.since) if args.since else None,
        limit=args.limit,
    )
    store = open_store(settings.audit.url)
    try:
        found = [record for _, record in store.search(query)]
    finally:
        store.close()
    fmt = chosen_format(args.format)
    if fmt == "json":
        print_rows((r.to_dict() for r in found), COLUMNS, "json")
    else:
        print_rows((summary_row(r) for r in found), COLUMNS, fmt, title=f"{len(found)} records")
    return 0
