"""`keytrail audit ...`: questions about the audit trail, answered from the audit store, and proof it is intact."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from keytrail.cli import CliError, settings_from_args
from keytrail.output import add_format_option, chosen_format

if TYPE_CHECKING:  # the stores are imported by the commands that use them: `keytrail --help` stays fast
    from audit.stores.base import AuditStore, RecordQuery
    from config.settings import Settings
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
SEARCH_LIMIT_MAX = 10_000  # a page, not an export: `audit export` streams any size
HISTORY_LIMIT_MAX = 1_000_000
EXPORT_LIMIT_MAX = 2**63 - 2  # any size: the bound only keeps the number inside the store's integers
POLL_MIN, POLL_MAX = 0.1, 60.0
RECORD_ID_MAX = 256


def parse_when(value: str, *, now: datetime | None = None) -> str:
    """ISO 8601 (`2026-11-01`, `2026-11-01T10:00:00Z`) or relative to now (`24h`, `7d`) → ISO UTC with `Z`."""
    from audit.stores.base import QueryError, parse_time

    try:
        return parse_time(value, now=now)
    except QueryError as exc:
        raise CliError(str(exc)) from None


def count(name: str, maximum: int, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number in ASCII digits within bounds, parsed as the HTTP API parses `limit`
    (a bad value is argparse's one-line usage error, exit 2)."""

    def parse(value: str) -> int:
        from audit.stores.base import QueryError, parse_count

        try:
            return parse_count(name, value, minimum=minimum, maximum=maximum)
        except QueryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def text(name: str, max_length: int | None = None) -> Callable[[str], str]:
    """An argparse type: free text as the HTTP API takes it (not blank, bounded, no control characters)."""

    def parse(value: str) -> str:
        from audit.stores.base import MAX_TEXT, QueryError, parse_text

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


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="query, export and verify the audit trail")
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", parser_class=type(audit))

    search = commands.add_parser("search", help="records matching filters, newest first, a page at a time")
    _add_filters(search)
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
    _add_filters(tail)
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
    _add_filters(export)
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.add_argument("--limit", type=count("limit", EXPORT_LIMIT_MAX), help="at most this many records")
    export.set_defaults(handler=cmd_export)

    verify = commands.add_parser("verify", help="recompute the hash chains and check the signed checkpoints")
    verify.add_argument("--tenant", type=text("tenant"), help="only this tenant's chain")
    add_format_option(verify)
    verify.set_defaults(handler=cmd_verify)

    checkpoint = commands.add_parser("checkpoint", help="sign each chain's head now (also done every 1000 records)")
    checkpoint.add_argument("--tenant", type=text("tenant"))
    add_format_option(checkpoint)
    checkpoint.set_defaults(handler=cmd_checkpoint)

    prune = commands.add_parser("prune", help="remove records received before a date; the chains stay verifiable")
    prune.add_argument("--before", required=True, help="ISO 8601 date/time, or an age like 90d")
    prune.add_argument("--tenant", type=text("tenant"))
    prune.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    prune.add_argument("--yes", action="store_true", help="confirm: records are removed for good")
    add_format_option(prune)
    prune.set_defaults(handler=cmd_prune)

    audit.set_defaults(handler=lambda args: audit.print_help() or 2)


def _add_filters(parser: argparse.ArgumentParser) -> None:
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


# ---- shared plumbing -------------------------------------------------------------------------------------------


def _query(
    args: argparse.Namespace,
    settings: Settings,
    *,
    limit: int = 100,
    max_limit: int = SEARCH_LIMIT_MAX,
    order: str = "newest",
    cursor: str | None = None,
) -> RecordQuery:
    from audit.stores.base import FILTERS, QueryError, build_query
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
def _store(settings: Settings, *, signer: Any = None) -> Iterator[AuditStore]:
    from audit.stores import StoreUnavailable, open_store

    try:
        store = open_store(settings.audit.url, signer=signer)
    except StoreUnavailable as exc:
        raise CliError(f"audit store unavailable: {exc}") from None
    try:
        yield store
    finally:
        store.close()


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
        console = _console(stream)
        console.print(record_table(items, title=f"{title}: {len(items)}", caption=caption, width=console.width))
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


def _console(stream: TextIO) -> Any:
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=False)


