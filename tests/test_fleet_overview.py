"""GET /api/v1/fleet/overview and `fleetkeeper fleet overview`: the fleet at a glance.

The fleet (`monitored` fixture; times relative to the FakeClock's now, online window 5 min):

    serial tenant  model           state       firmware seen  battery rssi storage health
    S1     default thermo-v2       active      1.0.0    now   5       -115 10      out_of_range
    S2     default thermo-v2       active      1.0.0    1 h   55      -72  95      -
    S3     default thermo-v2       registered  2.0.0    never 100     -50  -       flood,
                                                                                   out_of_range
    S4     default meter-e5 (6 h)  active      1.0.0    1 h   95      -    50      -
    S5     default meter-e5 (6 h)  active      -        1 h   -       -    -       -
    X1     acme    thermo-v2       active      9.9.9    now   1       -    -       flood
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, update

import test_cli
from fleet import as_token_client, device, model, user_token
from fleetkeeper.clock import FakeClock
from fleetkeeper.store.models import Device, DeviceHealth, TelemetryLatest

URL = "/api/v1/fleet/overview"
DEFAULT = {"q": "tenant = default"}

# serial: (tenant, model, state, firmware, seen ago, {metric: value}, flags)
SPECS: dict[
    str, tuple[str, str, str, str | None, timedelta | None, dict[str, float], list[str]]
] = {
    "S1": (
        "default",
        "thermo-v2",
        "active",
        "1.0.0",
        timedelta(0),
        {"battery": 5, "rssi": -115, "storage_used": 10},
        ["out_of_range"],
    ),
    "S2": (
        "default",
        "thermo-v2",
        "active",
        "1.0.0",
        timedelta(hours=1),
        {"battery": 55, "rssi": -72, "storage_used": 95},
        [],
    ),
    "S3": (
        "default",
        "thermo-v2",
        "registered",
        "2.0.0",
        None,
        {"battery": 100, "rssi": -50},
        ["flood", "out_of_range"],
    ),
    "S4": (
        "default",
        "meter-e5",
        "active",
        "1.0.0",
        timedelta(hours=1),
        {"battery": 95, "storage_used": 50},
        [],
    ),
    "S5": ("default", "meter-e5", "active", None, timedelta(hours=1), {}, []),
    "X1": ("acme", "thermo-v2", "active", "9.9.9", timedelta(0), {"battery": 1}, ["flood"]),
}


async def seed(app: FastAPI, clock: FakeClock, devices: dict[str, str]) -> None:
    """Last-seen times, latest readings and health flags, written as monitoring writes them."""
    now = clock.now()
    async with app.state.fleetkeeper.db.write() as session:
        for serial, (_, _, _, _, seen, readings, flags) in SPECS.items():
            device_id = devices[serial]
            if seen is not None:
                await session.execute(
                    update(Device).where(Device.id == device_id).values(last_seen=now - seen)
                )
            session.add_all(
                TelemetryLatest(device_id=device_id, metric=m, ts=now, value=v)
                for m, v in readings.items()
            )
            session.add_all(
                DeviceHealth(
                    device_id=device_id,
                    flag=flag,
                    metric="battery",
                    detector="test",
                    severity="warning",
                    evidence={},
                    since=now,
                    checked_at=now,
                )
                for flag in flags
            )


@pytest.fixture
async def monitored(client: httpx.AsyncClient, app: FastAPI, clock: FakeClock) -> dict[str, str]:
    """The fleet above; the serials' device ids."""
    assert (await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})).is_success
    await model(client, "thermo-v2")
    await model(client, "meter-e5", offline_after_seconds=6 * 3600)
    ids: dict[str, str] = {}
    for serial, (tenant, model_name, state, firmware, *_) in SPECS.items():
        fields: dict[str, Any] = {"tenant": tenant, "model": model_name, "state": state}
        if firmware:
            fields["firmware_version"] = firmware
        ids[serial] = (await device(client, serial, **fields))["id"]
    await seed(app, clock, ids)
    return ids


def counts(rows: list[dict[str, Any]]) -> dict[Any, int]:
    return {row["value"]: row["count"] for row in rows}


def bins(spread: dict[str, Any]) -> dict[Any, int]:
    """The non-empty bins by their lower end."""
    return {b["low"]: b["count"] for b in spread["bins"] if b["count"]}


# -- Counts -----------------------------------------------------------------------------------


