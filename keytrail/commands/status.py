"""`keytrail status`: Redis, queue depths, workers alive, and delivery backlog at a glance."""

from __future__ import annotations

import argparse
import json

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from broker.queues import DELIVER_QUEUE, INGEST_QUEUE, JobSerializer, alive_key, consumers_key, sink_disabled_key
from config.settings import display_url
from keytrail.cli import CliError, Commands, settings_from_args
from keytrail.commands.audit_query import audit_store
from keytrail.output import add_format_option, chosen_format, print_rows


def register(subparsers: Commands) -> None:
    status = subparsers.add_parser("status", help="queues, workers and Redis at a glance")
    add_format_option(status)
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    redis = Redis.from_url(settings.redis.url, socket_connect_timeout=2)
    try:
        rows = []
        for name in (INGEST_QUEUE, DELIVER_QUEUE):
            queue = Queue(name, connection=redis, serializer=JobSerializer)
            rows.append(
                {
                    "queue": name,
                    "queued": queue.count,
                    "started": StartedJobRegistry(name, connection=redis).count,
                    "scheduled": ScheduledJobRegistry(name, connection=redis).count,  # type: ignore[no-untyped-call]
                    "failed": FailedJobRegistry(name, connection=redis).count,
                    "workers": _live_workers(redis, name),
                }
            )
    except RedisError as exc:
        raise CliError(f"Redis does not answer at {display_url(settings.redis.url)}: {type(exc).__name__}") from None
    with audit_store(settings) as store:
        deliveries = store.count_deliveries()
    names = sorted(set(deliveries) | {s.name for s in settings.sinks})
    try:
        disabled = {name for name in names if redis.exists(sink_disabled_key(name))}
    except RedisError:
        disabled = set()
    sinks = [
        {
            "sink": name,
            **{state: deliveries.get(name, {}).get(state, 0) for state in STATES},
            "disabled": name in disabled,  # by its peer (HTTP 410); `keytrail dlq replay --sink` re-enables
        }
        for name in names
    ]
    if chosen_format(args.format) == "json":
        print(json.dumps({"queues": rows, "deliveries": sinks}, indent=2))
    else:
        print_rows(rows, ("queue", "queued", "started", "scheduled", "failed", "workers"), "table", title="queues")
        print_rows(sinks, ("sink", *STATES, "disabled"), "table", title="deliveries per sink")
    return 0


STATES = ("pending", "retrying", "delivered", "dead")


def _live_workers(redis: Redis, queue: str) -> int:
    """Workers consuming `queue` whose liveness key exists. Not RQ's worker registry: it keeps a SIGKILLed worker
    for minutes (until its key's TTL lapses), while keytrail's liveness key is gone within seconds."""
    names: set[bytes] = redis.smembers(consumers_key(queue))  # type: ignore[assignment]
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(alive_key(name.decode()))
        return sum(bool(alive) for alive in pipe.execute())
