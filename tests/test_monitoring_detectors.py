"""Faulty sensors and misbehaving devices: each detector on its own, then a synthetic fleet."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper.services.monitoring import detectors
from fleetkeeper.services.monitoring.detectors import (
    COUNTER_METRICS,
    DEFAULT_RANGES,
    DETECTORS,
    FLAGS,
    Detector,
    Finding,
    Profile,
    Series,
    Severity,
    Thresholds,
    detect,
    detect_group,
    mad,
    median,
    step_noise,
)

NOW = 1_780_000_000.0
STEP = 10.0  # the simulator's telemetry interval


def series(
    values: Sequence[float],
    *,
    device: str = "unit",
    metric: str = "temperature",
    step: float = STEP,
    end: float = NOW,
) -> Series:
    """Readings `step` seconds apart, the last one at `end`."""
    n = len(values)
    return Series(device, metric, [(end - (n - 1 - i) * step, v) for i, v in enumerate(values)])


def noisy(seed: int, n: int = 360, *, base: float = 20.0, sigma: float = 0.3) -> list[float]:
    rng = random.Random(seed)
    return [round(base + rng.gauss(0, sigma), 2) for _ in range(n)]


def peers(
    n: int = 8, *, metric: str = "temperature", base: float = 20.0, sigma: float = 0.3
) -> list[Series]:
    """`n` healthy peers: readings around `base` with noise `sigma`, like `noisy`."""
    return [
        series(noisy(100 + i, base=base, sigma=sigma), device=f"peer-{i}", metric=metric)
        for i in range(n)
    ]


def catalogue(*wanted: str) -> tuple[Detector, ...]:
    return tuple(d for d in DETECTORS if d.flag in wanted)


def flags(findings: Sequence[Finding]) -> set[str]:
    return {f.flag for f in findings}


def only(findings: Sequence[Finding], flag: str) -> Finding:
    (found,) = [f for f in findings if f.flag == flag]
    return found


# --- robust statistics -------------------------------------------------------------------------


def test_mad_is_scaled_to_a_standard_deviation() -> None:
    assert median([1.0, 2.0, 3.0, 4.0, 100.0]) == 3.0
    assert mad([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(1.4826)


def test_step_noise_ignores_a_steady_trend() -> None:
    rng = random.Random(1)
    values = [0.05 * i + rng.gauss(0, 1.0) for i in range(2000)]
    assert step_noise(values) == pytest.approx(1.0, rel=0.1)


def test_step_noise_of_fewer_than_three_readings_is_zero() -> None:
    assert step_noise([1.0, 5.0]) == 0.0


def test_the_public_surface_is_pinned() -> None:
    assert sorted(detectors.__all__) == sorted(
        [
            "ACTIVITY_METRICS",
            "COUNTER_METRICS",
            "DEFAULT_RANGES",
            "DEFAULT_THRESHOLDS",
            "DETECTORS",
            "ENVIRONMENT_METRICS",
            "FLAGS",
            "MAD_SCALE",
            "Check",
            "Detector",
            "Evidence",
            "Finding",
            "Profile",
            "Range",
            "Series",
            "Severity",
            "Thresholds",
            "change_share",
            "detect",
            "detect_group",
            "mad",
            "median",
            "run",
            "step_noise",
        ]
    )


# --- inputs ------------------------------------------------------------------------------------


def test_a_series_refuses_points_out_of_time_order() -> None:
    with pytest.raises(ValueError, match="oldest first"):
        Series("unit", "temperature", [(2.0, 20.0), (1.0, 20.0)])


def test_a_series_refuses_readings_that_are_not_numbers() -> None:
    with pytest.raises(ValueError, match="finite"):
        Series("unit", "temperature", [(1.0, math.nan)])


def test_a_series_keeps_its_points_as_a_tuple() -> None:
    assert Series("unit", "temperature", [(1.0, 20.0)]).points == ((1.0, 20.0),)


def test_thresholds_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        Thresholds(min_points=1)
    with pytest.raises(ValueError):
        Thresholds(peer_z=0)


def test_peers_of_another_metric_are_refused() -> None:
    with pytest.raises(ValueError, match="same metric"):
        detect(series(noisy(1)), now=NOW, peers=peers(metric="rssi"))


# --- the catalogue -----------------------------------------------------------------------------


def test_the_catalogue_raises_every_flag_the_issue_asks_for() -> None:
    wanted = {"stuck_sensor", "out_of_range", "spike", "peer_deviation", "noisy", "flood"}
    assert wanted | {"silent"} == set(FLAGS)
    assert len({d.name for d in DETECTORS}) == len(DETECTORS)


def test_a_detector_yields_only_to_flags_the_catalogue_raises() -> None:
    for detector in DETECTORS:
        assert detector.yields_to <= set(FLAGS) - {detector.flag}


def test_a_healthy_series_among_healthy_peers_has_no_findings() -> None:
    assert detect(series(noisy(1)), now=NOW, peers=peers()) == ()


def test_a_catalogue_of_ones_own_runs_instead_of_the_default() -> None:
    def always(subject: Profile, _: Sequence[Profile]) -> dict[str, object]:
        return {"points": len(subject.series.points)}

    mine = (Detector("always", "looked_at", Severity.WARNING, always, "Every series."),)
    findings = detect(series([1.0, 2.0]), now=NOW, detectors=mine)
    assert findings == (Finding("looked_at", "temperature", {"points": 2}, Severity.WARNING),)


def test_a_finding_carries_the_detectors_severity() -> None:
    findings = detect(series([20.0, 500.0]), now=NOW)
    assert only(findings, "out_of_range").severity is Severity.CRITICAL


# --- out_of_range ------------------------------------------------------------------------------


def test_readings_outside_the_physical_range_are_out_of_range() -> None:
    values = noisy(1)
    values[100], values[200] = -127.0, 327.67
    evidence = only(detect(series(values), now=NOW), "out_of_range").evidence
    assert evidence["points"] == 2 and evidence["of"] == 360
    assert evidence["lowest"] == -127.0 and evidence["highest"] == 327.67
    assert evidence["range"] == [-40.0, 85.0]
    assert evidence["since"] == NOW - 259 * STEP


def test_a_models_own_range_replaces_the_default() -> None:
    ranges = {**DEFAULT_RANGES, "temperature": (0.0, 60.0)}
    values = [*noisy(1, 30), -5.0]
    assert "out_of_range" not in flags(detect(series(values), now=NOW))
    assert "out_of_range" in flags(detect(series(values), now=NOW, ranges=ranges))


def test_a_metric_without_a_known_range_is_never_out_of_range() -> None:
    findings = detect(series([1e9, -1e9], metric="pressure"), now=NOW)
    assert "out_of_range" not in flags(findings)


def test_impossible_readings_are_left_out_of_the_other_detectors() -> None:
    values = noisy(1)
    values[100] = 6553.5
    assert flags(detect(series(values), now=NOW, peers=peers())) == {"out_of_range"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-40.0, 85.0), min_size=1, max_size=50))
def test_readings_inside_the_range_are_never_out_of_range(values: list[float]) -> None:
    assert "out_of_range" not in flags(detect(series(values), now=NOW))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-40.0, 85.0), max_size=30),
    st.one_of(st.floats(-1e6, -40.001), st.floats(85.001, 1e6)),
)
def test_one_impossible_reading_is_enough(values: list[float], bad: float) -> None:
    assert "out_of_range" in flags(detect(series([*values, bad]), now=NOW))


# --- stuck_sensor ------------------------------------------------------------------------------


def test_a_value_frozen_while_the_peers_change_is_a_stuck_sensor() -> None:
    values = noisy(1)[:300] + [21.5] * 60
    evidence = only(detect(series(values), now=NOW, peers=peers()), "stuck_sensor").evidence
    assert evidence["value"] == 21.5 and evidence["points"] == 60
    assert evidence["since"] == NOW - 59 * STEP and evidence["seconds"] == 590.0
    assert evidence["reference"] == "peers"


def test_readings_within_the_epsilon_count_as_frozen() -> None:
    values = noisy(1)[:300] + [21.5 + (i % 2) * 1e-9 for i in range(60)]
    assert "stuck_sensor" in flags(detect(series(values), now=NOW, peers=peers()))


def test_a_short_flat_stretch_is_not_a_stuck_sensor() -> None:
    values = noisy(1)[:340] + [21.5] * 20  # 190 s: under stuck_min_seconds
    assert "stuck_sensor" not in flags(detect(series(values), now=NOW, peers=peers()))


def test_a_value_that_holds_still_like_its_peers_is_not_stuck() -> None:
    flat_peers = [series([55.0] * 360, device=f"peer-{i}", metric="storage_used") for i in range(5)]
    subject = series([40.0] * 360, metric="storage_used")
    assert "stuck_sensor" not in flags(detect(subject, now=NOW, peers=flat_peers))


@pytest.mark.parametrize(("metric", "bound"), [("battery", 100.0), ("speed", 0.0)])
def test_a_value_at_a_bound_of_the_range_is_saturation_not_a_stuck_sensor(
    metric: str, bound: float
) -> None:
    held = series(noisy(1, 300, base=50.0) + [bound] * 60, metric=metric)  # full, or parked
    moving = peers(metric=metric, base=50.0)
    assert "stuck_sensor" not in flags(detect(held, now=NOW, peers=moving))


def test_a_unit_reading_a_slow_metric_more_often_than_its_peers_is_not_stuck() -> None:
    # Batteries that change by 0.01 % every 400 s; the subject reads every second (a flood).
    def slow(step: float, n: int, device: str) -> Series:
        values = [round(80.0 - 0.000025 * (i * step), 2) for i in reversed(range(n))]
        return series(values, device=device, metric="battery", step=step)

    moving = [slow(STEP, 360, f"peer-{i}") for i in range(5)]
    subject = slow(1.0, 900, "unit")
    assert "stuck_sensor" not in flags(detect(subject, now=NOW, peers=moving))


def test_without_peers_a_sensor_is_judged_against_its_own_past() -> None:
    values = noisy(1)[:300] + [21.5] * 60
    evidence = only(detect(series(values), now=NOW), "stuck_sensor").evidence
    assert evidence["reference"] == "own history"


def test_without_peers_or_a_past_a_flat_series_is_not_judged() -> None:
    assert detect(series([21.5] * 360), now=NOW) == ()


def test_a_stuck_sensor_is_not_also_called_deviating_from_its_peers() -> None:
    values = noisy(1)[:300] + [35.0] * 60
    assert flags(detect(series(values), now=NOW, peers=peers())) == {"stuck_sensor"}


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    base=st.floats(-30.0, 70.0),
    sigma=st.floats(0.05, 5.0),
    n=st.integers(20, 400),
)
def test_a_constant_reading_with_noise_is_never_stuck(
    seed: int, base: float, sigma: float, n: int
) -> None:
    values = [base + random.Random(seed + i).gauss(0, sigma) for i in range(n)]
    only_stuck = catalogue("stuck_sensor")
    findings = detect(series(values), now=NOW, peers=peers(5), detectors=only_stuck)
    assert findings == ()


# --- spike -------------------------------------------------------------------------------------


def test_a_point_far_from_its_neighbours_is_a_spike() -> None:
    values = noisy(1)
    values[200] = 35.0
    evidence = only(detect(series(values), now=NOW, peers=peers()), "spike").evidence
    assert evidence["points"] == 1 and evidence["of"] == 360 and evidence["reference"] == "peers"
    assert 8.0 < evidence["limit"] < 15.0  # three times the typical peer's wildest (~4)
    spikes = evidence["spikes"]
    assert isinstance(spikes, list) and len(spikes) == 1
    spike = spikes[0]
    assert spike["t"] == NOW - 159 * STEP and spike["v"] == 35.0
    assert spike["deviations"] == pytest.approx(50, rel=0.1)  # 15 °C with 0.3 °C of noise


def test_a_spike_on_a_ramp_is_still_a_spike() -> None:
    rng = random.Random(1)
    values = [round(-30.0 + 0.3 * i + rng.gauss(0, 0.3), 2) for i in range(360)]
    values[200] -= 6.0  # the window spans 3 °C of ramp, yet 6 °C off the line is far off
    evidence = only(detect(series(values), now=NOW), "spike").evidence
    assert evidence["points"] == 1


def test_the_newest_reading_is_judged_once_the_next_one_arrives() -> None:
    values = [*noisy(1, 359), 35.0]  # a spike, or the first reading of a new level?
    assert "spike" not in flags(detect(series(values), now=NOW))
    assert "spike" in flags(detect(series([*values, 20.0]), now=NOW + STEP))


def driving(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [round(60 + rng.gauss(0, 3), 1) for _ in range(360)]


def test_a_van_stopping_for_a_moment_is_not_a_spike() -> None:
    stop = series([*driving(1)[:300], 0.0, *driving(1)[301:]], metric="speed")
    vans = [series(driving(i), device=f"peer-{i}", metric="speed") for i in range(2, 8)]
    assert "spike" not in flags(detect(stop, now=NOW, peers=vans))


def test_a_van_driving_among_parked_ones_is_not_noisy() -> None:
    van = series(driving(1), metric="speed")
    parked = [series([0.0] * 360, device=f"peer-{i}", metric="speed") for i in range(6)]
    assert "noisy" not in flags(detect(van, now=NOW, peers=parked))


def test_a_change_of_level_is_not_a_spike() -> None:
    values = noisy(1, 180) + noisy(2, 180, base=28.0)
    assert "spike" not in flags(detect(series(values), now=NOW))


def fading(seed: int, device: str = "unit", *, depth: float = 40.0) -> Series:
    """A radio with a deep fade every 40 readings (every few minutes): how it behaves."""
    values = noisy(seed, base=-70.0, sigma=1.0)
    for i in range(20, 360, 40):
        values[i] -= depth
    return series(values, device=device, metric="rssi")


def test_jumps_as_wild_as_the_peers_own_are_not_spikes() -> None:
    group = [fading(i, f"peer-{i}") for i in range(6)]
    assert "spike" not in flags(detect(fading(99), now=NOW, peers=group))


def test_a_radio_that_fades_time_after_time_is_not_faulty_without_peers_either() -> None:
    assert "spike" not in flags(detect(fading(99), now=NOW))
    assert "spike" not in flags(detect(fading(99), now=NOW, peers=[fading(1, "peer-1")]))


def radio(seed: int, device: str) -> Series:
    """A radio like the simulator's: 2.5 dB of noise, a fade of 5-15 dB in one reading of 20."""
    rng = random.Random(seed)
    level = rng.uniform(-85, -55)
    values = [
        round(level + rng.gauss(0, 2.5) - (rng.uniform(5, 15) if rng.random() < 0.05 else 0), 1)
        for _ in range(360)
    ]
    return series(values, device=device, metric="rssi")


