"""Simulated measurements behave like the real thing."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from dataclasses import replace

import pytest

from fleetkeeper.sim.catalogue import MODELS_BY_NAME, Site
from fleetkeeper.sim.physics import (
    BUSY_EVERY,
    BUSY_SPELL,
    DAY,
    OUT_OF_RANGE,
    THERMAL_TAU,
    Physics,
    advance,
    ambient,
    daylight,
    faulty_temperature,
    in_dead_zone,
    new_physics,
    parked,
    position,
    readings,
    rssi,
    work,
)

THERMO = MODELS_BY_NAME["thermo-v2"]
TRACKER = MODELS_BY_NAME["tracker-m3"]
METER = MODELS_BY_NAME["meter-e5"]
GATEWAY = MODELS_BY_NAME["gateway-x1"]
GREENWICH = Site("greenwich", 51.48, 0.0, climate=10.0, swing=6.0)
NOON = 12 * 3600.0  # fleet time: noon UTC, local solar noon at longitude 0
MIDNIGHT = 0.0


def unit(model: object = THERMO, seed: int = 1, **changes: object) -> Physics:
    ph = new_physics(random.Random(seed), model)  # type: ignore[arg-type]
    return replace(ph, **changes)  # type: ignore[arg-type]


def run_for(ph: Physics, model: object, hours: float, start: float, step: float = 600.0) -> None:
    rng = random.Random(7)
    t = start
    for _ in range(int(hours * 3600 / step)):
        t += step
        advance(ph, rng, model, GREENWICH, step, t)  # type: ignore[arg-type]


def test_a_battery_discharges_at_night_and_charges_in_the_sun() -> None:
    night = unit(battery=80.0, capacity=1.0, fade_per_day=0.0)
    run_for(night, THERMO, hours=4, start=MIDNIGHT)
    assert night.battery < 80.0
    day = unit(battery=50.0, capacity=1.0, fade_per_day=0.0)
    run_for(day, THERMO, hours=4, start=NOON - 2 * 3600)
    assert day.battery > 50.0


def test_a_battery_stays_between_empty_and_full() -> None:
    ph = unit(battery=1.0)
    run_for(ph, TRACKER, hours=48, start=MIDNIGHT)
    assert 0.0 <= ph.battery <= 100.0


def test_capacity_fades_over_months_for_some_units() -> None:
    fading = unit(capacity=1.0, fade_per_day=0.005)
    run_for(fading, THERMO, hours=24 * 60, start=MIDNIGHT, step=3600)
    assert 0.65 < fading.capacity < 0.75
    steady = unit(capacity=1.0, fade_per_day=0.0)
    run_for(steady, THERMO, hours=24 * 60, start=MIDNIGHT, step=3600)
    assert steady.capacity == 1.0
    fades = [new_physics(random.Random(s), THERMO).fade_per_day > 0 for s in range(500)]
    assert 0.1 < sum(fades) / 500 < 0.3


def test_a_faded_battery_runs_down_faster() -> None:
    new = unit(battery=90.0, capacity=1.0, fade_per_day=0.0)
    old = unit(battery=90.0, capacity=0.6, fade_per_day=0.0)
    run_for(new, THERMO, hours=5, start=MIDNIGHT)
    run_for(old, THERMO, hours=5, start=MIDNIGHT)
    assert old.battery < new.battery


def test_mains_units_keep_their_backup_battery_full_until_the_power_fails() -> None:
    ph = unit(METER, battery=70.0)
    run_for(ph, METER, hours=2, start=MIDNIGHT)
    assert ph.battery == 100.0
    advance(ph, random.Random(1), METER, GREENWICH, 3600, 3 * 3600, powered=False)
    assert ph.battery < 100.0


def test_storage_fills_and_most_units_rotate_their_logs() -> None:
    ph = unit(GATEWAY, storage=50.0, rotates=True)
    run_for(ph, GATEWAY, hours=24, start=MIDNIGHT)
    assert ph.storage > 50.0
    full = unit(GATEWAY, storage=91.9, rotates=True)
    run_for(full, GATEWAY, hours=24, start=MIDNIGHT)
    assert full.storage < 92.0
    leaking = unit(GATEWAY, storage=91.9, rotates=False)
    run_for(leaking, GATEWAY, hours=24 * 10, start=MIDNIGHT, step=3600)
    assert leaking.storage == 99.9


def test_temperature_follows_the_day_and_the_heat_of_the_load() -> None:
    assert ambient(GREENWICH, 15 * 3600) > ambient(GREENWICH, 3 * 3600)
    assert daylight(GREENWICH, NOON) == 1.0 and daylight(GREENWICH, MIDNIGHT) == 0.0
    rng = random.Random(1)
    cool = readings(unit(GATEWAY, heat=0.0), rng, GATEWAY, GREENWICH, NOON)["temperature"]
    hot = readings(unit(GATEWAY, heat=18.0), rng, GATEWAY, GREENWICH, NOON)["temperature"]
    assert hot - cool > GATEWAY.self_heating * 0.8


class NoSpells(random.Random):
    """Randomness under which no busy spell ever starts."""

    def expovariate(self, lambd: float = 1.0) -> float:
        return math.inf


def busy(ph: Physics, seconds: float, load: float = 1.0) -> Physics:
    """`ph` in the middle of a busy spell with `seconds` left."""
    return replace(ph, busy_left=seconds, busy_load=load)


def test_a_unit_that_gets_busy_warms_over_minutes_not_at_once() -> None:
    ph = busy(unit(GATEWAY, load=GATEWAY.idle_load, heat=GATEWAY.idle_load * 18.0), 6 * 3600)
    idle_heat, rng = ph.heat, random.Random(1)
    work(ph, rng, GATEWAY, 60)
    assert ph.load > 0.8  # the load follows at once...
    assert ph.heat - idle_heat < 1.0  # ...its heat does not
    work(ph, rng, GATEWAY, THERMAL_TAU - 60)
    assert 0.5 < (ph.heat - idle_heat) / (18.0 - idle_heat) < 0.7  # 1 - 1/e after a time constant
    work(ph, rng, GATEWAY, 4 * THERMAL_TAU)
    assert ph.heat == pytest.approx(18.0, abs=0.5)


def test_a_unit_cools_back_as_slowly_once_the_spell_is_over() -> None:
    ph = busy(unit(GATEWAY, load=1.0, heat=18.0), 0.0)
    work(ph, NoSpells(1), GATEWAY, 600)
    assert ph.load == pytest.approx(GATEWAY.idle_load, abs=0.01)
    assert ph.heat > 18.0 - 0.25 * (18.0 - GATEWAY.idle_load * 18.0)


def test_the_heat_follows_the_load_alike_in_long_steps_and_short_ones() -> None:
    coarse = busy(unit(GATEWAY, heat=2.0, load=0.1), 3 * 3600, load=0.9)
    fine = busy(unit(GATEWAY, heat=2.0, load=0.1), 3 * 3600, load=0.9)
    work(coarse, random.Random(1), GATEWAY, 3600)
    for _ in range(360):
        work(fine, random.Random(1), GATEWAY, 10)
    assert coarse.heat == pytest.approx(fine.heat, rel=1e-9)
    assert coarse.load == pytest.approx(fine.load, rel=1e-9)


def test_busy_spells_start_now_and_then_and_last_minutes() -> None:
    ph, rng = unit(GATEWAY), random.Random(2)
    starts, spell, spells, step = 0, 0.0, [], 60.0
    for _ in range(int(2000 * 3600 / step)):  # 2000 fleet hours a minute at a time
        was_busy = ph.busy_left > 0
        work(ph, rng, GATEWAY, step)
        if ph.busy_left > 0 and not was_busy:
            starts += 1
        if ph.busy_left > 0 or was_busy:
            spell += step
        elif spell:
            spells.append(spell)
            spell = 0.0
    assert 2000 * 3600 / BUSY_EVERY * 0.9 < starts < 2000 * 3600 / BUSY_EVERY * 1.1
    assert BUSY_SPELL[0] <= statistics.median(spells) <= BUSY_SPELL[1] + step


def test_a_unit_read_every_ten_fleet_minutes_warms_and_cools_without_jumps() -> None:
    """time_scale 120 at a 5 s interval: each reading 600 fleet seconds after the last."""
    ph, rng = unit(GATEWAY), random.Random(3)
    temperatures, t = [], NOON
    for _ in range(2000):
        t += 600
        advance(ph, rng, GATEWAY, GREENWICH, 600, t)
        temperatures.append(readings(ph, rng, GATEWAY, GREENWICH, t)["temperature"])
    steps = [abs(b - a) for a, b in itertools.pairwise(temperatures)]
    assert max(steps) < 4.0  # at most a quarter of the 18 °C a full load could add
    assert max(temperatures) - min(temperatures) > 5.0  # yet busy spells do warm it


def test_a_hot_site_reads_warmer_than_a_cold_one() -> None:
    rng = random.Random(2)
    dubai = Site("dubai", 25.2, 55.3, climate=30.0, swing=8.0)
    oslo = Site("oslo", 59.9, 10.7, climate=6.0, swing=5.0)
    ph = unit()
    assert (
        readings(ph, rng, THERMO, dubai, NOON)["temperature"]
        > readings(ph, rng, THERMO, oslo, NOON)["temperature"] + 10
    )


def test_rssi_is_noisy_around_the_units_level() -> None:
    rng = random.Random(3)
    ph = unit(rssi_level=-70.0)
    values = [rssi(ph, rng) for _ in range(500)]
    assert -75 < statistics.median(values) < -65
    assert statistics.pstdev(values) > 1.5
    assert all(-125 <= v <= -30 for v in values)


def test_some_fixed_units_sit_in_a_dead_zone() -> None:
    levels = [new_physics(random.Random(s), THERMO).rssi_level for s in range(500)]
    weak = [v for v in levels if v <= -100]
    assert 0.03 < len(weak) / 500 < 0.15


def test_a_tracker_drives_its_route_loses_coverage_and_parks_at_the_depot() -> None:
    ph = unit(TRACKER, progress=0.3)
    rng = random.Random(4)
    seen = {"parked": False, "dead": False, "moved": False}
    start = position(ph, GREENWICH)
    t = MIDNIGHT
    for _ in range(600):
        t += 60
        advance(ph, rng, TRACKER, GREENWICH, 60, t)
        seen["parked"] |= parked(ph)
        seen["dead"] |= in_dead_zone(ph)
        seen["moved"] |= position(ph, GREENWICH) != start
        if in_dead_zone(ph):
            assert rssi(ph, rng) < -105
    assert seen == {"parked": True, "dead": True, "moved": True}
    values = readings(ph, rng, TRACKER, GREENWICH, t)
    assert "speed" in values


def test_no_two_rounds_of_a_trackers_loop_take_the_same_time() -> None:
    ph, rng = unit(TRACKER, progress=0.0), random.Random(5)
    rounds, began, t, speeds = [], 0.0, MIDNIGHT, []
    for _ in range(30 * 24 * 60):  # a month, a fleet minute at a time
        before = ph.progress
        t += 60
        advance(ph, rng, TRACKER, GREENWICH, 60, t)
        if ph.progress < before:  # back at the depot
            rounds.append(t - began)
            began = t
        speeds.append(readings(ph, rng, TRACKER, GREENWICH, t)["speed"])
    assert len(rounds) > 20
    assert statistics.pstdev(rounds[1:]) > 0.05 * statistics.mean(rounds[1:])
    assert 0.3 <= ph.pace <= 1.5 and min(speeds) >= 0.0


def test_a_mains_unit_starts_with_its_backup_battery_full() -> None:
    assert all(new_physics(random.Random(s), METER).battery == 100.0 for s in range(20))


def test_a_fixed_unit_only_drifts_a_little() -> None:
    ph = unit(THERMO)
    before = position(ph, GREENWICH)
    run_for(ph, THERMO, hours=24 * 7, start=MIDNIGHT, step=3600)
    after = position(ph, GREENWICH)
    assert abs(after[0] - before[0]) < 0.0003 and abs(after[1] - before[1]) < 0.0005


def test_every_unit_reports_the_contract_metrics() -> None:
    ph = unit(METER)
    values = readings(ph, random.Random(5), METER, GREENWICH, NOON)
    assert {"battery", "rssi", "storage_used", "temperature"} <= set(values)
    assert 0 <= values["battery"] <= 100 and 0 <= values["storage_used"] <= 100


def test_broken_sensors_stick_leave_the_physical_range_or_get_noisy() -> None:
    rng = random.Random(6)
    assert faulty_temperature("sensor_stuck", 21.3, 19.0, rng) == 19.0
    wild = [faulty_temperature("sensor_out_of_range", 21.0, 0, rng) for _ in range(100)]
    assert any(v in OUT_OF_RANGE for v in wild)
    assert all(v in OUT_OF_RANGE or v == 21.0 for v in wild)
    noisy = [faulty_temperature("sensor_noisy", 21.0, 0, rng) for _ in range(200)]
    assert statistics.pstdev(noisy) > 4


def test_a_long_gap_is_capped_at_a_day() -> None:
    ph = unit(GATEWAY, storage=10.0, rotates=False)
    advance(ph, random.Random(1), GATEWAY, GREENWICH, 365 * DAY, 365 * DAY)
    assert ph.storage < 10.0 + 2 * GATEWAY.storage_fill_per_day
