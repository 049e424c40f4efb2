"""Scenario files and command-line overrides of the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetkeeper.sim import (
    FAULT_KINDS,
    Scenario,
    ScenarioError,
    load,
    parse,
    parse_fault_option,
    with_overrides,
)

FULL_TOML = """
name = "night shift"
seed = 42
devices = 500
serial_prefix = "lab"
checkin_interval = 15
telemetry_interval = 2.5
inventory_interval = 120
time_scale = 60
update_step = 1.5
reboot_seconds = 3
enroll_rate = 50
concurrency = 16

[mix]
thermo-v2 = 3
gateway-x1 = 1

[[sites]]
name = "berlin-1"
lat = 52.52
lon = 13.405
climate = 10
swing = 7

[[sites]]
name = "cairo-2"
lat = 30.04
lon = 31.24
climate = 24

[faults]
flaky = 0.05
update_health_fail = 0.1

[faults.site_outage]
rate = 1.0
site = "cairo-2"
at = 120
duration = 90

[faults.compromised]
rate = 0.01
at = 30
burst = 8
every = 20

[rollout]
model = "thermo-v2"
version = "2.4.0"
phases = [5, 50]
start = 60
pause = 30
"""


def test_a_toml_scenario_sets_every_knob(tmp_path: Path) -> None:
    path = tmp_path / "night.toml"
    path.write_text(FULL_TOML)
    scenario = load(path)
    assert (scenario.name, scenario.seed, scenario.devices) == ("night shift", 42, 500)
    assert scenario.prefix == "lab"
    assert scenario.telemetry_interval == 2.5
    assert scenario.mix == {"thermo-v2": 3, "gateway-x1": 1}
    assert [s.name for s in scenario.sites] == ["berlin-1", "cairo-2"]
    assert scenario.faults["flaky"].rate == 0.05
    outage = scenario.faults["site_outage"]
    assert (outage.site, outage.at, outage.duration) == ("cairo-2", 120, 90)
    assert scenario.faults["compromised"].burst == 8
    assert scenario.rollout is not None and scenario.rollout.phases == (5, 50)
    assert scenario.rollout.soak == 30  # `pause`, its older name


def test_a_json_scenario_reads_the_same_as_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"devices": 3, "faults": {"flood": {"rate": 1, "at": 5}}}))
    scenario = load(path)
    assert scenario.devices == 3
    assert scenario.faults["flood"].rate == 1.0
    assert scenario.faults["flood"].at == 5


def test_every_key_is_optional() -> None:
    scenario = parse({})
    assert scenario.devices == 100
    assert scenario.prefix == "sim1"
    assert scenario.faults == {}
    assert len(scenario.sites) == 8


def test_an_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(ScenarioError, match="telemetry_intervall: not a scenario setting"):
        parse({"telemetry_intervall": 5})


def test_an_unknown_fault_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match=r"unknown fault kind.*'meteor'.*site_outage"):
        parse({"faults": {"meteor": 0.1}})


def test_a_rate_above_one_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"faults\.flaky\.rate"):
        parse({"faults": {"flaky": 1.5}})


def test_an_unknown_model_in_the_mix_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"unknown model.*toaster"):
        parse({"mix": {"toaster": 1}})


def test_an_outage_of_a_site_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ScenarioError, match="no site 'atlantis'"):
        parse({"faults": {"site_outage": {"rate": 1, "site": "atlantis"}}})


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("devices = = 3")
    with pytest.raises(ScenarioError, match=r"bad\.toml is not valid TOML"):
        load(path)


def test_a_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "nope.toml")


def test_fault_option_is_kind_equals_rate() -> None:
    assert parse_fault_option("flaky=0.25") == ("flaky", 0.25)
    for bad in ("flaky", "nonsense=0.1", "flaky=lots", "flaky=1.5"):
        with pytest.raises(ScenarioError, match="--fault"):
            parse_fault_option(bad)


def test_every_fault_kind_of_the_contract_exists() -> None:
    contract = {
        "update_download_corrupt",
        "update_install_fail",
        "update_health_fail",
        "disappear",
        "flaky",
        "sensor_stuck",
        "sensor_out_of_range",
        "flood",
        "compromised",
        "site_outage",
    }
    assert contract <= set(FAULT_KINDS)


def test_options_override_the_file_and_keep_the_rest_of_a_fault() -> None:
    base = parse({"devices": 5, "faults": {"compromised": {"rate": 0.1, "burst": 9}}})
    scenario = with_overrides(
        base, fault_rates={"compromised": 1.0, "flaky": 0.5}, devices=20, seed=None
    )
    assert scenario.devices == 20
    assert scenario.seed == base.seed  # None: not given
    assert scenario.faults["compromised"].rate == 1.0
    assert scenario.faults["compromised"].burst == 9
    assert scenario.faults["flaky"].rate == 0.5


def test_sub_second_intervals_are_allowed() -> None:
    scenario = with_overrides(Scenario(), checkin_interval=0.2, telemetry_interval=0.05)
    assert (scenario.checkin_interval, scenario.telemetry_interval) == (0.2, 0.05)


RELEASE = {"model": "thermo-v2", "version": "2.4.0"}


def test_rollout_phases_in_devices_become_shares_of_the_models_devices() -> None:
    rollout = parse({"rollout": {**RELEASE, "phases": [3, 10, 30]}}).rollout
    assert rollout is not None
    assert rollout.percentages(80) == [3.75, 16.25, 100.0]  # the last phase takes the rest
    assert rollout.percentages(10) == [30.0, 100.0]  # 13 of 10 devices: that is everyone


def test_rollout_phases_in_percent_go_to_the_deployment_as_they_are() -> None:
    rollout = parse({"rollout": {**RELEASE, "percent": [5, 20, 100]}}).rollout
    assert rollout is not None and rollout.percentages(80) == [5, 20, 100]


def test_rollout_phases_in_percent_rise() -> None:
    with pytest.raises(ScenarioError, match=r"rollout\.percent: .*cumulative"):
        parse({"rollout": {**RELEASE, "percent": [50, 20]}})


def test_rollout_phases_come_in_one_form() -> None:
    with pytest.raises(ScenarioError, match="not both"):
        parse({"rollout": {**RELEASE, "percent": [50, 100], "phases": [3]}})


def test_options_keep_a_rollout_in_percent() -> None:
    scenario = with_overrides(parse({"rollout": {**RELEASE, "percent": [10, 100]}}), devices=7)
    assert scenario.rollout is not None and scenario.rollout.percent == (10, 100)
