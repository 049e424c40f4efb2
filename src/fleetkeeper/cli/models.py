"""`fleetkeeper models ...`: device models (hardware types)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import HardwareRevision, Json, Reason, require_change
from fleetkeeper.cli.remote import remote

app = typer.Typer(
    help="Device models: the hardware types devices are made of.", no_args_is_help=True
)

PATH = "/api/v1/models"
COLUMNS = (
    output.Column("Name", "name", no_wrap=True),
    output.Column("Manufacturer", "manufacturer"),
    output.Column("Hardware", "hardware_revision"),
    output.Column("Capabilities", "capabilities"),
    output.Column("Offline after (s)", "offline_after_seconds"),
    output.Column("Description", "description"),
)
NONE = "none"  # the option value that clears a setting
_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

ModelName = Annotated[
    str, typer.Argument(metavar="NAME", help="The model's name.", show_default=False)
]


@dataclass(frozen=True)
class ModelFields:
    """Options `models create` and `models update` share."""

    manufacturer: Annotated[str | None, typer.Option(help="Who makes it.")] = None
    hardware_revision: HardwareRevision = None
    description: Annotated[str | None, typer.Option(help="Free text.")] = None
    capabilities: Annotated[
        list[str] | None,
        typer.Option(
            "--capability",
            metavar="NAME",
            help="Capability (repeatable). On update the capabilities given replace the model's.",
        ),
    ] = None
    config_schema: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE.json",
            help="JSON Schema for the configuration of this model's devices.",
        ),
    ] = None
    offline_after: Annotated[
        str | None,
        typer.Option(
            "--offline-after",
            metavar="DURATION",
            help="How long a device of this model may stay silent and still count as online: "
            f"seconds, or 90s, 30m, 6h, 2d; '{NONE}' for the server's online window.",
        ),
    ] = None
    metric_ranges: Annotated[
        list[str] | None,
        typer.Option(
            "--metric-range",
            metavar="METRIC=LOW:HIGH",
            help="The physical range of a sensor (repeatable), e.g. temperature=-40:85. On "
            f"update the ranges given replace the model's; '{NONE}' removes them.",
        ),
    ] = None
    reason: Reason = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "manufacturer": self.manufacturer,
            "hardware_revision": self.hardware_revision,
            "description": self.description,
            "capabilities": self.capabilities,
            "reason": self.reason,
        }
        if self.config_schema is not None:
            body["config_schema"] = _read_json_object(self.config_schema)
        body = compact(body)
        # Set after compact: null is how the API clears them.
        if self.offline_after is not None:
            body["offline_after_seconds"] = parse_duration(self.offline_after)
        if self.metric_ranges is not None:
            body["metric_ranges"] = parse_ranges(self.metric_ranges)
        return body


def parse_duration(text: str) -> int | None:
    """`90`, `90s`, `30m`, `6h`, `2d` → seconds; `none` → None."""
    if text.strip().lower() == NONE:
        return None
    match = _DURATION.fullmatch(text.strip())
    if not match or not int(match.group(1)):
        raise typer.BadParameter(
            f"{text!r} is no duration: give seconds, or a number with s, m, h or d (6h), or {NONE}",
            param_hint="--offline-after",
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_ranges(texts: list[str]) -> dict[str, list[float]] | None:
    """`METRIC=LOW:HIGH` options → {metric: [low, high]}; `none` → None. The server checks
    the names and that LOW < HIGH."""
    if [t.strip().lower() for t in texts] == [NONE]:
        return None
    ranges: dict[str, list[float]] = {}
    for text in texts:
        metric, sep, bounds = text.partition("=")
        low, colon, high = bounds.partition(":")
        try:
            pair = [float(low), float(high)]
        except ValueError:
            pair = []
        if not (sep and colon and metric.strip() and pair and all(map(math.isfinite, pair))):
            raise typer.BadParameter(
                f"{text!r} is not METRIC=LOW:HIGH, e.g. temperature=-40:85",
                param_hint="--metric-range",
            )
        ranges[metric.strip()] = pair
    return ranges


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(
            f"{path} is not JSON: {exc}", param_hint="--config-schema"
        ) from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{path} holds no JSON object", param_hint="--config-schema")
    return value


def render(model: dict[str, Any]) -> RenderableType:
    return output.record(model, f"Model {model.get('name', '')}")


@app.command("list")
@remote
def list_models(api: ApiClient, as_json: Json = False) -> None:
    """List device models."""
    output.listing(api.get(PATH), as_json, COLUMNS, noun="models")


@app.command("show")
@remote
def show(api: ApiClient, name: ModelName, as_json: Json = False) -> None:
    """Show a device model."""
    output.emit(api.get(join(PATH, name)), as_json, render)


@app.command("create")
@remote
def create(
    api: ApiClient, name: ModelName, fields: ModelFields = ModelFields(), as_json: Json = False
) -> None:
    """Create a device model."""
    output.emit(api.post(PATH, {"name": name, **fields.body()}), as_json, render)


@app.command("update")
@remote
def update(
    api: ApiClient, name: ModelName, fields: ModelFields = ModelFields(), as_json: Json = False
) -> None:
    """Change a device model: only the options given change."""
    output.emit(api.patch(join(PATH, name), require_change(fields.body())), as_json, render)


@app.command("delete")
@remote
def delete(api: ApiClient, name: ModelName, reason: Reason = None) -> None:
    """Delete a device model that no device uses."""
    api.delete(join(PATH, name), {"reason": reason})
    output.note(f"Deleted model {name}.")
