"""`keytrail dlq list | replay`: dead letters per sink, and re-delivering them from the audit store."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from redis import Redis

from broker.queues import DELIVER_QUEUE, JobSerializer, sink_backoff_key, sink_disabled_key
from keytrail.cli import CliError, Commands, command_group, settings_from_args
from keytrail.commands.audit_query import parse_when
from keytrail.output import add_format_option, chosen_format, print_rows, progress

COLUMNS = ("updated_at", "sink", "topic", "tenant", "attempts", "reason", "record_id")
PAGE = 500
DRY_RUN_CAP = 100_000


def register(subparsers: Commands) -> None:
    commands = command_group(subparsers, "dlq", help="dead letters: list them, replay them")
    listing = commands.add_parser("list", help="dead deliveries, newest first")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--retrying", action="store_true", help="also list deliveries still being retried")
    add_format_option(listing)
    listing.set_defaults(handler=cmd_list)
    replay = commands.add_parser("replay", help="re-deliver dead letters from the audit store")
    _filters(replay)
    replay.add_argument("--record", help="only this record id")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed, change nothing")
    replay.set_defaults(handler=cmd_replay)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sink", help="only this sink")
    parser.add_argument("--topic", help="topic glob, e.g. 'api-key.*'")
    parser.add_argument("--since", help="dead since (ISO 8601, or 24h / 7d)")


def _query(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "sink": args.sink,
        "topic": args.topic,
        "since": parse_when(args.since) if args.since else None,
        "record_id": getattr(args, "record", None),
    }


def cmd_list(args: argparse.Namespace) -> int:
    from audit.stores import DeliveryState, open_store

    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    settings = settings_from_args(args)
    states = [DeliveryState.DEAD, DeliveryState.RETRYING] if args.retrying else [DeliveryState.DEAD]
    store = open_store(settings.audit.url)
    try:
        found = store.list_deliveries(states=states, limit=args.limit, **_query(args))
    finally:
        store.close()
    rows = [
        {
            "updated_at": delivery.updated_at,
            "sink": delivery.sink,
            "state": str(delivery.state),
            "topic": record.topic,
            "tenant": record.tenant,
            "event_id": record.event_id,
            "attempts": delivery.attempts,
            "next_at": delivery.next_at,
            "reason": delivery.reason,
            "record_id": delivery.record_id,
        }
        for delivery, record in found
    ]
    print_rows(rows, COLUMNS, chosen_format(args.format), title=f"{len(rows)} dead letters")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Dead → pending, then one deliver job per sink and page of records: the records come from the audit store,
    so what is re-sent is exactly what was stored (never a copy kept beside the queue)."""
    from rq import Queue

    from audit.stores import DeliveryState, open_store
    from workers.jobs import enqueue_deliveries

    settings = settings_from_args(args)
    known = {s.name for s in settings.sinks}
    if args.sink and args.sink not in known:
        raise CliError(f"no sink named {args.sink!r} (configured: {', '.join(sorted(known)) or 'none'})")
    store = open_store(settings.audit.url)
    redis = Redis.from_url(settings.redis.url, socket_connect_timeout=5)
    queue = Queue(DELIVER_QUEUE, connection=redis, serializer=JobSerializer)
    replayed: dict[str, int] = {}
    query = _query(args)
    try:
        if args.dry_run:
            # Counted from one bounded read: a dry run changes nothing, so it cannot page by state like replay.
            found = store.list_deliveries(states=[DeliveryState.DEAD], limit=DRY_RUN_CAP + 1, **query)
            for delivery, _ in found[:DRY_RUN_CAP]:
                replayed[delivery.sink] = replayed.get(delivery.sink, 0) + 1
            _summary(replayed, dry_run=True)
            if len(found) > DRY_RUN_CAP:
                print(f"(counted the newest {DRY_RUN_CAP}; there are more)")
            return 0
        total = sum(states.get("dead", 0) for states in store.count_deliveries().values())
        with progress(total if sys.stderr.isatty() else None, "replaying") as advance:
            # Page by page: each page leaves the dead state as it is reset, so the next query finds the rest.
            while page := store.list_deliveries(states=[DeliveryState.DEAD], limit=PAGE, **query):
                by_sink: dict[str, list[str]] = {}
                for delivery, _ in page:
                    by_sink.setdefault(delivery.sink, []).append(delivery.record_id)
                unknown = sorted(set(by_sink) - known)
                if unknown:
                    raise CliError(f"dead letters for sinks no longer configured: {', '.join(unknown)} (use --sink)")
                for sink, ids in by_sink.items():
                    if sink not in replayed:
                        # Replaying a sink means it should be tried now: lift its disable and its backoff.
                        redis.delete(sink_disabled_key(sink), sink_backoff_key(sink))
                    reset = store.reset_deliveries(sink, ids)
                    enqueue_deliveries(queue, {sink: reset}, settings.worker)
                    replayed[sink] = replayed.get(sink, 0) + len(reset)
                    if not reset:
                        raise CliError(f"dead letters for {sink} could not be reset; is another replay running?")
                advance(len(page))
    finally:
        store.close()
        redis.close()
    _summary(replayed, dry_run=False)
    return 0


def _summary(counts: dict[str, int], *, dry_run: bool) -> None:
    verb = "would replay" if dry_run else "replayed"
    if not counts:
        print(f"{verb} nothing: no dead letters match")
        return
    print(f"{verb} " + ", ".join(f"{n} to {sink}" for sink, n in sorted(counts.items())))
