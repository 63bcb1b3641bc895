"""How commands print data: a rich table on a terminal, JSON / JSON Lines / CSV for scripts."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

FORMATS = ("table", "json", "jsonl", "csv")


def add_format_option(parser: Any, choices: Sequence[str] = ("table", "json")) -> None:
    parser.add_argument(
        "--format", choices=list(choices), default=None, help="output format (default: table on a terminal, else json)"
    )


def chosen_format(value: str | None, stream: TextIO | None = None) -> str:
    return value or ("table" if (stream or sys.stdout).isatty() else "json")


def print_rows(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: str,
    *,
    title: str | None = None,
    stream: TextIO | None = None,
) -> int:
    """Print rows in `fmt`; returns how many were printed. JSON is one array; JSONL and CSV stream row by row."""
    stream = stream or sys.stdout
    count = 0
    if fmt == "json":
        items = list(rows)
        json.dump(items, stream, indent=2, default=str)
        stream.write("\n")
        return len(items)
    if fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps(row, default=str, separators=(",", ":")) + "\n")
            count += 1
        return count
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
            count += 1
        return count
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
        count += 1
    Console(file=stream).print(table)
    return count


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def console(stream: TextIO) -> Any:
    """A rich console writing to `stream` as the data is (no guessed highlighting, no wrapping of long lines)."""
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=False)


@contextmanager
def progress(total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr, advanced by the callable it yields; with no total, nothing is drawn.

    Callers pass a total only when stderr is a terminal: scripts get clean output."""
    if not total:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
