"""`keytrail subscribe | unsubscribe | fake-authapi`: put keytrail's receiver at the head of the event path.

Exit status: 0 done, 1 failure (one line on stderr), 2 `--check` found drift (or a usage error).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from authapi.client import AuthApiClient, AuthApiError
from authapi.convergence import converge_tenant
from authapi.drift import Drift, check_tenant
from authapi.ping import PingResult, confirm_ping
from authapi.subscriptions import (
    BootstrapError,
    Change,
    Scope,
    plan_tenant,
    require_subscribable,
    unsubscribe_tenant,
)
from config.logging import configure_logging
from config.settings import Settings, TenantSettings
from events.wire import SUBSCRIPTION_TOKEN_HEADER
from keytrail.cli import CliError, settings_from_args
from keytrail.output import add_format_option, chosen_format, print_rows

# A tenant with at least this many projects gets a progress bar (on a terminal only).
PROGRESS_MIN_PROJECTS = 5
CHANGE_COLUMNS = ("tenant", "project_id", "action", "webhook_id", "differences")
DRIFT_COLUMNS = ("tenant", "project_id", "webhook_id", "problems")
FAKE_ACCESS_KEY = "test_access_keytrail_fake"


def register(subparsers: Any) -> None:
    sub = subparsers.add_parser("subscribe", help="subscribe keytrail at The Auth API and prove it with a ping")
    sub.add_argument("--tenant", help="only this tenant (default: every tenant with an access_key)")
    sub.add_argument("--topics", nargs="+", metavar="TOPIC", help="topics to subscribe (default: GET /webhooks/topics)")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    mode.add_argument("--check", action="store_true", help="compare live with desired, change nothing; exit 2 on drift")
    sub.add_argument(
        "--ping-timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the ping (default 10)"
    )
    sub.add_argument("--no-ping", action="store_true", help="do not send the test ping after applying")
    add_format_option(sub)
    sub.set_defaults(handler=cmd_subscribe)

    unsub = subparsers.add_parser("unsubscribe", help="delete keytrail's subscriptions (and only keytrail's)")
    unsub.add_argument("--tenant", help="only this tenant (default: every tenant with an access_key)")
    unsub.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    add_format_option(unsub)
    unsub.set_defaults(handler=cmd_unsubscribe)

    fake = subparsers.add_parser("fake-authapi", help="run a local fake of The Auth API that really delivers webhooks")
    fake.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    fake.add_argument("--port", type=int, default=8090, help="port (default 8090)")
    fake.add_argument(
        "--deliver-duplicates",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="N",
        help="deliver every Nth event twice (default N: 3)",
    )
    fake.add_argument("--out-of-order", action="store_true", help="deliver events in swapped pairs")
    fake.add_argument("--bare-entity", action="store_true", help="send the bare entity instead of the envelope")
    fake.add_argument("--signing-secret", help="one theauthapi-signature for every hook (default: random per hook)")
    fake.add_argument("--access-key", action="append", default=[], help="accept this access key (repeatable)")
    fake.add_argument("--account-id", default="acct-fake", help="account for --access-key (default acct-fake)")
    fake.add_argument("--project-id", action="append", default=[], help="project for --access-key (repeatable)")
    fake.set_defaults(handler=cmd_fake_authapi)


def _quiet_logging(settings: Settings) -> None:
    # The command prints what happened; logs on stderr would repeat it, so only errors unless debugging.
    configure_logging("debug" if settings.log_level == "debug" else "error")


def _tenants(settings: Settings, name: str | None) -> list[TenantSettings]:
    if name is not None:
        tenant = settings.tenants.get(name)
        if tenant is None:
            known = ", ".join(sorted(settings.tenants)) or "none configured"
            raise CliError(f"no tenant named {name!r} (tenants: {known})")
        return [tenant]
    chosen = [t for t in settings.tenants.values() if t.access_key is not None]
    if not chosen:
        raise CliError("no tenant has an access_key; set tenants.<name>.access_key to subscribe")
    return chosen


@contextlib.contextmanager
def _session(settings: Settings, tenant: TenantSettings) -> Iterator[AuthApiClient]:
    """A client for the tenant's account once it can be subscribed; its failures as one line for the operator."""
    try:
        require_subscribable(tenant)
        with AuthApiClient.from_settings(settings, tenant) as client:
            yield client
    except AuthApiError as exc:
        raise _api_failure(tenant, exc) from None
    except BootstrapError as exc:
        raise CliError(str(exc)) from None


def _api_failure(tenant: TenantSettings, exc: AuthApiError) -> CliError:
    hint = ""
    if exc.status == 401:
        hint = f" (check tenants.{tenant.name}.access_key)"
    elif exc.status == 403:
        hint = f" (the access key may not manage tenants.{tenant.name}'s account or projects)"
    return CliError(f"tenant {tenant.name}: {exc}{hint}")