def test_a_small_group_tells_a_broken_radio_from_radios_that_fade() -> None:
    group = [radio(i, f"unit-{i}") for i in range(3)]
    broken = [*group[0].points]
    broken[150] = (broken[150][0], -5.0)  # a reading no radio at that spot could make
    group[0] = Series("unit-0", "rssi", broken)
    findings = detect_group(group, now=NOW)
    assert flags(findings["unit-0"]) == {"spike"}
    evidence = only(findings["unit-0"], "spike").evidence
    assert evidence["points"] == 1 and evidence["reference"] == "own history"
    assert findings["unit-1"] == () and findings["unit-2"] == ()


@pytest.mark.parametrize("seed", range(20))
def test_radios_that_fade_in_a_small_group_have_no_spikes(seed: int) -> None:
    group = [radio(seed * 10 + i, f"unit-{i}") for i in range(3)]
    assert all(found == () for found in detect_group(group, now=NOW).values())


def test_a_wild_reading_is_a_spike_with_too_few_peers() -> None:
    values = noisy(1)
    values[200] = 35.0
    evidence = only(detect(series(values), now=NOW, peers=peers(2)), "spike").evidence
    assert evidence["reference"] == "own history" and 8.0 <= evidence["limit"] < 12.0


def test_wild_readings_in_a_few_stretches_of_the_past_do_not_hide_each_other() -> None:
    values = noisy(1)
    values[30], values[200] = 35.0, 5.0  # in the oldest fifth and the middle one
    evidence = only(detect(series(values), now=NOW), "spike").evidence
    assert evidence["points"] == 2


