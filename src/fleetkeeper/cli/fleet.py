"""`fleetkeeper fleet overview`: the fleet at a glance, as tables and histograms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact
from fleetkeeper.cli.options import Json, Query
from fleetkeeper.cli.remote import remote

app = typer.Typer(help="The fleet as a whole.", no_args_is_help=True)

PATH = "/api/v1/fleet/overview"
BAR_WIDTH = 30
EIGHTHS = " ▏▎▍▌▋▊▉"


@app.command("overview")
@remote
def overview(
    api: ApiClient,
    query: Query = None,
    top: Annotated[
        int, typer.Option(min=1, max=100, help="How many firmware versions to list by name.")
    ] = 10,
    as_json: Json = False,
) -> None:
    """Counts and distributions of the devices a query selects (default: all you may see):
    online, states, models, firmware versions, health flags, battery, signal and storage."""
    data = api.get(PATH, compact({"q": query, "top": top}))
    output.emit(data, as_json, render)


def bar(count: int, largest: int, width: int = BAR_WIDTH) -> str:
    """`count` as a horizontal bar, `largest` filling `width` cells (in eighths of a cell)."""
    if largest <= 0 or count <= 0:
        return ""
    eighths = max(1, round(count / largest * width * 8))
    full, rest = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[rest] if rest else "")


def _percent(part: int, whole: int) -> str:
    if not whole:
        return "-"
    return "<1%" if 0 < part < whole / 200 else f"{part / whole:.0%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _counts(title: str, header: str, rows: Sequence[Mapping[str, Any]], total: int) -> Table:
    grid = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    grid.add_column(header, overflow="fold")
    grid.add_column("Devices", justify="right")
    grid.add_column("", justify="right")
    for row in rows:
        value = "unknown" if row["value"] is None else str(row["value"])
        grid.add_row(escape(value), f"{row['count']:,}", _percent(row["count"], total))
    if not rows:
        grid.add_row("-", "0", "")
    return grid


def _firmware(firmware: Mapping[str, Any], total: int) -> Table:
    grid = _counts("By firmware", "Version", firmware["top"], total)
    if firmware["other"]:
        others = firmware["versions"] - len(firmware["top"])
        grid.add_row(
            f"{others:,} other version{'s' if others != 1 else ''}",
            f"{firmware['other']:,}",
            _percent(firmware["other"], total),
        )
    return grid


def _bin_label(low: float | None, high: float | None) -> str:
    if low is None:
        return f"< {high:g}"
    if high is None:
        return f">= {low:g}"
    return f"{low:g} to {high:g}"


def histogram(metric: str, spread: Mapping[str, Any]) -> RenderableType:
    unit = spread["unit"]
    head = Text(f"{metric} ({unit})", style="bold")
    if not spread["devices"]:
        return Group(head, Text("no readings"))
    head.append(
        f"  {spread['devices']:,} devices, min {_number(spread['min'])}, "
        f"median {_number(spread['median'])}, max {_number(spread['max'])}",
        style="default",
    )
    largest = max(b["count"] for b in spread["bins"])
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right")
    grid.add_column(style="cyan", width=BAR_WIDTH + 1)
    grid.add_column(justify="right")
    for b in spread["bins"]:
        grid.add_row(_bin_label(b["low"], b["high"]), bar(b["count"], largest), f"{b['count']:,}")
    return Group(head, grid)


def render(data: Mapping[str, Any]) -> RenderableType:
    total = data["total"]
    summary = Text()
    summary.append(f"{total:,} devices", style="bold")
    summary.append(
        f"   online {data['online']:,} ({_percent(data['online'], total)})"
        f"   offline {data['offline']:,} ({_percent(data['offline'], total)})"
        f"   flagged {data['flagged']:,} ({_percent(data['flagged'], total)})"
    )
    online = Text(bar(data["online"], total, 50), style="green")
    online.append("░" * (50 - len(online.plain)) if total else "", style="dim")
    tables = Columns(
        [
            _counts("By state", "State", data["by_state"], total),
            _counts("By model", "Model", data["by_model"], total),
            _firmware(data["by_firmware"], total),
            _counts("By health flag", "Flag", data["by_health"], total),
        ],
        padding=(1, 4),
    )
    histograms = [histogram(name, spread) for name, spread in data["metrics"].items()]
    return Group(summary, online, Text(""), tables, Text(""), Columns(histograms, padding=(1, 4)))
