"""Who the simulated devices are and which faults hit them: all from the seed."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from fleetkeeper.protocol.keys import public_key_b64
from fleetkeeper.sim import MODELS, build, parse, plan_faults
from fleetkeeper.sim.device import SimDevice
from fleetkeeper.sim.fleet import FaultPlan


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def fleet_of(http: httpx.AsyncClient, **scenario: object) -> tuple[list[SimDevice], FaultPlan]:
    return build(parse(scenario), "http://fleet.test", http)


def fingerprint(devices: list[SimDevice]) -> list[tuple[str, ...]]:
    return [
        (
            d.serial,
            d.model.name,
            d.site.name,
            d.hardware_revision,
            d.firmware.version,
            public_key_b64(d.client.key),
        )
        for d in devices
    ]


def test_the_same_seed_gives_the_same_fleet(http: httpx.AsyncClient) -> None:
    first, plan_a = fleet_of(http, devices=50, seed=9, faults={"flaky": 0.2, "flood": 0.1})
    second, plan_b = fleet_of(http, devices=50, seed=9, faults={"flaky": 0.2, "flood": 0.1})
    assert fingerprint(first) == fingerprint(second)
    assert plan_a == plan_b


def test_another_seed_gives_another_fleet(http: httpx.AsyncClient) -> None:
    first, plan_a = fleet_of(http, devices=50, seed=1, faults={"flaky": 0.2})
    second, plan_b = fleet_of(http, devices=50, seed=2, faults={"flaky": 0.2})
    assert [d.serial for d in first] != [d.serial for d in second]
    assert fingerprint(first) != fingerprint(second)
    assert plan_a.windows != plan_b.windows


def test_a_device_stays_itself_when_the_fleet_grows(http: httpx.AsyncClient) -> None:
    small, _ = fleet_of(http, devices=10, seed=3)
    large, _ = fleet_of(http, devices=30, seed=3)
    assert fingerprint(small) == fingerprint(large)[:10]


def test_serials_carry_the_prefix_and_are_unique(http: httpx.AsyncClient) -> None:
    devices, _ = fleet_of(http, devices=20, seed=5)
    serials = [d.serial for d in devices]
    assert serials[0] == "sim5-00000"
    assert len(set(serials)) == 20


def test_the_fleet_is_heterogeneous(http: httpx.AsyncClient) -> None:
    devices, _ = fleet_of(http, devices=400, seed=1)
    assert set(Counter(d.model.name for d in devices)) == {m.name for m in MODELS}
    assert len({d.site.name for d in devices}) == 8
    assert len({d.hardware_revision for d in devices}) >= 6
    thermo = {d.firmware.version for d in devices if d.model.name == "thermo-v2"}
    assert thermo == {"2.1.0", "2.2.1", "2.3.0"}


def test_the_mix_decides_the_models(http: httpx.AsyncClient) -> None:
    devices, _ = fleet_of(http, devices=30, mix={"gateway-x1": 1})
    assert {d.model.name for d in devices} == {"gateway-x1"}


def test_a_rate_of_one_hits_every_device() -> None:
    scenario = parse({"devices": 25, "faults": {"sensor_stuck": 1.0, "compromised": 1}})
    plan = plan_faults(scenario, ["berlin-1"] * 25)
    assert sorted(plan.windows["sensor_stuck"]) == list(range(25))
    assert sorted(plan.windows["compromised"]) == list(range(25))


def test_a_rate_hits_that_share_of_the_fleet() -> None:
    scenario = parse({"devices": 200, "faults": {"flaky": 0.05}})
    plan = plan_faults(scenario, ["berlin-1"] * 200)
    assert len(plan.windows["flaky"]) == 10


def test_a_site_outage_takes_every_device_of_one_site() -> None:
    sites = ["a", "b", "a", "c", "a", "b"]
    scenario = parse(
        {
            "devices": 6,
            "sites": [{"name": n, "lat": 0, "lon": 0} for n in "abc"],
            "faults": {"site_outage": {"rate": 1.0, "site": "a", "at": 10, "duration": 5}},
        }
    )
    plan = plan_faults(scenario, sites)
    assert plan.outage_site == "a"
    assert plan.windows["site_outage"] == {0: (10, 15), 2: (10, 15), 4: (10, 15)}


def test_a_site_outage_without_a_site_picks_one_by_seed() -> None:
    sites = ["a", "b", "c"] * 10
    scenario = parse(
        {
            "devices": 30,
            "sites": [{"name": n, "lat": 0, "lon": 0} for n in "abc"],
            "faults": {"site_outage": 1.0},
        }
    )
    plan = plan_faults(scenario, sites)
    assert plan.outage_site in {"a", "b", "c"}
    assert {sites[i] for i in plan.windows["site_outage"]} == {plan.outage_site}
    assert len(plan.windows["site_outage"]) == 10
    assert plan_faults(scenario, sites) == plan


def test_changing_one_fault_rate_leaves_the_others_alone() -> None:
    sites = ["berlin-1"] * 100
    one = plan_faults(parse({"devices": 100, "faults": {"flaky": 0.1, "flood": 0.1}}), sites)
    two = plan_faults(parse({"devices": 100, "faults": {"flaky": 0.1, "flood": 0.3}}), sites)
    assert one.windows["flaky"] == two.windows["flaky"]


def test_onsets_spread_over_the_window_and_last_their_duration() -> None:
    scenario = parse({"devices": 40, "faults": {"disappear": {"rate": 1, "at": 10, "spread": 20}}})
    windows = plan_faults(scenario, ["x"] * 40).windows["disappear"]
    onsets = [onset for onset, _ in windows.values()]
    assert all(10 <= t <= 30 for t in onsets)
    assert len(set(onsets)) == 40
    assert all(end == float("inf") for _, end in windows.values())


def test_each_device_gets_its_own_faults(http: httpx.AsyncClient) -> None:
    devices, plan = fleet_of(http, devices=10, faults={"flood": 0.2})
    flooding = sorted(plan.windows["flood"])
    assert [d.index for d in devices if d.has("flood")] == flooding
    assert all(d.faults is None for d in devices if d.index not in flooding)
