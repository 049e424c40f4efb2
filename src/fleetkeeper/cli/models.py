"""`fleetkeeper models ...`: device models (hardware types)."""

from __future__ import annotations

import json
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
    output.Column("Description", "description"),
)

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
        return compact(body)


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
