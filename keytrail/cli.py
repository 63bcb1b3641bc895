"""The `keytrail` command: parses arguments, loads settings once, and hands them to one subcommand.

Each subcommand lives in `keytrail/commands/<area>.py` and exposes `register(subparsers)`. Failures reach the
user as one line on stderr and a non-zero exit, never a traceback. `--config` is taken before the command and after
any (sub)command, where it wins: every parser the commands add gets it from `Commands`, so none can miss it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from config import ConfigError, Settings, load_settings
from config.urls import mask_urls
from events.version import VERSION as __version__

COMMAND_MODULES = (
    "keytrail.commands.run",
    "keytrail.commands.simulate",
    "keytrail.commands.audit",
    "keytrail.commands.dlq",
    "keytrail.commands.subscribe",
    "keytrail.commands.status",
    "keytrail.commands.config_check",
)


class CliError(Exception):
    """A failure to report as one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`keytrail: error: ...`) and exit 2, and subcommands are `Commands`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", Commands)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        raise SystemExit(2)


if TYPE_CHECKING:
    _SubcommandsAction = argparse._SubParsersAction[Parser]
else:  # not subscriptable at run time
    _SubcommandsAction = argparse._SubParsersAction


class Commands(_SubcommandsAction):
    """The subcommands of a `Parser`: each one added, at any depth, also takes `--config`.

    Its default is SUPPRESS: argparse copies a subcommand's parsed values over the ones parsed before it, so only a
    `--config` actually given after the command may replace the top-level one (which defaults to None)."""

    def add_parser(self, name: str, **kwargs: Any) -> Parser:
        parser = super().add_parser(name, **kwargs)
        _add_config_option(parser, default=argparse.SUPPRESS, where="; given here, it overrides one before the command")
        return parser


def _add_config_option(parser: argparse.ArgumentParser, *, default: Any, where: str) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help=f"TOML config file (default: $KEYTRAIL_CONFIG, else ./keytrail.toml if present){where}",
    )


def command_group(subparsers: Commands, name: str, *, help: str) -> Commands:
    """`keytrail <name> COMMAND`: a command made of subcommands; alone, it prints its help and exits 2."""
    group = subparsers.add_parser(name, help=help)

    def print_help(args: argparse.Namespace) -> int:
        group.print_help()
        return 2

    group.set_defaults(handler=print_help)
    return cast(Commands, group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", parser_class=Parser))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from `--config`, else KEYTRAIL_CONFIG, else ./keytrail.toml, else the embedded defaults."""
    path: Path | None = getattr(args, "config", None)
    return load_settings(path, os.environ)


def build_parser() -> Parser:
    parser = Parser(prog="keytrail", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"keytrail {__version__}")
    _add_config_option(parser, default=None, where="; may also follow the command, where it wins")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # an area whose commands are not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit status per class of failure
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result: int | None = args.handler(args)
    except CliError as exc:
        sys.stderr.write(f"keytrail: {exc}\n")
        return exc.code
    except ConfigError as exc:
        if len(exc.problems) == 1:
            sys.stderr.write(f"keytrail: config: {exc.problems[0]}\n")
        else:
            sys.stderr.write(f"keytrail: config has {len(exc.problems)} problems:\n")
            sys.stderr.writelines(f"  - {problem}\n" for problem in exc.problems)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`keytrail audit export | head`): not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        # A bug or an environment nobody foresaw: still one line, never a traceback whose locals or message could
        # hold a secret (URLs in the message are masked); the type names the class of failure for a report.
        sys.stderr.write(f"keytrail: unexpected {type(exc).__name__}: {mask_urls(str(exc))[:300]}\n")
        return 70  # EX_SOFTWARE
    return result or 0
