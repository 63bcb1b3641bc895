"""`keytrail audit ...`: questions about the audit trail (search, show, history, tail, export), from the audit store.

The integrity commands (verify, checkpoint, prune) are registered here too and live in `audit_integrity`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from keytrail.cli import CliError, Commands, command_group, settings_from_args
from keytrail.commands import audit_integrity
from keytrail.commands.audit_query import (
    SEARCH_LIMIT_MAX,
    add_filters,
    audit_store,
    count,
    record_query,
    seconds,
    text,
)
from keytrail.output import add_format_option, chosen_format, console, progress
from keytrail.record_output import CSV_COLUMNS, RECORD_FORMATS, csv_row, entity_label, print_records, summary_row

if TYPE_CHECKING:
    from events.records import AuditRecord

HISTORY_LIMIT_MAX = 1_000_000
EXPORT_LIMIT_MAX = 2**63 - 2  # any size: the bound only keeps the number inside the store's integers
POLL_MIN, POLL_MAX = 0.1, 60.0
RECORD_ID_MAX = 256


def register(subparsers: Commands) -> None:
    commands = command_group(subparsers, "audit", help="query, export and verify the audit trail")

    search = commands.add_parser("search", help="records matching filters, newest first, a page at a time")
    add_filters(search)
    search.add_argument(
        "--limit", type=count("limit", SEARCH_LIMIT_MAX), default=50, help="records per page (default 50)"
    )
    search.add_argument("--cursor", help="the next page: the cursor printed after the previous one")
    add_format_option(search, RECORD_FORMATS)
    search.set_defaults(handler=cmd_search)

    show = commands.add_parser("show", help="one record, its place in the chain, and its delivery state per sink")
    show.add_argument("record_id", metavar="RECORD_ID", type=text("record id", RECORD_ID_MAX))
    add_format_option(show)
    show.set_defaults(handler=cmd_show)

    history = commands.add_parser("history", help="one key's life, in event-time order")
    history.add_argument("--key", required=True, help="a raw key (fingerprinted here, never stored), or fp_…")
    history.add_argument("--tenant")
    history.add_argument(
        "--limit",
        type=count("limit", HISTORY_LIMIT_MAX),
        default=1000,
        help="at most this many events (default 1000)",
    )
    add_format_option(history, RECORD_FORMATS)
    history.set_defaults(handler=cmd_history)

    tail = commands.add_parser("tail", help="the latest records; with -f, follow new ones as they are stored")
    add_filters(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument(
        "-n", "--lines", type=count("lines", SEARCH_LIMIT_MAX, 0), default=10, help="records to show first (default 10)"
    )
    tail.add_argument(
        "--interval",
        type=seconds("interval", POLL_MIN, POLL_MAX),
        default=1.0,
        help=f"seconds between polls ({POLL_MIN}-{POLL_MAX})",
    )
    tail.add_argument(
        "--timeout",
        type=seconds("timeout", 0, 10**9),
        default=0.0,
        help="stop following after this many seconds (0: never)",
    )
    tail.add_argument("--format", choices=["text", "jsonl"], default=None, help="default: text on a terminal")
    tail.set_defaults(handler=cmd_tail)

    export = commands.add_parser("export", help="stream matching records to a file or stdout, oldest first")
    add_filters(export)
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.add_argument("--limit", type=count("limit", EXPORT_LIMIT_MAX), help="at most this many records")
    export.set_defaults(handler=cmd_export)

    audit_integrity.register(commands)


def cmd_search(args: argparse.Namespace) -> int:
    from audit.queries import search_page

    settings = settings_from_args(args)
    query = record_query(args, settings, limit=args.limit, cursor=args.cursor)
    with audit_store(settings) as store:
        page, cursor = search_page(store, query)
    print_records(
        (r for _, r in page), chosen_format(args.format), title="records", next_cursor=cursor, stream=sys.stdout
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from audit.chain import place_report

    settings = settings_from_args(args)
    with audit_store(settings) as store:
        found = store.get([args.record_id])
        if not found:
            raise CliError(f"no record {args.record_id}")
        record = found[0]
        place = store.locate(record.record_id)
        deliveries = store.deliveries(record.record_id)
    if place is None:
        raise CliError(f"record {args.record_id} vanished while it was read")
    chain = place_report(record, place)
    delivery_rows = [d.to_dict() for d in deliveries]
    if chosen_format(args.format) == "json":
        print(json.dumps({"record": record.to_dict(), "chain": chain, "deliveries": delivery_rows}, indent=2))
        return 0
    _print_show(record, chain, delivery_rows, sys.stdout)
    return 0


def _print_show(record: AuditRecord, chain: dict[str, Any], deliveries: list[dict[str, Any]], stream: TextIO) -> None:
    from rich import box
    from rich.table import Table

    def mark(ok: bool) -> str:
        return "[green]ok[/]" if ok else "[red]BROKEN[/]"

    details = Table.grid(padding=(0, 2))
    details.add_column(style="bold", no_wrap=True)
    details.add_column(overflow="fold")
    entity = record.entity
    for label, value in (
        ("record", record.record_id),
        ("event", record.event_id),
        ("tenant", record.tenant),
        ("topic", f"{record.topic} (activity {int(record.activity_id)}, severity {int(record.severity_id)})"),
        ("time", f"{record.time} (received {record.received_at})"),
        ("entity", f"{entity.type} {entity_label(record)}".strip()),
        ("fingerprint", entity.fingerprint),
        ("project", record.project_id),
        ("account", record.account_id),
        ("actor", f"{record.actor.uid} ({record.actor.type or 'unknown type'})" if record.actor else None),
    ):
        if value:
            details.add_row(label, str(value))
    checkpoint = chain["checkpoint"]
    for label, value in (
        ("chain", f"seq {chain['seq']}, record {chain['position']} of tenant {record.tenant}'s chain"),
        ("prev_hash", f"{record.prev_hash} {mark(chain['linked_to_previous'])}"),
        ("hash", f"{record.hash} {mark(chain['hash_ok'])}"),
        ("previous", chain["previous_record_id"] or "(none: start of the chain)"),
        ("next", f"{chain['next_record_id']} {mark(chain['linked_from_next'])}" if chain["next_record_id"] else "—"),
        (
            "checkpoint",
            f"#{checkpoint['id']} ({checkpoint['kind']}, {checkpoint['created_at']}) at seq {checkpoint['seq']}"
            if checkpoint
            else "not yet covered by a signed checkpoint",
        ),
    ):
        details.add_row(label, value)
    screen = console(stream)
    screen.print(details)
    table = Table(title="deliveries", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("sink", "state", "attempts", "updated_at", "reason"):
        table.add_column(column, overflow="fold")
    for row in deliveries:
        table.add_row(*(str(row[c] or "") for c in ("sink", "state", "attempts", "updated_at", "reason")))
    screen.print(table if deliveries else "no deliveries (no sink routes this record)")


def cmd_history(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    query = record_query(args, settings, order="event_time")
    with audit_store(settings) as store:
        records = [stored.record() for stored in store.stream(query, limit=args.limit + 1)]
    if not records:
        raise CliError("no records for that key (a raw key is only found with the pepper it was stored under)")
    more = len(records) > args.limit
    records = records[: args.limit]
    fmt = chosen_format(args.format)
    label = records[0].entity.fingerprint or args.key
    print_records(records, fmt, title=f"history of {label}", next_cursor=None, stream=sys.stdout)
    if more:
        sys.stderr.write(f"keytrail: showing the first {args.limit} events; raise --limit for more\n")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from dataclasses import replace

    settings = settings_from_args(args)
    as_text = (args.format or ("text" if sys.stdout.isatty() else "jsonl")) == "text"
    emit = _tail_line if as_text else (lambda r: json.dumps(r.to_dict(), separators=(",", ":")))
    with audit_store(settings) as store:
        query = record_query(args, settings, limit=max(1, args.lines))
        recent = store.search(query) if args.lines else store.search(replace(query, limit=1))
        last_seq = recent[0][0] if recent else 0
        for _, record in reversed(recent[: args.lines]):
            print(emit(record), flush=True)
        if not args.follow:
            return 0
        follow = replace(query, oldest_first=True, limit=500)
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        while deadline is None or time.monotonic() < deadline:
            found = store.search(replace(follow, before_seq=last_seq))
            for seq, record in found:
                print(emit(record), flush=True)
                last_seq = seq
            if len(found) < follow.limit:
                pause = args.interval if deadline is None else min(args.interval, deadline - time.monotonic())
                time.sleep(max(0.0, pause))
    return 0


def _tail_line(record: AuditRecord) -> str:
    row = summary_row(record)
    return "  ".join(str(row[c]) for c in ("time", "tenant", "topic", "entity", "actor", "record_id"))


def cmd_export(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    query = record_query(args, settings, order="oldest")
    with audit_store(settings) as store:
        total = store.count(query) if sys.stderr.isatty() else None
        if total is not None and args.limit is not None:
            total = min(total, args.limit)
        rows = store.stream(query, limit=args.limit)
        if args.output:
            try:
                handle = args.output.open("w", encoding="utf-8", newline="")
            except OSError as exc:
                raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
            except ValueError:  # a NUL in the path
                raise CliError("cannot write that path: it holds a NUL character") from None
            with handle:
                written = _export(rows, args.format, handle, total)
            sys.stderr.write(f"exported {written} records to {args.output}\n")
        else:  # `keytrail audit export | head`: a reader that leaves early ends it quietly (see `cli.main`)
            _export(rows, args.format, sys.stdout, total)
    return 0


def _export(rows: Iterable[Any], fmt: str, out: TextIO, total: int | None) -> int:
    """Write records as they stream from the store; memory stays flat. The JSONL line is the stored body as is:
    the record's `to_dict()` with its `prev_hash` and `hash`, so an export can be checked against the chain."""
    write: Callable[[Any], None]
    if fmt == "jsonl":

        def write(stored: Any) -> None:
            out.write(stored.body + "\n")

    else:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()

        def write(stored: Any) -> None:
            writer.writerow(csv_row(stored.data()))

    written = 0
    with progress(total, "exporting") as advance:
        for stored in rows:
            write(stored)
            written += 1
            if written % 1000 == 0:
                advance(1000)
        advance(written % 1000)
    return written