async def test_overview_counts_devices_online_and_offline(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    body = (await client.get(URL, params=DEFAULT)).json()
    # S4 and S5 were seen an hour ago: offline by the server's window, online by meter-e5's.
    assert (body["total"], body["online"], body["offline"]) == (5, 3, 2)


async def test_overview_counts_by_state_model_and_health(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    body = (await client.get(URL, params=DEFAULT)).json()
    assert body["by_state"] == [
        {"value": "active", "count": 4},
        {"value": "registered", "count": 1},
    ]
    assert counts(body["by_model"]) == {"thermo-v2": 3, "meter-e5": 2}
    assert body["by_health"] == [
        {"value": "out_of_range", "count": 2},
        {"value": "flood", "count": 1},
    ]
    assert body["flagged"] == 2


async def test_overview_lists_the_top_firmware_and_sums_the_rest(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    body = (await client.get(URL, params={**DEFAULT, "top": 1})).json()
    assert body["by_firmware"] == {
        "top": [{"value": "1.0.0", "count": 3}],
        "other": 2,
        "versions": 3,
    }
    everything = (await client.get(URL, params=DEFAULT)).json()["by_firmware"]
    assert counts(everything["top"]) == {"1.0.0": 3, "2.0.0": 1, None: 1}
    assert everything["other"] == 0


# -- Distributions ----------------------------------------------------------------------------


async def test_battery_distribution_has_ten_percent_bins_and_a_median(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    battery = (await client.get(URL, params=DEFAULT)).json()["metrics"]["battery"]
    assert [(b["low"], b["high"]) for b in battery["bins"]] == [
        (float(low), float(low + 10)) for low in range(0, 100, 10)
    ]
    assert bins(battery) == {0: 1, 50: 1, 90: 2}  # 100 counts in the last bin
    assert (battery["devices"], battery["min"], battery["median"], battery["max"]) == (
        4,
        5,
        75,  # between 55 and 95
        100,
    )
    assert battery["unit"] == "%"


async def test_rssi_distribution_has_open_ends(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    rssi = (await client.get(URL, params=DEFAULT)).json()["metrics"]["rssi"]
    assert (rssi["bins"][0]["low"], rssi["bins"][-1]["high"]) == (None, None)
    assert {(b["low"], b["high"]): b["count"] for b in rssi["bins"] if b["count"]} == {
        (None, -110): 1,
        (-80, -70): 1,
        (-50, None): 1,
    }
    assert (rssi["min"], rssi["median"], rssi["max"]) == (-115, -72, -50)


async def test_storage_distribution_and_odd_median(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    storage = (await client.get(URL, params=DEFAULT)).json()["metrics"]["storage_used"]
    assert bins(storage) == {10: 1, 50: 1, 90: 1}
    assert (storage["devices"], storage["median"]) == (3, 50)


async def test_empty_selection_gives_zeros(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    body = (await client.get(URL, params={"q": "serial = nobody"})).json()
    assert (body["total"], body["online"], body["offline"], body["flagged"]) == (0, 0, 0, 0)
    assert body["by_state"] == body["by_model"] == body["by_health"] == []
    assert body["by_firmware"] == {"top": [], "other": 0, "versions": 0}
    battery = body["metrics"]["battery"]
    assert (battery["devices"], battery["min"], battery["median"], battery["max"]) == (
        0,
        None,
        None,
        None,
    )
    assert len(battery["bins"]) == 10 and not bins(battery)


@pytest.mark.parametrize(
    "values",
    [
        [5.0, 15.0],  # the middle pair straddles a bin edge
        [9.5, 10.0, 10.0, 30.0],
        [100.0] * 3,
        [-5.0, 250.0],  # outside 0-100: counted in the end bins
        [float(v) for v in random.Random(7).choices(range(0, 101), k=37)],
        [round(random.Random(8).uniform(0, 100), 2) for _ in range(40)],
    ],
)
async def test_median_is_exact(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock, values: list[float]
) -> None:
    await model(client)
    ids = [(await device(client, f"M-{i}"))["id"] for i in range(len(values))]
    async with app.state.fleetkeeper.db.write() as session:
        session.add_all(
            TelemetryLatest(device_id=device_id, metric="battery", ts=clock.now(), value=value)
            for device_id, value in zip(ids, values, strict=True)
        )
    for params in ({}, {"q": "serial = M-*"}):  # without and with a join to the devices
        battery = (await client.get(URL, params=params)).json()["metrics"]["battery"]
        assert battery["median"] == pytest.approx(statistics.median(values))
        assert (battery["min"], battery["max"]) == (min(values), max(values))
        assert sum(b["count"] for b in battery["bins"]) == len(values)


# -- Selecting ----------------------------------------------------------------------------------


async def test_query_selects_what_is_counted(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    body = (await client.get(URL, params={"q": "battery < 20 AND health = *"})).json()
    assert (body["total"], counts(body["by_firmware"]["top"])) == (2, {"1.0.0": 1, "9.9.9": 1})
    assert body["metrics"]["battery"]["max"] == 5


async def test_tenant_user_sees_only_its_tenant(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    token = await user_token(client, "ann", "viewer", "acme")
    async with as_token_client(client, token) as ann:
        body = (await ann.get(URL)).json()
        assert (body["total"], body["online"], counts(body["by_health"])) == (1, 1, {"flood": 1})
        assert body["metrics"]["battery"]["min"] == body["metrics"]["battery"]["max"] == 1
        assert body["metrics"]["rssi"]["devices"] == 0
        # The monitoring fields cannot reach past the tenant either.
        assert (await ann.get(URL, params={"q": "battery >= 0"})).json()["total"] == 1
        assert (await ann.get(URL, params={"q": "serial = S1"})).json()["total"] == 0


async def test_platform_admin_sees_every_tenant(
    client: httpx.AsyncClient, monitored: dict[str, str]
) -> None:
    body = (await client.get(URL)).json()
    assert (body["total"], body["online"]) == (6, 4)


async def test_overview_needs_a_token(client: httpx.AsyncClient) -> None:
    r = await client.get(URL, headers={"Authorization": ""})
    assert r.status_code == 401


async def test_bad_query_and_top_are_refused(client: httpx.AsyncClient) -> None:
    r = await client.get(URL, params={"q": "battery < low"})
    assert r.status_code == 400 and "not a number" in r.json()["detail"]
    r = await client.get(URL, params={"top": 0})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "top"


@pytest.fixture
def statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements the app runs while the test does."""
    ran: list[str] = []
    engine = app.state.fleetkeeper.db.engine.sync_engine

    def note(*args: Any) -> None:
        ran.append(args[2])

    event.listen(engine, "before_cursor_execute", note)
    yield ran
    event.remove(engine, "before_cursor_execute", note)


async def test_overview_runs_the_same_statements_whatever_the_fleet_size(
    client: httpx.AsyncClient, monitored: dict[str, str], statements: list[str]
) -> None:
    await client.get(URL, params={"q": "serial = S1"})
    few = len(statements)
    statements.clear()
    await client.get(URL)
    assert len(statements) == few


# -- The command line -------------------------------------------------------------------------

servers = test_cli.servers  # the CLI's in-process server fixture
ok, run = test_cli.ok, test_cli.run


@pytest.fixture
def cli_fleet(servers: list[str]) -> None:
    ok("models", "create", "thermo-v2")
    for serial, state in (("C1", "active"), ("C2", "registered")):
        ok("devices", "create", "--serial", serial, "--model", "thermo-v2", "--state", state)


def test_cli_overview_json_is_the_servers(cli_fleet: None) -> None:
    body = ok("fleet", "overview", "--query", "state = active")
    assert body["total"] == 1 and counts(body["by_state"]) == {"active": 1}


def test_cli_overview_shows_tables_and_histograms(cli_fleet: None) -> None:
    result = run("fleet", "overview", "--top", "3")
    assert result.exit_code == 0, result.output
    for text in ("2 devices", "By state", "By firmware", "battery (%)", "rssi (dBm)"):
        assert text in result.stdout


def test_cli_overview_reports_a_bad_query(cli_fleet: None) -> None:
    result = run("fleet", "overview", "-q", "health > x")
    assert result.exit_code == 1
    assert "use = or !=" in result.stderr


def test_cli_bar_scales_to_the_largest() -> None:
    from fleetkeeper.cli.fleet import bar

    assert bar(10, 10, 4) == "████"
    assert bar(1, 16, 4) == "▎"
    assert bar(0, 10, 4) == ""


def test_cli_model_takes_offline_after_and_metric_ranges(servers: list[str]) -> None:
    created = ok(
        "models",
        "create",
        "meter-e5",
        "--offline-after",
        "6h",
        "--metric-range",
        "battery=0:100",
        "--metric-range",
        "rssi=-140:0",
    )
    assert created["offline_after_seconds"] == 21600
    assert created["metric_ranges"] == {"battery": [0, 100], "rssi": [-140, 0]}
    updated = ok(
        "models", "update", "meter-e5", "--offline-after", "none", "--metric-range", "none"
    )
    assert (updated["offline_after_seconds"], updated["metric_ranges"]) == (None, None)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--offline-after", "soon"), ("--offline-after", "0"), ("--metric-range", "battery=0")],
)
def test_cli_model_refuses_bad_monitoring_options(
    servers: list[str], option: str, value: str
) -> None:
    assert run("models", "create", "m", option, value).exit_code == 2


def test_cli_model_shows_the_servers_refusal(servers: list[str]) -> None:
    result = run("models", "create", "m", "--metric-range", "battery=100:0")
    assert result.exit_code == 1
    assert "metric_ranges" in result.stderr