def test_with_too_few_peers_a_short_past_judges_no_spike() -> None:
    values = noisy(1, 100)  # five stretches would hold 20 readings each, not 30
    values[50] = 35.0
    assert "spike" not in flags(detect(series(values), now=NOW, peers=peers(2)))


def test_a_series_too_short_to_know_its_noise_has_no_spikes_even_among_peers() -> None:
    values = noisy(1, 20)
    values[10] = 35.0
    assert "spike" not in flags(detect(series(values), now=NOW, peers=peers()))
    values = noisy(1, 30)
    values[10] = 35.0
    assert "spike" in flags(detect(series(values), now=NOW, peers=peers()))


def sawtooth(seed: int) -> list[float]:
    """A van's battery read every ten fleet minutes: full at the depot, draining a step a
    reading on the road, full again in one reading."""
    rng = random.Random(seed)
    values: list[float] = []
    while len(values) < 360:
        values += [100.0] * rng.randint(2, 3)
        values += [round(100.0 - 0.38 * k, 2) for k in range(1, rng.randint(4, 9) + 1)]
    return values[:360]


@pytest.mark.parametrize("seed", range(10))
def test_a_battery_that_drains_a_step_a_reading_and_charges_at_once_is_not_spiky(
    seed: int,
) -> None:
    assert "spike" not in flags(detect(series(sawtooth(seed), metric="battery"), now=NOW))


