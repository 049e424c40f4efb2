"""`fleetkeeper telemetry DEVICE_ID --metric M`: a device's measurements, with a sparkline."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json
from fleetkeeper.cli.remote import remote

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """The values as block characters, squeezed to `width` by averaging neighbours."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [
            sum(chunk) / len(chunk)
            for chunk in (values[int(i * size) : int((i + 1) * size)] for i in range(width))
            if chunk
        ]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - low) / span * len(BARS)))] for v in values)


@remote
def telemetry(
    api: ApiClient,
    device_id: Annotated[str, typer.Argument(metavar="DEVICE_ID", help="The device's id.")],
    metric: Annotated[str, typer.Option(help="The metric, e.g. battery.")],
    since: Annotated[
        str, typer.Option("--from", help="Start: ISO 8601, Unix seconds, or relative (-1h, -7d).")
    ] = "-1h",
    until: Annotated[str | None, typer.Option("--to", help="End (default: now).")] = None,
    step: Annotated[
        float | None,
        typer.Option(min=0, help="Bucket width in seconds (0: raw; default: by the range)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """A device's measurements of one metric: raw points, or buckets with min/max/avg."""
    params = compact({"metric": metric, "from": since, "to": until, "step": step})
    points = api.get(join("/api/v1/devices", device_id, "telemetry"), params)
    output.emit(points, as_json, lambda p: render(p, metric))


def render(points: list[dict[str, Any]], metric: str) -> RenderableType:
    if not points:
        return f"No {metric} points in that range."
    values = [float(p["v"]) for p in points]
    bucketed = "count" in points[0]
    columns = [output.Column("Time", "t", no_wrap=True), output.Column(metric, "v")]
    if bucketed:
        columns += [
            output.Column("Min", "min"),
            output.Column("Max", "max"),
            output.Column("Count", "count"),
        ]
    shown = points[-20:]
    summary = Text(
        f"{len(points)} {'buckets' if bucketed else 'points'}, "
        f"min {min(values):g}, max {max(values):g}, last {values[-1]:g}"
    )
    caption = f"the last {len(shown)} of {len(points)}" if len(points) > len(shown) else None
    return Group(
        Text(sparkline(values), style="cyan"),
        summary,
        output.table(shown, columns, caption=caption),
    )
