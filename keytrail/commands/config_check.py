"""`keytrail config check`: validate the configuration, print every problem, and show where each topic goes."""

from __future__ import annotations

import argparse
import json

from config.settings import DEFAULT_TOPICS
from keytrail.cli import Commands, command_group, settings_from_args
from keytrail.commands.run import with_embedded_defaults
from keytrail.output import add_format_option, chosen_format, print_rows


def register(subparsers: Commands) -> None:
    commands = command_group(subparsers, "config", help="configuration tools")
    check = commands.add_parser("check", help="validate the config; list every problem; show routing")
    add_format_option(check)
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from sinks import build_sinks

    settings = with_embedded_defaults(settings_from_args(args), announce=False, create=False)
    for sink in build_sinks(settings).values():  # raises one ConfigError with every sink's problems
        sink.close()
    routing = [
        {
            "topic": topic,
            "sinks": [s.name for s in settings.sinks if any(s.routes(t, topic) for t in settings.tenants)],
        }
        for topic in DEFAULT_TOPICS
    ]
    if chosen_format(args.format) == "json":
        print(
            json.dumps(
                {
                    "source": settings.source,
                    "tenants": sorted(settings.tenants),
                    "sinks": [{"name": s.name, "type": s.type} for s in settings.sinks],
                    "routing": routing,
                },
                indent=2,
            )
        )
        return 0
    print(f"config OK ({settings.source}): {len(settings.tenants)} tenant(s), {len(settings.sinks)} sink(s)")
    rows = [{"topic": r["topic"], "sinks": ", ".join(r["sinks"]) or "(none)"} for r in routing]
    print_rows(rows, ("topic", "sinks"), "table", title="where each topic goes")
    return 0