def test_a_wild_reading_of_a_draining_battery_is_still_a_spike() -> None:
    values = sawtooth(1)
    values[200] = 40.0
    assert "spike" in flags(detect(series(values, metric="battery"), now=NOW))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), sigma=st.floats(0.01, 10.0))
def test_gaussian_noise_alone_makes_no_spikes(seed: int, sigma: float) -> None:
    rng = random.Random(seed)
    values = [20.0 + rng.gauss(0, sigma) for _ in range(360)]
    assert "spike" not in flags(detect(series(values), now=NOW))


# --- peer_deviation ----------------------------------------------------------------------------


def test_a_median_far_from_the_peers_is_a_peer_deviation() -> None:
    evidence = only(
        detect(series(noisy(1, base=26.0)), now=NOW, peers=peers()), "peer_deviation"
    ).evidence
    assert evidence["median"] == pytest.approx(26.0, abs=0.1)
    assert evidence["peer_median"] == pytest.approx(20.0, abs=0.1)
    assert evidence["mad"] == 0.625  # the floor: 0.5 % of the 125 °C range
    assert evidence["z"] == pytest.approx(9.6, abs=0.3)
    assert evidence["peers"] == 8 and evidence["points"] == 90


def test_a_units_own_signal_may_differ_from_its_peers() -> None:
    weak = series(noisy(1, base=-110.0, sigma=2.0), metric="rssi")  # mounted in a weak spot
    group = peers(metric="rssi", base=-70.0, sigma=2.0)
    assert "peer_deviation" not in flags(detect(weak, now=NOW, peers=group))


def test_peer_deviation_needs_enough_peers() -> None:
    findings = detect(series(noisy(1, base=26.0)), now=NOW, peers=peers(4))
    assert "peer_deviation" not in flags(findings)


def test_peer_deviation_judges_only_the_recent_readings() -> None:
    values = noisy(1, 270, base=26.0) + noisy(2, 90)  # back in line for the last 15 minutes
    assert "peer_deviation" not in flags(detect(series(values), now=NOW, peers=peers()))


def test_a_noisy_sensors_median_may_wander_without_deviating() -> None:
    rng = random.Random(3)
    values = [20.0 + rng.gauss(0, 8.0) for _ in range(360)]
    assert flags(detect(series(values), now=NOW, peers=peers())) == {"noisy"}


