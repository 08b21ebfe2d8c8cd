"""
All CLI rendering: rich tables on stdout, ``--output json``, diagnostics and
progress bars on stderr. Commands build plain data and hand it here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

OutputFormat = Literal["table", "json"]
F = TypeVar("F", bound=Callable[..., Any])


def output_option(fn: F) -> F:
    """Add ``--output table|json`` to a command, passed as ``output_format``."""
    return click.option(
        "--output",
        "output_format",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Render as a table for people or JSON for scripts.",
    )(fn)


def stdout() -> Console:
    return Console(soft_wrap=False, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def render_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[tuple[str, str]],
    output: OutputFormat,
    title: str | None = None,
    empty: str = "nothing to show",
) -> None:
    """Print *rows* (dicts) as a table with ``(key, header)`` *columns*, or as a JSON list."""
    if output == "json":
        echo_json(list(rows))
        return
    if not rows:
        stderr().print(empty)
        return
    table = Table(title=title, show_lines=False)
    for _key, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        # Text, not str: data such as a routing key "[order.*]" is not rich markup.
        table.add_row(*(Text(_cell(row.get(key))) for key, _ in columns))
    stdout().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def note(message: str) -> None:
    """A diagnostic line on stderr (never mixed into data on stdout)."""
    # soft_wrap: a diagnostic stays on one line, so it can be grepped.
    stderr().print(message, markup=False, soft_wrap=True)


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


@contextmanager
def progress(
    description: str, total: int | None, *, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar on stderr only when *enabled* and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _n: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr(),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def show_record(record: Mapping[str, Any]) -> None:
    """One message in detail (``dlq show --full``): summary fields, then headers and body as JSON."""
    console = stdout()
    console.rule(str(record.get("message_id") or record.get("task_id") or "message"))
    for key, value in record.items():
        if key in ("headers", "properties", "body", "deaths", "celery"):
            continue
        if value not in (None, [], ""):
            console.print(f"{key}: {_cell(value)}", markup=False)
    for key in ("celery", "deaths", "properties", "headers", "body"):
        if record.get(key) not in (None, [], {}):
            console.print(f"{key}:", markup=False)
            console.print(
                json.dumps(record[key], indent=2, default=str, ensure_ascii=False),
                markup=False,
            )
