"""`fleetkeeper health` against the real app, in-process, with flags the watch raised."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI

from conftest import ADMIN_TOKEN
from fleetkeeper.cli import client
from fleetkeeper.cli.health import render_maintenance, summary
from fleetkeeper.clock import FakeClock
from fleetkeeper.settings import Settings
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import DeviceHealth
from test_cli import PortalTransport, ok, run
from test_health_watch import HOUR, fleet_of, report, stuck_from, watch_of

T = TypeVar("T")
SERVER = "http://fleetkeeper.test"


@dataclass
class Served:
    app: FastAPI
    portal: anyio.from_thread.BlockingPortal

    def run(self, work: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """`work` on the app's own loop, with an admin client of the app."""

        async def call() -> T:
            transport = httpx.ASGITransport(app=self.app)
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(
                transport=transport, base_url=SERVER, headers=headers
            ) as admin:
                return await work(admin)

        return self.portal.call(call)


@pytest.fixture
def served(
    settings: Settings, clock: FakeClock, db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    from fleetkeeper.api.app import create_app

    application = create_app(settings, clock=clock)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(application.router.lifespan_context(application)),
    ):
        monkeypatch.setattr(
            client,
            "open_http",
            lambda server: httpx.Client(
                transport=PortalTransport(application, portal), base_url=SERVER
            ),
        )
        yield Served(application, portal)


@pytest.fixture
def stuck(served: Served, clock: FakeClock) -> dict[str, str]:
    """Eight devices at berlin-1 with an hour of readings, SN-003's temperature stuck for the
    last 20 minutes, and the watch run once: serial -> id."""
    now = clock.now().timestamp()

    async def work(admin: httpx.AsyncClient) -> dict[str, str]:
        units = await fleet_of(admin, 8)
        await report(units, now - HOUR, now, faults={"SN-003": stuck_from(now - 1200)})
        await watch_of(served.app).tick(force=True)
        return {u.serial: u.id for u in units}

    return served.run(work)


def test_the_flagged_devices_show_with_their_evidence_and_a_sparkline(
    stuck: dict[str, str],
) -> None:
    page = ok("health")
    assert [d["serial"] for d in page["items"]] == ["SN-003"]
    (flag,) = page["items"][0]["flags"]
    assert (flag["flag"], flag["metric"], flag["detector"]) == (
        "faulty_sensor",
        "temperature",
        "stuck_sensor",
    )
    shown = run("health")
    assert shown.exit_code == 0, shown.output
    assert "SN-003" in shown.stdout and "faulty_sensor" in shown.stdout
    assert "stuck at" in shown.stdout and "for 19 min (120 readings" in shown.stdout
    assert any(bar in shown.stdout for bar in "▁▂▃▄▅▆▇█")
    assert "1 device, 1 flag" in shown.stdout


def test_one_devices_flags(stuck: dict[str, str]) -> None:
    device = stuck["SN-003"]
    data = ok("health", "--device", device)
    assert data["device_id"] == device and data["flags"][0]["detector"] == "stuck_sensor"
    shown = run("health", "--device", device)
    assert shown.exit_code == 0 and "stuck_sensor" in shown.stdout
    healthy = run("health", "--device", stuck["SN-001"])
    assert "carries no health flag" in healthy.stdout
    assert run("health", "--device", "nope").exit_code == 1


def test_a_query_or_a_flag_narrows_the_list(stuck: dict[str, str]) -> None:
    assert ok("health", "--query", "attributes.site = lyon-2")["items"] == []
    shown = run("health", "--query", "attributes.site = lyon-2")
    assert "No device carries a health flag." in shown.stdout
    assert ok("health", "--flag", "outage")["items"] == []
    refused = run("health", "--flag", "haunted")
    assert refused.exit_code == 1 and "faulty_sensor" in refused.output
    assert run("health", "--limit", "0").exit_code == 2


def test_the_maintenance_list_shows_the_visits_due(
    served: Served, stuck: dict[str, str], clock: FakeClock
) -> None:
    now = clock.now()
    at = now + timedelta(days=12)

    async def due(admin: httpx.AsyncClient) -> None:
        async with served.app.state.fleetkeeper.db.write() as session:
            session.add(
                DeviceHealth(
                    device_id=stuck["SN-005"],
                    flag="battery_degraded",
                    metric="battery",
                    detector="battery_forecast",
                    severity="warning",
                    evidence={
                        "maintenance": "replace_battery",
                        "status": "ok",
                        "reason": "battery health 68 % fading 0.9 points/day",
                        "due_at": (at - timedelta(days=4)).timestamp(),
                        "expected_at": at.timestamp(),
                        "latest_at": (at + timedelta(days=6)).timestamp(),
                    },
                    since=now,
                    checked_at=now,
                )
            )

    served.run(due)
    page = ok("health", "maintenance", "--within", "30d")
    (visit,) = page["items"]
    assert visit["serial"] == "SN-005" and visit["maintenance"] == "replace_battery"
    shown = run("health", "maintenance", "--within", "30d")
    assert shown.exit_code == 0, shown.output
    assert "2026-01-09" in shown.stdout and "2026-01-13" in shown.stdout  # due by, expected
    assert "replace battery" in shown.stdout and "battery health 68 %" in shown.stdout
    assert ok("health", "maintenance", "--within", "5d")["items"] == []
    assert "No unit is due within 5d." in run("health", "maintenance", "--within", "5d").stdout
    refused = run("health", "maintenance", "--within", "1y")
    assert refused.exit_code == 1 and "within" in refused.output


@pytest.mark.parametrize(
    ("detector", "evidence", "expected"),
    [
        (
            "out_of_range",
            {"points": 3, "of": 90, "range": [-40, 85], "lowest": -127.0, "highest": 6553.5},
            "3 of 90 readings outside -40..85 (-127 to 6553.5)",
        ),
        (
            "noisy",
            {"noise": 8.1, "peer_noise": 0.3, "ratio": 27.0, "points": 90, "peers": 9},
            "noise 8.1, 27x the peers' 0.3 (9 peers)",
        ),
        (
            "flood",
            {
                "points": 660,
                "seconds": 600.0,
                "expected_points": 60.0,
                "factor": 11.0,
                "reference": "expected interval",
            },
            "660 reports in 10 min, 11x the 60 expected (expected interval)",
        ),
        (
            "silent",
            {"last_point": 1.0, "silent_seconds": 1500.0, "peers_reporting": 7, "peers": 7},
            "nothing for 25 min (7 of 7 peers report)",
        ),
        (
            "outage",
            {
                "scope": "site",
                "site": "oslo-3",
                "quiet": 15,
                "reporting": 19,
                "silent_seconds": 4000.0,
            },
            "15 of 19 devices at oslo-3 quiet; 1 h 6 min",
        ),
        ("battery_forecast", {"reason": "battery health 68 %"}, "battery health 68 %"),
        ("mystery", {"a": 1}, '{"a": 1}'),
    ],
)
def test_evidence_reads_as_a_line(detector: str, evidence: dict[str, Any], expected: str) -> None:
    assert summary(detector, evidence) == expected


def test_no_visits_due_says_so() -> None:
    assert render_maintenance([], "7d") == "No unit is due within 7d."