@settings(max_examples=30, deadline=None)
@given(shift=st.floats(-1000.0, 1000.0), seed=st.integers(0, 1000))
def test_shifting_a_whole_fleet_flags_nobody_for_peer_deviation(shift: float, seed: int) -> None:
    fleet = [
        series(
            [v + shift for v in noisy(seed + i, 120, sigma=1.0)], device=f"d{i}", metric="pressure"
        )
        for i in range(8)
    ]
    findings = detect_group(fleet, now=NOW)
    assert all("peer_deviation" not in flags(found) for found in findings.values())


# --- noisy -------------------------------------------------------------------------------------


def test_noise_far_above_the_peers_is_a_noisy_sensor() -> None:
    values = noisy(1, sigma=3.0)
    evidence = only(detect(series(values), now=NOW, peers=peers()), "noisy").evidence
    assert evidence["ratio"] == pytest.approx(10.0, rel=0.3)
    assert evidence["peer_noise"] == pytest.approx(0.3, rel=0.3)
    assert evidence["peers"] == 8


def test_a_sensor_that_turned_noisy_lately_is_noisy_now() -> None:
    values = noisy(1, 270) + noisy(2, 90, sigma=4.0)
    assert "noisy" in flags(detect(series(values), now=NOW, peers=peers()))


def charging(steps: int) -> list[float]:
    """A solar battery read every ten fleet minutes: charging ever slower as the sun sinks for
    `steps` readings, then draining a little every reading, 90 readings in all."""
    values = [40.0]
    for k in range(89):
        rise = 1.2 * math.cos(math.pi / 2 * k / steps) if k < steps else -0.016
        values.append(values[-1] + rise)
    return [round(v, 2) for v in values]


def test_a_battery_charging_ever_slower_is_not_noisy() -> None:
    draining = [
        series([round(80 - 0.016 * k, 2) for k in range(90)], device=f"peer-{i}", metric="battery")
        for i in range(6)
    ]
    battery = series(charging(60), metric="battery")
    assert step_noise(charging(60)) > 0.4  # its steps alone would say noise of 0.4 %...
    assert "noisy" not in flags(detect(battery, now=NOW, peers=draining))  # ...there is none


def test_peers_held_at_a_bound_say_nothing_of_a_sensors_noise() -> None:
    full = [series([100.0] * 90, device=f"peer-{i}", metric="battery") for i in range(6)]
    rng = random.Random(1)
    jittery = series([round(60 + rng.gauss(0, 0.5), 2) for _ in range(90)], metric="battery")
    assert "noisy" not in flags(detect(jittery, now=NOW, peers=full))  # nothing to compare with
    moving = [
        series(
            [round(60 + rng.gauss(0, 0.02), 2) for _ in range(90)],
            device=f"m-{i}",
            metric="battery",
        )
        for i in range(6)
    ]
    assert "noisy" in flags(detect(jittery, now=NOW, peers=[*full, *moving]))


def test_noise_is_judged_only_with_enough_peers() -> None:
    assert "noisy" not in flags(detect(series(noisy(1, sigma=3.0)), now=NOW, peers=peers(4)))


def test_a_quantised_metric_does_not_make_one_tick_noisy() -> None:
    flat = [series([80.0] * 360, device=f"peer-{i}", metric="battery") for i in range(6)]
    ticking = series([80.0 + 0.01 * (i % 2) for i in range(360)], metric="battery")
    assert "noisy" not in flags(detect(ticking, now=NOW, peers=flat))


# --- flood -------------------------------------------------------------------------------------


def flooding(extra_per_second: float, seconds: float, *, device: str = "unit") -> Series:
    values = noisy(1)
    points = [(NOW - (359 - i) * STEP, v) for i, v in enumerate(values)]
    n = int(seconds * extra_per_second)
    points += [(NOW - seconds + (k + 0.5) / extra_per_second, 20.0) for k in range(n)]
    return Series(device, "temperature", sorted(points))


def test_many_more_points_than_the_peers_send_is_a_flood() -> None:
    evidence = only(detect(flooding(2.0, 300), now=NOW, peers=peers()), "flood").evidence
    assert evidence == {
        "points": 660,
        "seconds": 600.0,
        "expected_points": 60.0,
        "factor": 11.0,
        "reference": "peers",
    }


def test_the_expected_interval_is_the_reference_when_given() -> None:
    evidence = only(
        detect(flooding(2.0, 300), now=NOW, peers=peers(), expected_interval=5.0), "flood"
    ).evidence
    assert evidence["expected_points"] == 120.0 and evidence["reference"] == "expected interval"


def test_without_peers_a_flood_is_judged_against_the_devices_past() -> None:
    evidence = only(detect(flooding(2.0, 300), now=NOW), "flood").evidence
    assert evidence["reference"] == "own history"


