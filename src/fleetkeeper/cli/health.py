"""`fleetkeeper health`: flagged devices with their evidence and a sparkline of the metric at
fault; `fleetkeeper health maintenance`: the units due for a battery or a storage visit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, ApiError, join
from fleetkeeper.cli.options import Json, Paging, Query
from fleetkeeper.cli.remote import (
    CommandServer,
    CommandToken,
    Connection,
    connect,
    remote,
    root_connection,
)
from fleetkeeper.cli.telemetry import sparkline

app = typer.Typer(
    help="Health flags (faulty sensors, floods, silent devices, outages, batteries and storage "
    "due) with their evidence. Without a subcommand: the flagged devices.",
)

SPARKLINES = 20  # flags at most that get a sparkline (one telemetry request each)
SPARK_WIDTH = 30
# The telemetry a flag's sparkline shows: the recent hour, or a month of hourly averages.
HISTORY_FLAGS = {"battery_degraded", "storage_filling"}


@app.callback(invoke_without_command=True)
def health(
    ctx: typer.Context,
    query: Query = None,
    device: Annotated[
        str | None, typer.Option("--device", help="One device's flags, by id.", show_default=False)
    ] = None,
    flag: Annotated[
        str | None, typer.Option("--flag", help="Only devices with this flag, e.g. outage.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Devices per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Start at this next_cursor of an earlier page.")
    ] = None,
    all_pages: Annotated[
        bool, typer.Option("--all", help="Follow next_cursor and show every page.")
    ] = False,
    as_json: Json = False,
    server: CommandServer = None,
    token: CommandToken = None,
) -> None:
    """The devices that carry health flags (those a query selects, or one --device), each flag
    with a summary of its evidence and a sparkline of the metric at fault."""
    if ctx.invoked_subcommand is not None:
        return  # `health maintenance`: that command does the work
    root = root_connection(ctx)
    with connect(Connection(server or root.server, token or root.token)) as api:
        if device is not None:
            show_device(api, device, as_json)
        else:
            paging = Paging(limit, cursor, all_pages)
            show_fleet(api, {"q": query, "flag": flag, **paging.params()}, all_pages, as_json)


def show_device(api: ApiClient, device: str, as_json: bool) -> None:
    data = api.get(join("/api/v1/devices", device, "health"))
    output.emit(data, as_json, lambda d: render_device(d, _sparks(api, device, d["flags"])))


def show_fleet(api: ApiClient, params: dict[str, Any], all_pages: bool, as_json: bool) -> None:
    page = api.page("/api/v1/fleet/health", params, all_pages=all_pages)
    if as_json:
        output.print_json(page)
        return
    rows = [(item, f) for item in page["items"] for f in item["flags"]]
    sparks: dict[tuple[str, str], str] = {}
    for item, f in rows[:SPARKLINES]:
        sparks.update(_sparks(api, item["device_id"], [f]))
    output.stdout().print(render_fleet(page["items"], sparks))
    if page.get("next_cursor"):
        output.note(
            f"More devices follow: add --cursor {page['next_cursor']} for the next page, "
            "or --all for every page."
        )


@app.command("maintenance")
@remote
def maintenance(
    api: ApiClient,
    within: Annotated[
        str, typer.Option("--within", help="How far ahead: 7d, 30d, 12h (up to 90d).")
    ] = "30d",
    query: Query = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """The units due for a battery replacement or a storage cleanup within a time, most urgent
    first: the forecast date with its uncertainty band and the reason, for field work orders."""
    params = {"within": within, "q": query, **paging.params()}
    page = api.page("/api/v1/fleet/maintenance", params, all_pages=paging.all_pages)
    if as_json:
        output.print_json(page)
        return
    output.stdout().print(render_maintenance(page["items"], within))
    if page.get("next_cursor"):
        output.note(f"More visits follow: add --cursor {page['next_cursor']}, or --all.")


# --- sparklines ---------------------------------------------------------------------------------


def _sparks(
    api: ApiClient, device_id: str, flags: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, str], str]:
    """A sparkline per metric flag of the device, keyed (device, metric)."""
    found: dict[tuple[str, str], str] = {}
    for f in flags:
        metric = f["metric"]
        if not metric or (device_id, metric) in found:
            continue
        params: dict[str, Any] = {"metric": metric, "from": "-1h"}
        if f["flag"] in HISTORY_FLAGS:
            params = {"metric": metric, "from": "-30d", "step": 3600}
        try:
            points = api.get(join("/api/v1/devices", device_id, "telemetry"), params)
        except ApiError:
            continue  # a sparkline is a nicety: the flags still show
        found[(device_id, metric)] = sparkline([float(p["v"]) for p in points], SPARK_WIDTH)
    return found


# --- rendering ----------------------------------------------------------------------------------


def render_device(data: Mapping[str, Any], sparks: Mapping[tuple[str, str], str]) -> RenderableType:
    flags = data["flags"]
    if not flags:
        return f"Device {data['device_id']} carries no health flag."
    grid = _flag_table(show_device=False)
    for f in flags:
        grid.add_row(*_flag_cells(f, sparks.get((data["device_id"], f["metric"]), "")))
    checked = _when(data.get("checked_at"))
    return Group(Text(f"Device {data['device_id']}: checked {checked}"), grid)


def render_fleet(
    items: Sequence[Mapping[str, Any]], sparks: Mapping[tuple[str, str], str]
) -> RenderableType:
    if not items:
        return "No device carries a health flag."
    grid = _flag_table(show_device=True)
    for item in items:
        for i, f in enumerate(item["flags"]):
            who = (
                [item["serial"], item.get("site") or "-", item["model"]] if i == 0 else ["", "", ""]
            )
            spark = sparks.get((item["device_id"], f["metric"]), "")
            grid.add_row(*(escape(w) for w in who), *_flag_cells(f, spark))
    flags = sum(len(item["flags"]) for item in items)
    grid.caption = f"{_count(len(items), 'device')}, {_count(flags, 'flag')}"
    return grid


def render_maintenance(items: Sequence[Mapping[str, Any]], within: str) -> RenderableType:
    if not items:
        return f"No unit is due within {within}."
    caption = f"{_count(len(items), 'visit')} due within {within}"
    grid = Table(caption=caption, caption_justify="left")
    for header in ("Due by", "Expected", "Latest", "Device", "Site", "Work", "Reason"):
        grid.add_column(header, overflow="fold", no_wrap=header in ("Due by", "Expected"))
    for v in items:
        due = _date(v["due_at"]) + (" (overdue)" if v["overdue"] else "")
        grid.add_row(
            Text(due, style="bold red" if v["severity"] == "critical" else ""),
            _date(v["expected_at"]),
            _date(v["latest_at"]),
            escape(v["serial"]),
            escape(v.get("site") or "-"),
            escape(v["maintenance"].replace("_", " ")),
            escape(v["reason"]),
        )
    return grid


def _flag_table(*, show_device: bool) -> Table:
    grid = Table(caption_justify="left")
    headers = ["Device", "Site", "Model"] if show_device else []
    headers += ["Flag", "Metric", "Detector", "Severity", "Since", "Evidence", "Last hour / month"]
    for header in headers:
        grid.add_column(header, overflow="fold", no_wrap=header == "Last hour / month")
    return grid


def _flag_cells(f: Mapping[str, Any], spark: str) -> list[Any]:
    style = "bold red" if f["severity"] == "critical" else "yellow"
    return [
        Text(f["flag"], style=style),
        escape(f["metric"] or "(device)"),
        escape(f["detector"]),
        escape(f["severity"]),
        _when(f["since"]),
        escape(summary(f["detector"], f["evidence"])),
        Text(spark, style="cyan"),
    ]


def summary(detector: str, evidence: Mapping[str, Any]) -> str:
    """The evidence of a flag in a line."""
    e = evidence
    try:
        if detector == "stuck_sensor":
            return (
                f"stuck at {e['value']:g} for {_span(e['seconds'])} ({e['points']} readings; "
                f"{e['expected_changes']:.0f} changes expected from {e['reference']})"
            )
        if detector == "out_of_range":
            low, high = e["range"]
            return (
                f"{e['points']} of {e['of']} readings outside {low:g}..{high:g} "
                f"({e['lowest']:g} to {e['highest']:g})"
            )
        if detector == "noisy":
            return (
                f"noise {e['noise']:g}, {e['ratio']:g}x the peers' {e['peer_noise']:g} "
                f"({e['peers']} peers)"
            )
        if detector == "spike":
            worst = max(s["deviations"] for s in e["spikes"])
            return f"{e['points']} spikes, up to {worst:g} deviations (limit {e['limit']:g})"
        if detector == "peer_deviation":
            return f"median {e['median']:g} vs the peers' {e['peer_median']:g} (z={e['z']:g})"
        if detector == "flood":
            return (
                f"{e['points']} reports in {_span(e['seconds'])}, {e['factor']:g}x the "
                f"{e['expected_points']:g} expected ({e['reference']})"
            )
        if detector == "silent":
            return f"nothing for {_quiet(e)} ({e['peers_reporting']} of {e['peers']} peers report)"
        if detector == "outage":
            scope = e["site"] if e["scope"] == "site" else f"{e['model']} at {e['site']}"
            return f"{e['quiet']} of {e['reporting']} devices at {scope} quiet; {_quiet(e)}"
        if "reason" in e:
            return str(e["reason"])
    except (KeyError, TypeError, ValueError):
        pass
    return output.text(dict(evidence))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _quiet(evidence: Mapping[str, Any]) -> str:
    seconds = evidence.get("silent_seconds")
    return "never reported lately" if seconds is None else _span(seconds)


def _span(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min"
    return f"{seconds:.0f} s"


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")


def _date(value: str) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d")
