"""`keytrail audit verify | checkpoint | prune`: proof the audit trail is intact, signed chain heads, and retention."""

from __future__ import annotations

import argparse
import json
import sys

from keytrail.cli import CliError, Commands, settings_from_args
from keytrail.commands.audit_query import audit_store, parse_when, text
from keytrail.output import add_format_option, chosen_format, console


def register(commands: Commands) -> None:
    """Add the integrity subcommands to `keytrail audit`."""
    verify = commands.add_parser(
        "verify", help="recompute every stored or configured tenant's hash chain and check the signed checkpoints"
    )
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


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0: every chain verified; 1: a break (or an unknown tenant); 2: verify could not run."""
    from audit.chain import HmacSigner, UnknownTenant, verify
    from audit.stores import StoreUnavailable, open_store

    settings = settings_from_args(args)
    signer = HmacSigner.from_settings(settings, create=False)
    try:
        store = open_store(settings.audit.url)
    except StoreUnavailable as exc:
        raise CliError(f"audit store unavailable, nothing verified: {exc}", code=2) from None
    try:
        report = verify(store, signer, tenant=args.tenant, configured=list(settings.tenants))
    except UnknownTenant:
        raise CliError(f"no chain for tenant {args.tenant!r}") from None
    except StoreUnavailable as exc:
        raise CliError(f"audit store unavailable, nothing verified: {exc}", code=2) from None
    finally:
        store.close()
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
            if tenant.first_break is not None:
                result = f"[red]{tenant.first_break.describe()}[/]"
            else:
                result = "no records" if tenant.empty else "[green]ok[/]"
            table.add_row(tenant.tenant, str(tenant.records), str(tenant.checkpoints), result)
        console(sys.stdout).print(table if report.tenants else "no records yet: nothing to verify")
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
    with audit_store(settings) as store:
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
    with audit_store(settings) as store:
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