def test_a_device_that_began_reporting_lately_owes_only_that_part_of_the_window() -> None:
    young = series(noisy(1, 40), step=5.0)  # 200 s of readings every 5 s
    assert "flood" not in flags(detect(young, now=NOW, expected_interval=5.0))
    burst = [(NOW - 30 + k / 10, 20.0) for k in range(300)]  # 30 s at 10 a second
    flooding_young = Series("unit", "temperature", sorted([*young.points, *burst]))
    evidence = only(detect(flooding_young, now=NOW, expected_interval=5.0), "flood").evidence
    assert evidence["seconds"] == 195.0 and evidence["expected_points"] == 39.0


def test_a_few_more_points_than_usual_are_not_a_flood() -> None:
    slow = [series(noisy(i, 6), device=f"peer-{i}", step=600.0) for i in range(5)]
    busier = series(noisy(1, 36), step=100.0)  # six points in the window instead of one
    assert "flood" not in flags(detect(busier, now=NOW, peers=slow))


# --- counters ----------------------------------------------------------------------------------


def uptime(device: str, reboots: Sequence[int] = ()) -> Series:
    """Seconds since boot every 10 s, back to 0 at each reboot (a reading index)."""
    values, since = [], 0
    for i in range(360):
        since = i if i in reboots else since
        values.append((i - since) * STEP)
    return series(values, device=device, metric="uptime")


def test_a_counter_is_not_judged_as_a_sensor() -> None:
    group = [uptime(f"peer-{i}") for i in range(6)]
    for reboots in ((), (200,), (100, 250, 251, 330)):
        assert detect(uptime("unit", reboots), now=NOW, peers=group) == ()


def test_the_sensor_detectors_skip_counters() -> None:
    sensors = {"stuck_sensor", "noisy", "spike", "peer_deviation"}
    assert all(d.skips >= COUNTER_METRICS for d in DETECTORS if d.flag in sensors)
    assert {"uptime", "net_rx_bytes", "net_tx_bytes"} <= COUNTER_METRICS  # what agents count


def test_a_counters_points_still_count_for_a_flood() -> None:
    points = [*uptime("unit").points]
    points += [(NOW - 300 + k / 2, 3000.0 + k / 2) for k in range(600)]
    flood = Series("unit", "uptime", sorted(points))
    assert flags(detect(flood, now=NOW, expected_interval=STEP)) == {"flood"}


# --- silent ------------------------------------------------------------------------------------


def test_a_device_quiet_while_its_peers_report_is_silent() -> None:
    quiet = series(noisy(1, 300), end=NOW - 600)
    evidence = only(detect(quiet, now=NOW, peers=peers()), "silent").evidence
    assert evidence == {
        "last_point": NOW - 600,
        "silent_seconds": 600.0,
        "quiet_after": 300.0,
        "peers_reporting": 8,
        "peers": 8,
    }


def test_a_device_that_sent_nothing_while_its_peers_report_is_silent() -> None:
    evidence = only(detect(Series("unit", "temperature"), now=NOW, peers=peers()), "silent")
    assert evidence.evidence["last_point"] is None


def test_a_whole_group_going_quiet_is_an_outage_not_a_silent_device() -> None:
    group = [series(noisy(i, 300), device=f"d{i}", end=NOW - 900) for i in range(6)]
    findings = detect_group(group, now=NOW)
    assert all("silent" not in flags(found) for found in findings.values())


def test_a_device_that_reports_rarely_is_silent_only_after_several_intervals() -> None:
    hourly = [series(noisy(i, 5), device=f"peer-{i}", step=3600.0) for i in range(5)]
    late = series(noisy(1, 5), step=3600.0, end=NOW - 7200)
    assert "silent" not in flags(detect(late, now=NOW, peers=hourly))
    later = series(noisy(1, 5), step=3600.0, end=NOW - 6 * 3600)
    assert "silent" in flags(detect(later, now=NOW, peers=hourly))


# --- a peer group at once ----------------------------------------------------------------------


def test_a_group_answers_for_every_device_healthy_ones_with_nothing() -> None:
    group = [*peers(5), series(noisy(1)[:300] + [21.5] * 60)]
    findings = detect_group(group, now=NOW)
    assert set(findings) == {"unit", *(f"peer-{i}" for i in range(5))}
    assert flags(findings["unit"]) == {"stuck_sensor"}
    assert all(findings[f"peer-{i}"] == () for i in range(5))


def test_a_group_judges_each_device_as_detect_does() -> None:
    subject = series(noisy(1, base=26.0))
    group = peers()
    assert detect_group([subject, *group], now=NOW)["unit"] == detect(subject, now=NOW, peers=group)


def test_a_group_judges_each_metric_against_the_same_metric() -> None:
    group = [*peers(6), *peers(6, metric="rssi", base=-70.0, sigma=2.0)]
    group.append(series(noisy(1, base=-70.0, sigma=2.0), metric="rssi"))
    assert all(found == () for found in detect_group(group, now=NOW).values())


