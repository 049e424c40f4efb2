"""`fleetkeeper map`, `positions` and `geofences` against the real app, in-process.

Like test_cli.py's `servers`, but the app stays reachable, so positions can be recorded on its
own loop (through the blocking portal) as the inventory route records them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI

from fleetkeeper.cli import client
from fleetkeeper.clock import FakeClock
from fleetkeeper.services import geo
from fleetkeeper.settings import Settings
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Device
from test_cli import PortalTransport, new_device, ok, run

CIRCLE = "13.405,52.52,100"


@dataclass
class Server:
    app: FastAPI
    portal: anyio.from_thread.BlockingPortal
    clock: FakeClock

    def report(self, device_id: str, lat: float, lon: float, **extra: float) -> None:
        """What the inventory route does with a reported location."""
        self.portal.call(self._report, device_id, {"lat": lat, "lon": lon, **extra})

    async def _report(self, device_id: str, location: dict[str, Any]) -> None:
        async with self.app.state.fleetkeeper.db.write() as session:
            row = await session.get_one(Device, device_id)
            row.location = location
            await geo.record_position(session, row, location, self.clock.now())


@pytest.fixture
def server(
    settings: Settings, clock: FakeClock, db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    from fleetkeeper.api.app import create_app

    application: FastAPI = create_app(settings, clock=clock)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(application.router.lifespan_context(application)),
    ):

        def open_http(_: str) -> httpx.Client:
            return httpx.Client(
                transport=PortalTransport(application, portal), base_url="http://fleetkeeper.test"
            )

        monkeypatch.setattr(client, "open_http", open_http)
        ok("models", "create", "thermo-v2")
        yield Server(application, portal, clock)


def test_the_map_lists_positions_and_prints_geojson_with_json(server: Server) -> None:
    hall = new_device("SN-1", "--attr", "site=hall-1")
    new_device("SN-2")  # no position: not on the map
    server.report(hall["id"], 52.52, 13.405, accuracy=7.5)
    geojson = ok("map")
    assert geojson["type"] == "FeatureCollection"
    (feature,) = geojson["features"]
    assert feature["geometry"]["coordinates"] == [13.405, 52.52]
    shown = run("map", "--query", "attributes.site = hall-1")
    assert shown.exit_code == 0, shown.output
    assert "SN-1" in shown.stdout and "52.52" in shown.stdout and "7.5" in shown.stdout
    assert "hall-1" in shown.stdout and "1 devices" in shown.stdout
    assert "No device" in run("map", "--bbox", "0,0,1,1").stdout
    assert run("map", "--bbox", "nonsense").exit_code == 1


def test_positions_show_where_a_device_has_been(server: Server) -> None:
    device = new_device("SN-1")
    server.report(device["id"], 52.52, 13.405)
    server.clock.advance(minutes=5)
    server.report(device["id"], 52.53, 13.405)
    track = ok("positions", device["id"])
    assert [f["geometry"]["coordinates"] for f in track["features"]] == [
        [13.405, 52.52],
        [13.405, 52.53],
    ]
    shown = run("positions", device["id"], "--limit", "1")
    assert shown.exit_code == 0, shown.output
    assert "52.53" in shown.stdout and "52.52" not in shown.stdout
    assert "Older positions left out" in shown.stdout
    assert run("positions", "no-such-device").exit_code == 1


def test_geofences_are_created_listed_shown_and_deleted(server: Server, tmp_path: Path) -> None:
    yard = ok("geofences", "create", "yard", "--circle", CIRCLE, "--site", "hall-1")
    assert yard["shape"] == {"type": "circle", "center": [13.405, 52.52], "radius_m": 100.0}
    gate = ok("geofences", "create", "gate", "--polygon", "13.40,52.52 13.41,52.52 13.41,52.53")
    assert len(gate["shape"]["coordinates"]) == 3
    shape_file = tmp_path / "bay.json"
    shape_file.write_text(json.dumps({"type": "circle", "center": [-122.4, 37.7], "radius_m": 50}))
    bay = ok("geofences", "create", "bay", "--shape", f"@{shape_file}")
    assert bay["shape"]["center"] == [-122.4, 37.7]
    west = ok("geofences", "create", "west", "--circle", "-122.4,37.7,50")
    assert west["shape"]["center"] == [-122.4, 37.7]

    listed = run("geofences", "list", "--site", "hall-1")
    assert listed.exit_code == 0, listed.output
    assert "yard" in listed.stdout and "circle 100 m around 52.52, 13.405" in listed.stdout
    assert "gate" not in listed.stdout
    assert len(ok("geofences", "list")["items"]) == 4
    shown = run("geofences", "show", gate["id"])
    assert "polygon of 3 vertices" in shown.stdout

    gone = run("geofences", "delete", yard["id"], "--reason", "redrawn")
    assert gone.exit_code == 0, gone.output
    assert run("geofences", "show", yard["id"]).exit_code == 1
    audit = ok("audit", "list", "--target", f"geofence:{yard['id']}")
    assert [(a["action"], a["reason"]) for a in audit["items"]] == [
        ("geofence.delete", "redrawn"),
        ("geofence.create", None),
    ]


@pytest.mark.usefixtures("server")
@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--circle", CIRCLE, "--polygon", "0,0 1,0 1,1"],
        ["--circle", "13.4,52.5"],
        ["--polygon", "13.4 52.5"],
        ["--shape", "{not json"],
    ],
)
def test_a_shape_given_wrongly_is_a_usage_error(options: list[str]) -> None:
    assert run("geofences", "create", "x", *options).exit_code == 2


def test_a_shape_the_server_refuses_names_the_field(server: Server) -> None:
    refused = run("geofences", "create", "x", "--circle", "13.4,95,10")
    assert refused.exit_code == 1
    assert "shape.center.lat" in refused.stderr or "latitude" in refused.stderr
