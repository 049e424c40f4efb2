"""`fleetkeeper devices ...`: the inventory."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import (
    HardwareRevision,
    Json,
    Paging,
    Query,
    Reason,
    Tenant,
    reason_header,
    require_change,
)
from fleetkeeper.cli.remote import remote

app = typer.Typer(help="Register, find, change and remove devices.", no_args_is_help=True)

PATH = "/api/v1/devices"
COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Serial", "serial"),
    output.Column("Model", "model"),
    output.Column("State", "state"),
    output.Column("Firmware", "firmware_version"),
    output.Column("Online", "online"),
    output.Column("Tags", "tags"),
)

DeviceId = Annotated[
    str, typer.Argument(metavar="DEVICE_ID", help="The device's id.", show_default=False)
]
AttrList = list[str] | None


@dataclass(frozen=True)
class DeviceFields:
    """Options `devices create` and `devices update` share."""

    name: Annotated[str | None, typer.Option(help="Display name (default: the serial).")] = None
    tenant: Tenant = None
    state: Annotated[
        str | None,
        typer.Option(
            help="Lifecycle state: registered, pending, active, maintenance, "
            "quarantined or retired."
        ),
    ] = None
    firmware: Annotated[str | None, typer.Option(help="Firmware version, e.g. 1.4.2.")] = None
    hardware_revision: HardwareRevision = None
    attrs: Annotated[
        AttrList,
        typer.Option(
            "--attr",
            metavar="KEY=VALUE",
            help="Attribute (repeatable). VALUE is JSON when it parses as a number, "
            "true/false, a list or an object, else text: --attr floor=3 "
            "--attr site=berlin-1.",
        ),
    ] = None
    tags: Annotated[
        AttrList,
        typer.Option(
            "--tag",
            metavar="TAG",
            help="Tag (repeatable). On update the tags given replace the device's tags.",
        ),
    ] = None
    lat: Annotated[float | None, typer.Option(min=-90, max=90, help="Latitude.")] = None
    lon: Annotated[float | None, typer.Option(min=-180, max=180, help="Longitude.")] = None
    reason: Reason = None

    def body(self) -> dict[str, Any]:
        """The JSON fields these options set (options not given are left out)."""
        body: dict[str, Any] = {
            "name": self.name,
            "tenant": self.tenant,
            "state": self.state,
            "firmware_version": self.firmware,
            "hardware_revision": self.hardware_revision,
            "reason": self.reason,
        }
        if self.attrs:
            body["attributes"] = dict(parse_attr(a) for a in self.attrs)
        if self.tags is not None:
            body["tags"] = self.tags
        if (self.lat is None) != (self.lon is None):
            raise typer.BadParameter("give --lat and --lon together", param_hint="--lat/--lon")
        if self.lat is not None:
            body["location"] = {"lat": self.lat, "lon": self.lon}
        return compact(body)


def parse_attr(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE read as JSON where that makes sense (`3`, `true`, `[1, 2]`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--attr")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return key.strip(), raw
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return key.strip(), raw
    return key.strip(), value


def render(device: dict[str, Any]) -> RenderableType:
    return output.record(device, f"Device {device.get('serial', '')}")


@app.command("list")
@remote
def list_devices(
    api: ApiClient, query: Query = None, paging: Paging = Paging(), as_json: Json = False
) -> None:
    """List devices, optionally those matching a fleet query."""
    page = api.page(PATH, {"q": query, **paging.params()}, all_pages=paging.all_pages)
    output.listing(page, as_json, COLUMNS, noun="devices")


@app.command("show")
@remote
def show(api: ApiClient, device_id: DeviceId, as_json: Json = False) -> None:
    """Show one device."""
    output.emit(api.get(join(PATH, device_id)), as_json, render)


@app.command("create")
@remote
def create(
    api: ApiClient,
    serial: Annotated[str, typer.Option(help="Serial number (unique).", show_default=False)],
    model: Annotated[
        str, typer.Option(help="Name of an existing device model.", show_default=False)
    ],
    fields: DeviceFields = DeviceFields(),
    as_json: Json = False,
) -> None:
    """Register a device."""
    body = {"serial": serial, "model": model, **fields.body()}
    output.emit(api.post(PATH, body), as_json, render)


@app.command("update")
@remote
def update(
    api: ApiClient,
    device_id: DeviceId,
    model: Annotated[str | None, typer.Option(help="Move to another device model.")] = None,
    fields: DeviceFields = DeviceFields(),
    remove_attrs: Annotated[
        AttrList,
        typer.Option("--remove-attr", metavar="KEY", help="Remove an attribute (repeatable)."),
    ] = None,
    clear_tags: Annotated[bool, typer.Option("--clear-tags", help="Remove every tag.")] = False,
    as_json: Json = False,
) -> None:
    """Change a device: only the options given change; attributes merge."""
    body = fields.body()
    if model is not None:
        body["model"] = model
    if remove_attrs:
        body["attributes"] = {**body.get("attributes", {}), **dict.fromkeys(remove_attrs)}
    if clear_tags:
        if fields.tags:
            raise typer.BadParameter(
                "--clear-tags and --tag contradict each other", param_hint="--clear-tags"
            )
        body["tags"] = []
    output.emit(api.patch(join(PATH, device_id), require_change(body)), as_json, render)


@app.command("delete")
@remote
def delete(api: ApiClient, device_id: DeviceId, reason: Reason = None) -> None:
    """Remove a device from the inventory."""
    api.delete(join(PATH, device_id), {"reason": reason})
    output.note(f"Deleted device {device_id}.")


class ImportFormat(StrEnum):
    csv = "csv"
    json = "json"


_CONTENT_TYPES = {ImportFormat.csv: "text/csv", ImportFormat.json: "application/json"}


def _import_format(path: Path, given: ImportFormat | None) -> ImportFormat:
    if given is not None:
        return given
    try:
        return ImportFormat(path.suffix.lower().lstrip("."))
    except ValueError:
        raise typer.BadParameter(
            f"cannot tell the format of {path.name!r} from its extension: pass --format",
            param_hint="--format",
        ) from None


@app.command("import")
@remote
def import_devices(
    api: ApiClient,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="A .csv or .json file.",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        ImportFormat | None,
        typer.Option("--format", help="File format (default: from the file's extension)."),
    ] = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Register many devices from CSV or JSON: all of them, or (on any bad row) none.

    CSV: a header row of device field names (serial, model, name, tenant, state,
    firmware_version, hardware_revision, tags separated by ';', location.lat, location.lon,
    attributes.KEY). JSON: a list of device objects.
    """
    content_type = _CONTENT_TYPES[_import_format(file, fmt)]
    headers = {"Content-Type": content_type, **reason_header(reason)}
    result = api.request("POST", f"{PATH}/import", content=file.read_bytes(), headers=headers)
    output.emit(result, as_json, lambda r: f"Imported {r['created']} devices.")


@app.command("aggregate")
@remote
def aggregate(
    api: ApiClient,
    by: Annotated[
        str,
        typer.Option(
            help="Field to group by: model, state, tenant, firmware_version, attributes.KEY, ...",
            show_default=False,
        ),
    ],
    query: Query = None,
    as_json: Json = False,
) -> None:
    """Count devices grouped by a field."""
    result = api.get(f"{PATH}/aggregate", {"by": by, "q": query})
    columns = (output.Column(by, "value"), output.Column("Devices", "count"))
    output.emit(
        result,
        as_json,
        lambda r: output.table(r["buckets"], columns, caption=f"{r['total']} devices"),
    )