def test_evidence_is_plain_json_for_the_api() -> None:
    broken, spiky = [*noisy(1, 300), *[21.5] * 60], noisy(4)
    broken[100], spiky[150] = -127.0, 35.0
    group = [
        *peers(),
        series(broken, device="broken"),
        series(spiky, device="spiky"),
        series(noisy(2, base=27.0, sigma=3.0), device="off"),
        series(noisy(3, 300), device="quiet", end=NOW - 600),
        flooding(2.0, 300, device="chatty"),
    ]
    findings = detect_group(group, now=NOW)
    assert {flag for found in findings.values() for flag in flags(found)} == set(FLAGS)
    for found in findings.values():
        for finding in found:
            assert json.loads(json.dumps(finding.evidence)) == finding.evidence


def test_a_group_refuses_two_series_of_one_device_and_metric() -> None:
    with pytest.raises(ValueError, match="one series per device and metric"):
        detect_group([series([1.0]), series([2.0])], now=NOW)


# --- a synthetic fleet: every injected fault found, healthy devices left alone -----------------
#
# 200 devices over the last hour at the simulator's 10 s: four sites around the globe (each at
# its own time of day, so its own part of the daily temperature cycle) and two models (a solar
# sensor that barely warms itself, a gateway whose load bursts heat it by degrees), so eight
# peer groups of 25. Each reports temperature, battery (solar units charge in daylight and sit
# at 100 % when full, gateways hold 100 %) and rssi (each unit its own level, some in weak
# spots, with the odd deep fade). Ten devices for each fault, on the temperature sensor unless
# the fault is the device's: stuck at the reading it had when the fault began (10-40 minutes
# ago), the simulator's impossible values in about a third of the readings since the onset
# (5-40 minutes ago), one to three spikes of 8-25 °C anywhere, noise of 3-8 °C (the
# simulator's is 8) for the last 20-50 minutes, a miscalibration of 5-12 °C, a flood of
# 1.5-4 readings a second for the last 5-10 minutes, silence for the last 7-40 minutes.

START = NOW - 3600.0  # the window judged: the last hour
OUT_OF_RANGE = (-127.0, 327.67, -273.5, 6553.5)  # what broken temperature sensors report


@dataclass(frozen=True)
class Site:
    name: str
    lon: float
    climate: float
    swing: float


@dataclass(frozen=True)
class Model:
    name: str
    self_heating: float
    idle_load: float
    solar: bool


SITES = (
    Site("oslo", 10.75, 6.0, 5.0),
    Site("dubai", 55.27, 30.0, 8.0),
    Site("austin", -97.74, 21.0, 10.0),
    Site("singapore", 103.82, 28.0, 4.0),
)
MODELS = (Model("thermo", 1.0, 0.05, solar=True), Model("gateway", 18.0, 0.25, solar=False))


@dataclass
class Unit:
    """One synthetic device: its own random state, what is wrong with it and when."""

    name: str
    site: Site
    model: Model
    rng: random.Random
    fault: str | None = None
    onset: float = math.inf
    knob: float = 0.0
    load: float = 0.0
    battery: float = 0.0
    rssi_level: float = 0.0
    stuck_at: float | None = None
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _hour(site: Site, t: float) -> float:
    return ((t % 86400) / 3600 + site.lon / 15) % 24


def _reading(unit: Unit, t: float) -> dict[str, float]:
    """What a healthy unit measures at `t`: a daily cycle, self-heating under load, noise."""
    rng, site = unit.rng, unit.site
    busy = rng.uniform(0.6, 0.95) if rng.random() < 0.05 else unit.model.idle_load
    unit.load = min(1.0, max(0.0, unit.load + (busy - unit.load) * 0.08 + rng.gauss(0, 0.02)))
    air = site.climate + site.swing * math.sin(2 * math.pi * (_hour(site, t) - 9) / 24)
    temperature = air + unit.model.self_heating * unit.load + rng.gauss(0, 0.3)
    if unit.model.solar:
        sun = max(0.0, math.sin(math.pi * (_hour(site, t) - 6) / 12))
        unit.battery = min(100.0, max(0.0, unit.battery + (6 * sun - 0.1) * STEP / 3600))
    fade = -rng.uniform(5, 15) if rng.random() < 0.05 else 0.0
    rssi = max(-125.0, unit.rssi_level + rng.gauss(0, 2.5) + fade)
    return {
        "temperature": round(temperature, 2),
        "battery": round(unit.battery, 2),
        "rssi": round(rssi, 1),
    }


def _sensor_fault(unit: Unit, t: float, value: float) -> float:
    """The temperature a unit with a sensor fault reports instead of `value`."""
    if t < unit.onset:
        return value
    if unit.fault == "stuck_sensor":
        unit.stuck_at = value if unit.stuck_at is None else unit.stuck_at
        return unit.stuck_at
    if unit.fault == "out_of_range" and (t == unit.onset or unit.rng.random() < 0.3):
        return unit.rng.choice(OUT_OF_RANGE)
    if unit.fault == "noisy":
        return round(value + unit.rng.gauss(0, unit.knob), 2)
    if unit.fault == "peer_deviation":
        return round(value + unit.knob, 2)
    return value


