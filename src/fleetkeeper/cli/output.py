"""What commands print: the server's JSON for scripts (`--json`), Rich tables for people.

Data goes to stdout; notes, hints and errors go to stderr, so `--json` output stays parseable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fleetkeeper.cli.client import ApiError, ServerError, Unreachable

Render = Callable[[Any], RenderableType]


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # dotted path into the item, e.g. "location.lat"
    no_wrap: bool = False


def stdout() -> Console:
    # Built per call: Rich picks up the current sys.stdout (swapped by test runners).
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def lookup(item: Mapping[str, Any], key: str) -> Any:
    value: Any = item
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def text(value: Any) -> str:
    """A value as a person reads it in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(text(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def emit(data: Any, as_json: bool, render: Render) -> None:
    if as_json:
        print_json(data)
        return
    shown = render(data)
    if isinstance(shown, str):
        # A sentence, not markup; unwrapped so ids and hashes stay copyable.
        stdout().print(Text(shown), soft_wrap=True)
    else:
        stdout().print(shown)


def table(
    items: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, caption: str | None = None
) -> Table:
    grid = Table(caption=caption, caption_justify="left")
    for column in columns:
        # Folding, not cutting with "…": a table never hides part of a value.
        grid.add_column(column.header, no_wrap=column.no_wrap, overflow="fold")
    for item in items:
        grid.add_row(*(escape(text(lookup(item, c.key))) for c in columns))
    return grid


def record(item: Mapping[str, Any], title: str, fields: Sequence[str] | None = None) -> Panel:
    """One resource as a key/value panel; `fields` picks and orders (default: all)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key in fields or list(item):
        grid.add_row(key, escape(text(lookup(item, key))))
    return Panel(grid, title=escape(title), title_align="left", expand=False)


def listing(
    page: Mapping[str, Any], as_json: bool, columns: Sequence[Column], *, noun: str
) -> None:
    """A page of a list, with a hint on stderr when more pages follow."""
    if as_json:
        print_json(page)
        return
    items = page["items"]
    stdout().print(table(items, columns, caption=f"{len(items)} {noun}"))
    if page.get("next_cursor"):
        note(
            f"More {noun} follow: add --cursor {page['next_cursor']} for the next page, "
            "or --all for every page."
        )


def say(markup: str) -> None:
    """A line (Rich markup) on stderr, not wrapped, so it stays one line for grep and logs."""
    stderr().print(markup, soft_wrap=True)


def note(message: str) -> None:
    say(escape(message))


def error(message: str) -> None:
    say(f"[bold red]Error:[/] {escape(message)}")


def report(exc: ApiError) -> None:
    """An error on stderr: the problem's title and detail, and its per-field errors if any."""
    if isinstance(exc, Unreachable):
        error(str(exc))
        return
    assert isinstance(exc, ServerError)
    error(f"{exc.title} (HTTP {exc.status})")
    if exc.detail:
        note(exc.detail)
    if exc.status == 401:
        note(
            "The server did not accept the API token: pass --token or set FLEETKEEPER_TOKEN "
            "to a valid, unexpired token."
        )
    elif exc.status == 403:
        note("The token is valid, but its role does not allow this.")
    if exc.errors:
        stderr().print(_errors_table(exc.errors))


def _errors_table(errors: Sequence[Mapping[str, Any]]) -> Table:
    columns = [Column("Row", "row")] if any("row" in e for e in errors) else []
    columns += [Column("Field", "field"), Column("Problem", "message")]
    return table(errors, columns)