@contextlib.contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr for long tenants; a no-op when stderr is not a terminal."""
    if total < PROGRESS_MIN_PROJECTS or not sys.stderr.isatty():
        yield lambda _project: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda _project: progress.advance(task)


def _warn(message: str) -> None:
    sys.stderr.write(f"keytrail: warning: {message}\n")


def cmd_subscribe(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    _quiet_logging(settings)
    fmt = chosen_format(args.format, sys.stdout)
    changes: list[Change] = []
    drifts: list[Drift] = []
    pings: list[PingResult] = []
    warnings: list[str] = []
    for tenant in _tenants(settings, args.tenant):
        with _session(settings, tenant) as client:
            scope = Scope.of(client, tenant, args.topics)
            warnings += [f"tenant {tenant.name}: {w}" for w in scope.topics.warnings]
            if args.check:
                with _progress(len(scope.projects), f"checking {tenant.name}") as advance:
                    drifts += check_tenant(client, scope, progress=advance)
                continue
            if args.dry_run:
                with _progress(len(scope.projects), f"planning {tenant.name}") as advance:
                    changes += plan_tenant(client, scope, progress=advance)
                continue
            # Converging re-reads before every round and succeeds only on a read `--check` calls in sync.
            with _progress(len(scope.projects), f"applying {tenant.name}") as advance:
                changes += converge_tenant(client, scope, progress=advance)
            if not args.no_ping:
                pings += _ping(settings, client, tenant, args.ping_timeout, warnings)
    for warning in warnings:
        _warn(warning)
    if args.check:
        return _report_check(drifts, fmt)
    _report_plan(changes, pings, warnings, fmt, dry_run=args.dry_run)
    failed = [p for p in pings if not p.seen]
    if failed:
        raise CliError("; ".join(f"tenant {p.tenant}: {p.cause}" for p in failed))
    return 0


def _ping(
    settings: Settings, client: AuthApiClient, tenant: TenantSettings, timeout: float, warnings: list[str]
) -> list[PingResult]:
    if tenant.token is None:
        warnings.append(
            f"tenant {tenant.name}: no token, and the receiver accepts pings only with {SUBSCRIPTION_TOKEN_HEADER}; "
            "ping skipped"
        )
        return []
    return [confirm_ping(client, settings.redis.url, tenant, timeout)]


def _report_plan(
    changes: Sequence[Change], pings: Sequence[PingResult], warnings: Sequence[str], fmt: str, *, dry_run: bool
) -> None:
    if fmt == "json":
        document = {
            "dry_run": dry_run,
            "changes": [c.row() for c in changes],
            "pings": [p.row() for p in pings],
            "warnings": list(warnings),
        }
        print(json.dumps(document, indent=2))
        return
    title = "Subscriptions (dry run: nothing changed)" if dry_run else "Subscriptions"
    print_rows([_table_row(c.row()) for c in changes], CHANGE_COLUMNS, "table", title=title, stream=sys.stdout)
    for ping in pings:
        if ping.seen:
            print(f"ping: tenant {ping.tenant}: seen by the receiver in {ping.round_trip_ms:g} ms")


def _report_check(drifts: Sequence[Drift], fmt: str) -> int:
    if fmt == "json":
        print(json.dumps({"in_sync": not drifts, "drift": [d.row() for d in drifts]}, indent=2))
    elif drifts:
        print_rows(
            [_table_row(d.row()) for d in drifts], DRIFT_COLUMNS, "table", title="Subscription drift", stream=sys.stdout
        )
    else:
        print("in sync: every keytrail subscription matches the desired state")
    if drifts:
        raise CliError(f"drift in {len(drifts)} subscription(s); run `keytrail subscribe` to repair", 2)
    return 0


def _table_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: ", ".join(v) if isinstance(v, list) else v for k, v in row.items()}


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    _quiet_logging(settings)
    rows: list[dict[str, Any]] = []
    action = "would delete" if args.dry_run else "deleted"
    for tenant in _tenants(settings, args.tenant):
        with _session(settings, tenant) as client:
            removed = unsubscribe_tenant(client, tenant, dry_run=args.dry_run)
        rows += [{**dataclasses.asdict(r), "action": action} for r in removed]
    fmt = chosen_format(args.format, sys.stdout)
    if fmt == "json":
        print(json.dumps({"dry_run": args.dry_run, "deleted": rows}, indent=2))
    elif rows:
        print_rows(
            rows,
            ("tenant", "project_id", "webhook_id", "action"),
            "table",
            title="keytrail subscriptions",
            stream=sys.stdout,
        )
    else:
        print("no keytrail subscriptions found")
    return 0


def cmd_fake_authapi(args: argparse.Namespace) -> int:
    import uvicorn

    from authapi.fake import FakeState, create_fake_app

    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    state = FakeState(
        duplicates_every=max(0, args.deliver_duplicates),
        out_of_order=args.out_of_order,
        bare_entity=args.bare_entity,
        signing_secret=args.signing_secret,
    )
    # Seeded from the config's tenants, so `keytrail subscribe` works against the fake with no extra setup.
    seeded = state.seed_tenants(settings.tenants.values())
    if args.access_key or not seeded:
        projects = args.project_id or ["proj-fake"]
        for key in args.access_key or [FAKE_ACCESS_KEY]:
            state.seed(key, args.account_id, projects)
        if not args.access_key:
            print(f"access key {FAKE_ACCESS_KEY}, account {args.account_id}, projects {', '.join(projects)}")
    if seeded:
        print(f"seeded {seeded} tenant(s) from {settings.source} (their access keys, accounts and projects)")
    print(f"fake The Auth API on http://{args.host}:{args.port} (set [authapi] base_url to it); Ctrl-C stops it")
    sys.stdout.flush()
    config = uvicorn.Config(create_fake_app(state), host=args.host, port=args.port, log_level="warning", ws="none")
    uvicorn.Server(config).run()
    return 0