def _record(unit: Unit, t: float) -> None:
    for metric, value in _reading(unit, t).items():
        if metric == "temperature":
            value = _sensor_fault(unit, t, value)
        unit.points.setdefault(metric, []).append((t, value))


def _simulate(unit: Unit, spikes: set[int]) -> None:
    offset = unit.rng.uniform(0, STEP)
    times = [START + offset + k * STEP + unit.rng.uniform(-0.5, 0.5) for k in range(360)]
    if unit.fault == "out_of_range":
        unit.onset = min(times, key=lambda t: abs(t - unit.onset))  # its first bad reading
    for k, t in enumerate(times):
        if unit.fault == "silent" and t >= unit.onset:
            break
        _record(unit, t)
        if k in spikes:
            t0, v = unit.points["temperature"][-1]
            sign = unit.rng.choice((-1, 1))
            unit.points["temperature"][-1] = (t0, round(v + sign * unit.rng.uniform(8, 25), 2))
        following = times[k + 1] if k + 1 < len(times) else NOW
        if unit.fault == "flood" and following > unit.onset:  # readings as fast as it can
            extra = max(t, unit.onset)
            while (extra := extra + 1 / unit.knob) < following:
                _record(unit, extra)


# How each fault is injected: (onset before NOW in seconds, its knob) drawn from the unit's rng.
FAULTS: dict[str, Callable[[random.Random], tuple[float, float]]] = {
    "stuck_sensor": lambda r: (r.uniform(600, 2400), 0.0),
    "out_of_range": lambda r: (r.uniform(300, 2400), 0.0),
    "spike": lambda r: (3600.0, r.randint(1, 3)),  # how many spikes
    "noisy": lambda r: (r.uniform(1200, 3000), r.uniform(3.0, 8.0)),  # sigma, °C
    "peer_deviation": lambda r: (3600.0, r.choice((-1, 1)) * r.uniform(5, 12)),  # offset, °C
    "flood": lambda r: (r.uniform(300, 600), r.uniform(1.5, 4.0)),  # readings a second
    "silent": lambda r: (r.uniform(420, 2400), 0.0),
}


def synthetic_fleet(seed: int, devices: int = 200, faulty: int = 10) -> list[Unit]:
    """A fleet over the last hour: sites around the globe (so each at its own time of day),
    two models, and `faulty` devices for each fault, each set known."""
    rng = random.Random(seed)
    kinds: list[str | None] = [kind for kind in FAULTS for _ in range(faulty)]
    kinds += [None] * (devices - len(kinds))
    rng.shuffle(kinds)
    fleet = []
    for i, kind in enumerate(kinds):
        unit = Unit(f"unit-{i:03d}", SITES[i % 4], MODELS[i // 4 % 2], random.Random(rng.random()))
        unit.load = unit.model.idle_load
        unit.battery = unit.rng.uniform(40, 100) if unit.model.solar else 100.0
        dead_zone = unit.rng.random() < 0.08
        unit.rssi_level = unit.rng.uniform(-108, -100) if dead_zone else unit.rng.uniform(-85, -55)
        spikes: set[int] = set()
        if kind is not None:
            before, unit.knob = FAULTS[kind](unit.rng)
            unit.fault, unit.onset = kind, NOW - before
            if kind == "spike":
                spikes = set(unit.rng.sample(range(360), int(unit.knob)))
        _simulate(unit, spikes)
        fleet.append(unit)
    return fleet


def test_a_synthetic_fleet_has_every_fault_found_and_healthy_devices_left_alone() -> None:
    fleet = synthetic_fleet(seed=6)
    groups: dict[tuple[str, str], list[Series]] = {}
    for unit in fleet:
        group = groups.setdefault((unit.model.name, unit.site.name), [])
        group += [Series(unit.name, m, points) for m, points in unit.points.items()]
    found: dict[str, set[str]] = {flag: set() for flag in FLAGS}
    for group in groups.values():
        for device, findings in detect_group(group, now=NOW).items():
            for finding in findings:
                found[finding.flag].add(device)

    healthy = [u.name for u in fleet if u.fault is None]
    alarmed = {device for devices in found.values() for device in devices}
    print(f"\n{len(fleet)} devices in {len(groups)} peer groups, {len(healthy)} healthy,")
    print(f"{len(alarmed & set(healthy))} of them with any finding")
    print(f"{'flag':<16}{'injected':>9}{'flagged':>9}{'precision':>11}{'recall':>8}")
    scores = {}
    for flag in FLAGS:
        truth = {u.name for u in fleet if u.fault == flag}
        hits = len(truth & found[flag])
        precision = hits / len(found[flag]) if found[flag] else 1.0
        recall = hits / len(truth)
        scores[flag] = (precision, recall)
        print(f"{flag:<16}{len(truth):>9}{len(found[flag]):>9}{precision:>11.3f}{recall:>8.3f}")
    for flag, (precision, recall) in scores.items():
        truth = {u.name for u in fleet if u.fault == flag}
        assert recall >= 0.95, f"{flag}: missed {sorted(truth - found[flag])}"
        assert precision >= 0.9, f"{flag}: also flagged {sorted(found[flag] - truth)}"
