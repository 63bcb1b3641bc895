"""How audit records print: a table fitted to the terminal, JSON, JSON Lines, and CSV safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from keytrail.output import console

if TYPE_CHECKING:
    from events.records import AuditRecord

RECORD_FORMATS = ("table", "json", "jsonl", "csv")
# CSV (search, history, export): one flat row per record; `raw_redacted` and `metadata` stay in the JSON formats.
CSV_COLUMNS = (
    "record_id",
    "event_id",
    "tenant",
    "topic",
    "time",
    "received_at",
    "activity_id",
    "type_uid",
    "severity_id",
    "entity_type",
    "entity_uid",
    "entity_name",
    "fingerprint",
    "key_prefix",
    "key_last4",
    "project_id",
    "account_id",
    "actor_uid",
    "actor_type",
    "raw_sha256",
    "prev_hash",
    "hash",
)


def entity_label(record: AuditRecord) -> str:
    entity = record.entity
    if entity.prefix or entity.last4:
        key = f"{entity.prefix or ''}…{entity.last4 or ''}"
        return f"{entity.name} {key}" if entity.name else key
    return entity.name or entity.uid or ""


def summary_row(record: AuditRecord) -> dict[str, Any]:
    return {
        "time": record.time[:19].replace("T", " "),
        "tenant": record.tenant,
        "topic": record.topic,
        "entity": entity_label(record),
        "project": record.project_id or "",
        "actor": record.actor.uid if record.actor else "",
        "record_id": record.record_id,
    }


def csv_row(data: dict[str, Any]) -> dict[str, Any]:
    """One record (`to_dict()` form) as a flat CSV row. A cell that a spreadsheet would run as a formula
    (starting = + - @) gets a leading apostrophe: an attacker controls key names and project names."""
    entity = data.get("entity") or {}
    actor = data.get("actor") or {}
    flat = {
        **{name: data.get(name) for name in CSV_COLUMNS},
        "entity_type": entity.get("type"),
        "entity_uid": entity.get("uid"),
        "entity_name": entity.get("name"),
        "fingerprint": entity.get("fingerprint"),
        "key_prefix": entity.get("prefix"),
        "key_last4": entity.get("last4"),
        "actor_uid": actor.get("uid"),
        "actor_type": actor.get("type"),
    }
    return {name: _csv_cell(flat[name]) for name in CSV_COLUMNS}


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def print_records(
    records: Iterable[AuditRecord], fmt: str, *, title: str, next_cursor: str | None, stream: TextIO
) -> int:
    """Records in table / json / jsonl / csv; the next page's cursor goes where it does not break the format."""
    items = list(records)
    if fmt == "json":
        json.dump({"records": [r.to_dict() for r in items], "next_cursor": next_cursor}, stream, indent=2)
        stream.write("\n")
    elif fmt == "jsonl":
        stream.writelines(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in items)
    elif fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_row(r.to_dict()) for r in items)
    else:
        caption = f"next page: --cursor {next_cursor}" if next_cursor else None
        screen = console(stream)
        screen.print(record_table(items, title=f"{title}: {len(items)}", caption=caption, width=screen.width))
    if next_cursor and fmt in ("jsonl", "csv"):
        sys.stderr.write(f"next page: --cursor {next_cursor}\n")
    return len(items)


def record_table(records: Iterable[AuditRecord], *, title: str, width: int, caption: str | None = None) -> Any:
    """A table readable from 80 columns up: time and record id are never cut (the id is what `audit show` takes);
    the other columns share what is left, cut with an ellipsis. Entity appears from 100 columns, project and actor
    from 120 (`audit show` and the JSON formats have every field)."""
    from rich import box
    from rich.table import Table

    columns = ["time", "tenant", "topic", *(["entity"] if width >= 100 else []), "record_id"]
    if width >= 120:
        columns[4:4] = ["project", "actor"]
    headers = {"time": "time (UTC)", "record_id": "record"}
    rows = [summary_row(record) for record in records]
    natural = {c: max([len(headers.get(c, c)), *(len(str(row[c])) for row in rows)]) for c in columns}
    flexible = columns[1:-1]
    # Each column boundary takes 3 characters (padding, separator, padding); the rest is shared.
    room = width - natural["time"] - natural["record_id"] - 3 * (len(columns) - 1) - 1
    widths = {**natural, **dict(zip(flexible, _share([natural[c] for c in flexible], room), strict=True))}
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for name in columns:
        table.add_column(headers.get(name, name), width=widths[name], no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    return table


def _share(wanted: list[int], room: int, least: int = 4) -> list[int]:
    """Widths for columns wanting `wanted` in `room`: narrow ones get what they want, wide ones split the rest."""
    widths = list(wanted)
    open_ = set(range(len(wanted)))
    while open_:
        fair = max(least, (room - sum(widths[i] for i in range(len(wanted)) if i not in open_)) // len(open_))
        narrow = {i for i in open_ if wanted[i] <= fair}
        if not narrow:
            for i in open_:
                widths[i] = fair
            break
        open_ -= narrow
    return widths
