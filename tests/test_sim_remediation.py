"""Faults a command can heal, on one simulated device without a server.

The device is built as the simulator builds it; commands are run as a check-in would hand
them out, its measurements are read with `behaviour.sample`, its answers from its outbox.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fleetkeeper.clock import FakeClock
from fleetkeeper.protocol.messages import Command, Job
from fleetkeeper.sim import behaviour, build, commands, jobs, parse
from fleetkeeper.sim.device import SimDevice, Status, World
from fleetkeeper.sim.physics import metric_names, readings
from fleetkeeper.sim.scenario import RUNGS, ScenarioError
from fleetkeeper.sim.stats import Stats

SERVER = "http://fleet.test"


@dataclass
class Bench:
    dev: SimDevice
    world: World
    now: float = 0.0

    def at(self, now: float) -> Bench:
        self.now = now
        return self

    def send(self, name: str, **args: Any) -> str:
        """Hand the device a command now; returns its id."""
        cmd_id = f"cmd-{name}-{self.now:g}"
        commands.run(self.dev, self.world, Command(cmd_id, name, args), self.now)
        return cmd_id

    def boot_if_off(self) -> None:
        """A reboot is over: the device comes back up (as `behaviour.tick` would do it)."""
        if self.dev.off:
            self.now = max(self.now, self.dev.down_until)
            self.dev.boot(self.now)
            commands.finish_reboot(self.dev)

    def answer(self, cmd_id: str) -> tuple[str, Any]:
        self.dev.release_answers(self.now)
        found = [(s, r) for i, s, r in self.answers() if i == cmd_id]
        assert found, f"no answer to {cmd_id} yet"
        return found[0]

    def answers(self) -> list[tuple[str, str, Any]]:
        return [a for a in self.dev.outbox or () if isinstance(a, tuple)]

    def sample(self, now: float | None = None) -> dict[str, float]:
        if now is not None:
            self.now = now
        return {p.metric: p.value for p in behaviour.sample(self.dev, self.world, self.now)}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.MockTransport(lambda request: httpx.Response(500))
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


def bench_with(http: httpx.AsyncClient, **faults: Any) -> Bench:
    scenario = parse({"devices": 1, "mix": {"thermo-v2": 1}, "reboot_seconds": 5, "faults": faults})
    (dev,), _ = build(scenario, SERVER, http)
    dev.client.device_id = "dev-1"
    dev.status = Status.ACTIVE
    b = Bench(dev, World(scenario, SERVER, http, FakeClock(), lambda: b.now, Stats(1)))
    return b


def crash_loop(http: httpx.AsyncClient, heals_with: str = "restart_service", **spec: Any) -> Bench:
    return bench_with(http, crash_loop={"rate": 1.0, "heals_with": heals_with, **spec})


# --- the crash loop ------------------------------------------------------------------------------


def test_a_crash_loop_counts_a_restart_every_30_seconds_and_resets_uptime(
    http: httpx.AsyncClient,
) -> None:
    bench = crash_loop(http)
    first = bench.sample(29)
    assert "agent_restarts" not in first  # no crash yet
    assert first["uptime"] == 29
    assert bench.sample(30)["agent_restarts"] == 1
    later = bench.sample(95)  # crashes at 30, 60 and 90
    assert (later["agent_restarts"], later["uptime"]) == (3, 5)


def test_crashes_between_two_samples_all_count(http: httpx.AsyncClient) -> None:
    bench = crash_loop(http)
    assert bench.sample(3600)["agent_restarts"] == 120


def test_a_crash_loop_that_ends_stops_counting(http: httpx.AsyncClient) -> None:
    bench = crash_loop(http, at=100, duration=100, every=20)  # crashes at 120 ... 180
    metrics = bench.sample(1000)
    assert (metrics["agent_restarts"], metrics["uptime"]) == (4, 820)


def test_a_device_without_the_fault_reports_no_restarts(http: httpx.AsyncClient) -> None:
    bench = bench_with(http)
    assert "agent_restarts" not in bench.sample(1000)


def test_the_crashes_take_nothing_from_the_devices_randomness(http: httpx.AsyncClient) -> None:
    looping, healthy = crash_loop(http), bench_with(http)
    for now in (10.0, 40.0, 70.0, 400.0):
        a, b = looping.sample(now), healthy.sample(now)
        assert {k: v for k, v in a.items() if k not in {"uptime", "agent_restarts"}} == {
            k: v for k, v in b.items() if k != "uptime"
        }


def test_restart_service_answers_after_a_second_and_cures_the_loop(
    http: httpx.AsyncClient,
) -> None:
    bench = crash_loop(http)
    dev = bench.dev
    dev.next_checkin = dev.next_telemetry = dev.next_inventory = 10_000.0
    cmd = bench.at(100).send("restart_service", service="agent")
    assert bench.answers() == []
    assert bench.dev.next_due(bench.now) == 101  # it wakes up to answer
    assert bench.at(101).answer(cmd) == ("succeeded", {"restarted": True})
    metrics = bench.sample(1000)  # crashes at 30, 60, 90, then none
    assert (metrics["agent_restarts"], metrics["uptime"]) == (3, 910)
    assert bench.world.stats.healed["crash_loop"] == {bench.dev.serial}


@pytest.mark.parametrize("heals_with", RUNGS)
@pytest.mark.parametrize("rung", RUNGS)
def test_a_crash_loop_is_cured_by_its_rung_or_a_higher_one(
    http: httpx.AsyncClient, heals_with: str, rung: str
) -> None:
    bench = crash_loop(http, heals_with=heals_with)
    cmd = bench.at(100).send(rung)
    bench.at(102).boot_if_off()
    state, _ = bench.answer(cmd)
    assert state == "succeeded"  # a lower rung too: it did what it was asked
    cured = RUNGS.index(rung) >= RUNGS.index(heals_with)
    restarts = bench.sample(1000)["agent_restarts"]
    assert (restarts == 3) is cured
    assert (restarts == 33) is not cured
    assert (bench.dev.serial in bench.world.stats.healed["crash_loop"]) is cured


def test_a_lower_rung_leaves_the_crashes_going_and_the_ladder_climbs(
    http: httpx.AsyncClient,
) -> None:
    bench = crash_loop(http, heals_with="safe_mode")
    bench.at(100).send("restart_service")
    bench.at(400).send("reboot")
    bench.at(410).boot_if_off()
    assert bench.sample(700)["agent_restarts"] == 23
    cmd = bench.at(700).send("safe_mode")
    assert bench.dev.off  # it reboots into safe mode
    bench.at(710).boot_if_off()
    assert bench.answer(cmd) == (
        "succeeded",
        {"rebooted": True, "boot_count": bench.dev.boot_count, "safe_mode": True},
    )
    metrics = bench.sample(2000)
    assert (metrics["agent_restarts"], metrics["safe_mode"]) == (23, 1)
    assert metrics["uptime"] == 2000 - 710
    assert behaviour.inventory(bench.dev, bench.now)["attributes"]["safe_mode"] is True


def test_a_reboot_job_is_the_reboot_rung_too(http: httpx.AsyncClient) -> None:
    bench = crash_loop(http, heals_with="reboot")
    job = Job("job-1", "dep-1", "command", "notified", command=Command("job-1", "reboot"))
    jobs.receive(bench.dev, bench.world, job, 100)
    assert bench.sample(1000)["agent_restarts"] == 3


def test_a_busy_device_refuses_to_restart(http: httpx.AsyncClient) -> None:
    bench = crash_loop(http)
    bench.send("reboot")
    cmd = bench.send("restart_service")
    assert bench.answer(cmd) == ("failed", {"error": "busy"})


def test_diagnostics_and_the_health_check_tell_of_the_crashes(http: httpx.AsyncClient) -> None:
    bench = crash_loop(http)
    diagnostics = commands.diagnostics(bench.dev, bench.world, 95)
    assert (diagnostics["agent_restarts"], diagnostics["uptime"]) == (3, 5)
    state, report = bench.answer(bench.at(95).send("health_check"))
    assert state == "succeeded"
    assert report["healthy"] is False
    assert (report["crashing"], report["agent_restarts"], report["uptime"]) == (True, 3, 5)
    assert set(report) >= {"battery", "storage_used", "safe_mode", "disabled_sensors"}


def test_a_healthy_device_answers_its_health_check_at_once(http: httpx.AsyncClient) -> None:
    bench = bench_with(http)
    state, report = bench.answer(bench.at(50).send("health_check"))
    assert state == "succeeded"
    assert report == {
        "healthy": True,
        "uptime": 50.0,
        "boot_count": 1,
        "battery": report["battery"],
        "storage_used": report["storage_used"],
        "agent_restarts": 0,
        "crashing": False,
        "safe_mode": False,
        "disabled_sensors": [],
    }
    assert 0 <= report["battery"] <= 100


# --- sensors -------------------------------------------------------------------------------------


def test_recalibrate_cures_a_stuck_sensor(http: httpx.AsyncClient) -> None:
    bench = bench_with(http, sensor_stuck=1.0)
    stuck = {bench.sample(t)["temperature"] for t in (10, 20, 30, 40)}
    assert len(stuck) == 1
    assert bench.answer(bench.at(50).send("recalibrate")) == (
        "succeeded",
        {"recalibrated": "temperature"},
    )
    assert len({bench.sample(t)["temperature"] for t in (60, 70, 80, 90)}) > 1
    assert bench.world.stats.healed["sensor_stuck"] == {bench.dev.serial}


def test_recalibrate_cures_a_noisy_sensor(http: httpx.AsyncClient) -> None:
    bench = bench_with(http, sensor_noisy=1.0)
    bench.at(50).send("recalibrate", metric="temperature")
    assert bench.world.stats.healed["sensor_noisy"] == {bench.dev.serial}
    assert not bench.dev.active("sensor_noisy", 60)


def test_a_broken_sensor_cannot_be_recalibrated_but_can_be_disabled(
    http: httpx.AsyncClient,
) -> None:
    bench = bench_with(http, sensor_out_of_range=1.0)
    state, result = bench.answer(bench.at(50).send("recalibrate"))
    assert (state, result["error"]) == ("failed", "sensor_fault")
    assert "sensor_out_of_range" not in bench.world.stats.healed  # broken, not healable
    cmd = bench.send("disable_sensor", metric="temperature")
    assert bench.answer(cmd) == ("succeeded", {"disabled": ["temperature"]})
    metrics = bench.sample(60)
    assert "temperature" not in metrics
    assert {"battery", "rssi", "uptime"} <= set(metrics)


@pytest.mark.parametrize("args", [{}, {"metric": "humidity"}, {"metric": 3}])
def test_disable_sensor_needs_a_metric_the_device_reports(
    http: httpx.AsyncClient, args: dict[str, Any]
) -> None:
    bench = bench_with(http)
    state, result = bench.answer(bench.send("disable_sensor", **args))
    assert (state, result) == ("failed", {"error": "invalid_argument", "argument": "metric"})


def test_recalibrating_a_healthy_sensor_changes_nothing(http: httpx.AsyncClient) -> None:
    bench = bench_with(http)
    assert bench.answer(bench.send("recalibrate", metric="battery"))[0] == "succeeded"
    assert bench.world.stats.healed == {
        "crash_loop": set(),
        "sensor_noisy": set(),
        "sensor_stuck": set(),
    }


def test_metric_names_are_what_the_readings_hold(http: httpx.AsyncClient) -> None:
    bench = bench_with(http)
    dev = bench.dev
    values = readings(dev.physics, dev.rng, dev.model, dev.site, 0.0)
    assert set(values) == set(metric_names(dev.model))


# --- the scenario --------------------------------------------------------------------------------


def test_heals_with_is_one_of_the_rungs() -> None:
    scenario = parse({"faults": {"crash_loop": {"rate": 0.1, "heals_with": "reboot"}}})
    assert scenario.faults["crash_loop"].heals_with == "reboot"
    assert parse({"faults": {"crash_loop": 0.1}}).faults["crash_loop"].heals_with == (
        "restart_service"
    )
    with pytest.raises(ScenarioError, match="heals_with"):
        parse({"faults": {"crash_loop": {"rate": 0.1, "heals_with": "prayer"}}})


def test_the_summary_lists_the_devices_healed(http: httpx.AsyncClient) -> None:
    bench = crash_loop(http)
    bench.at(100).send("restart_service")
    summary = bench.world.stats.summary()
    assert summary["healed"] == {
        "crash_loop": [bench.dev.serial],
        "sensor_noisy": [],
        "sensor_stuck": [],
    }