# ---- commands --------------------------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    from audit.stores.base import search_page

    settings = settings_from_args(args)
    query = _query(args, settings, limit=args.limit, cursor=args.cursor)
    with _store(settings) as store:
        page, cursor = search_page(store, query)
    print_records(
        (r for _, r in page), chosen_format(args.format), title="records", next_cursor=cursor, stream=sys.stdout
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from audit.chain import place_report

    settings = settings_from_args(args)
    with _store(settings) as store:
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
    console = _console(stream)
    console.print(details)
    table = Table(title="deliveries", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("sink", "state", "attempts", "updated_at", "reason"):
        table.add_column(column, overflow="fold")
    for row in deliveries:
        table.add_row(*(str(row[c] or "") for c in ("sink", "state", "attempts", "updated_at", "reason")))
    console.print(table if deliveries else "no deliveries (no sink routes this record)")


def cmd_history(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    query = _query(args, settings, order="event_time")
    with _store(settings) as store:
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
    text = (args.format or ("text" if sys.stdout.isatty() else "jsonl")) == "text"
    emit = _tail_line if text else (lambda r: json.dumps(r.to_dict(), separators=(",", ":")))
    with _store(settings) as store, _reader_may_leave():
        query = _query(args, settings, limit=max(1, args.lines))
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
    query = _query(args, settings, order="oldest")
    with _store(settings) as store:
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
        else:
            with _reader_may_leave():
                _export(rows, args.format, sys.stdout, total)
    return 0


@contextmanager
def _reader_may_leave() -> Iterator[None]:
    """`keytrail audit export | head` is fine: when the reader closes the pipe, stop quietly (exit 0)."""
    try:
        yield
    except BrokenPipeError:
        # Python would report the failed final flush of stdout at exit; point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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

    count = 0
    with _progress(total) as advance:
        for stored in rows:
            write(stored)
            count += 1
            if count % 1000 == 0:
                advance(1000)
        advance(count % 1000)
    return count


@contextmanager
def _progress(total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise (scripts get clean output)."""
    if total is None:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as progress:
        task = progress.add_task("export", total=total)
        yield lambda n: progress.advance(task, n)


def cmd_verify(args: argparse.Namespace) -> int:
    from audit.chain import HmacSigner, UnknownTenant, verify

    settings = settings_from_args(args)
    signer = HmacSigner.from_settings(settings, create=False)
    with _store(settings) as store:
        try:
            report = verify(store, signer, tenant=args.tenant)
        except UnknownTenant:
            raise CliError(f"no chain for tenant {args.tenant!r}") from None
    if chosen_format(args.format) == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from rich import box
        from rich.table import Table

        table = Table(title="audit chains", box=box.SIMPLE_HEAD)
        for column in ("tenant", "records", "checkpoints"):
            table.add_column(column, no_wrap=column != "tenant", justify="left" if column == "tenant" else "right")
        table.add_column("result", overflow="fold")
        for tenant in report.tenants:
            result = "[green]ok[/]" if tenant.first_break is None else f"[red]{tenant.first_break.describe()}[/]"
            table.add_row(tenant.tenant, str(tenant.records), str(tenant.checkpoints), result)
        _console(sys.stdout).print(table if report.tenants else "no records yet: nothing to verify")
    broken = [t for t in report.tenants if t.first_break is not None]
    if broken:
        first = broken[0].first_break
        assert first is not None
        raise CliError(f"{len(broken)} chain(s) broken; first: tenant {broken[0].tenant}, {first.describe()}")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from audit.chain import HmacSigner, write_checkpoints
    from config.logging import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    signer = HmacSigner.from_settings(settings)
    assert signer is not None
    with _store(settings) as store:
        written = write_checkpoints(store, signer, tenant=args.tenant)
    if chosen_format(args.format) == "json":
        print(json.dumps({"checkpoints": [c.to_dict() for c in written]}, indent=2))
    elif not written:
        print("no chain moved since its last checkpoint")
    else:
        for checkpoint in written:
            where = f"seq {checkpoint.seq} ({checkpoint.length} records)"
            print(f"checkpoint #{checkpoint.id}: {checkpoint.tenant} at {where}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from audit.chain import ChainBroken, HmacSigner, UnknownTenant, prune
    from config.logging import configure_logging

    before = parse_when(args.before)
    if not args.dry_run and not args.yes:
        raise CliError("prune removes records for good: add --yes (see what would go with --dry-run)")
    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    signer = HmacSigner.from_settings(settings)
    assert signer is not None
    with _store(settings) as store:
        try:
            results = prune(store, signer, before, tenant=args.tenant, dry_run=args.dry_run)
        except ChainBroken as exc:
            raise CliError(f"refusing to prune a broken chain ({exc}); run `keytrail audit verify`") from None
        except UnknownTenant:
            raise CliError(f"no chain for tenant {args.tenant!r}") from None
    if chosen_format(args.format) == "json":
        rows = [
            {
                "tenant": r.tenant,
                "removed": r.removed,
                "undelivered": r.undelivered,
                "anchor": r.anchor.to_dict() if r.anchor else None,
            }
            for r in results
        ]
        print(json.dumps({"before": before, "dry_run": args.dry_run, "tenants": rows}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for result in results:
        anchor = f"; the chain now starts after seq {result.anchor.seq}" if result.anchor else ""
        dropped = f" ({result.undelivered} not yet delivered)" if result.undelivered else ""
        print(f"{result.tenant}: {verb} {result.removed} records received before {before}{dropped}{anchor}")
    return 0
