"""`keytrail simulate`: signed, realistic deliveries of every topic to a running receiver."""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import httpx

from config.datadir import DEMO_TOKEN_FILE
from events.wire import hook_url
from keytrail.cli import CliError, Commands, settings_from_args
from keytrail.commands.run import with_embedded_defaults
from keytrail.simulation import TOPICS, make_delivery


def register(subparsers: Commands) -> None:
    parser = subparsers.add_parser("simulate", help="send realistic, verified deliveries of all 8 topics")
    parser.add_argument("--tenant", default=None, help="tenant to send as (default: the only/first configured)")
    parser.add_argument("--count", type=int, default=16, help="deliveries to send (default 16)")
    parser.add_argument("--rate", type=float, default=0.0, help="deliveries per second (default: as fast as it can)")
    parser.add_argument("--url", help="receiver base URL (default: http://server.host:server.port)")
    parser.add_argument("--bare", action="store_true", help="send every other delivery as a bare entity")
    parser.add_argument("--seed", type=int, help="random seed, for repeatable bodies")
    parser.set_defaults(handler=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    configured = settings_from_args(args)
    embedded = not configured.tenants and not configured.sinks
    if embedded and not (configured.data_dir / DEMO_TOKEN_FILE).exists():
        raise CliError(f"no demo token in {configured.data_dir}: start `keytrail up` (or `keytrail serve`) first")
    settings = with_embedded_defaults(configured, announce=False, create=False)
    if args.count < 1:
        raise CliError("--count must be at least 1")
    name = args.tenant or next(iter(settings.tenants))
    tenant = settings.tenants.get(name)
    if tenant is None:
        raise CliError(f"unknown tenant {name!r} (configured: {', '.join(settings.tenants) or 'none'})")
    base = (args.url or f"http://{settings.server.host}:{settings.server.port}").rstrip("/")
    url = hook_url(base, name)
    rng = random.Random(args.seed)  # noqa: S311 - test data
    statuses: Counter[str] = Counter()
    interval = 1 / args.rate if args.rate > 0 else 0.0
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        for index in range(args.count):
            delivery = make_delivery(tenant, TOPICS[index % len(TOPICS)], rng=rng, bare=args.bare and index % 2 == 1)
            try:
                response = client.post(url, content=delivery.body, headers=delivery.headers)
                statuses[str(response.status_code)] += 1
            except httpx.TransportError as exc:
                raise CliError(f"cannot reach the receiver at {base}: {type(exc).__name__}") from None
            if interval:
                time.sleep(max(0.0, started + (index + 1) * interval - time.monotonic()))
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    print(f"sent {args.count} deliveries to {url} in {elapsed:.2f}s: {summary}")
    return 0 if set(statuses) <= {"202"} else 1
