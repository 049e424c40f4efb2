"""Predictive maintenance: battery and storage dates with their bands, and the due list."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper.services.monitoring import forecast
from fleetkeeper.services.monitoring.forecast import (
    DAY,
    BatteryForecast,
    CapacityProxy,
    Discharge,
    Due,
    Forecast,
    ForecastStatus,
    Maintenance,
    StorageForecast,
    battery_forecast,
    discharges,
    due_within,
    storage_forecast,
    t_quantile,
)
from fleetkeeper.sim import physics
from fleetkeeper.sim.catalogue import MODELS_BY_NAME, SITES

T0 = 1_750_000_000.0  # a June morning in 2025
HOUR = 3600.0
NEW = 40_000.0  # seconds per percent a new battery lasts in these histories (0.09 %/h)
FIRST_NIGHT = T0 + 18 * HOUR  # the middle of the first discharge of `nightly`

History = list[tuple[float, float]]


def nightly(
    days: int, *, fade: float, capacity: float = 0.95, noise: float = 0.0, seed: int = 0
) -> History:
    """A solar unit: full from 00:00 to 12:00, then a discharge read hourly until 23:00.

    The capacity falls by `fade` (of the design capacity) a day, counted from the middle of the
    first discharge; `noise` scatters each night's measure of it (a standard deviation, in the
    same units). Keep the capacity well above the noise: this battery cannot run out."""
    rng = random.Random(seed)
    points: History = []
    for day in range(days):
        base = T0 + day * DAY
        points += [(base + h * HOUR, 100.0) for h in range(13)]
        middle = base + 18 * HOUR
        left = capacity - fade * (middle - FIRST_NIGHT) / DAY + rng.gauss(0.0, noise)
        points += [(base + (12 + k) * HOUR, 100.0 - k * HOUR / (NEW * left)) for k in range(1, 12)]
    return points


def relative_truth(fade: float, capacity: float = 0.95, threshold: float = 60.0) -> float:
    """When the capacity falls to `threshold` % of what it was at the first discharge."""
    return FIRST_NIGHT + (1 - threshold / 100) * capacity / fade * DAY


def walk(
    days: float, *, per_day: float, noise: float, start: float = 30.0, seed: int = 0
) -> tuple[History, float | None]:
    """Storage filling as a random walk read hourly for `days`, and when the walk, carried on
    for up to ten years, first reaches 95 %."""
    rng = random.Random(seed)
    level, t, points, full = start, T0, [(T0, start)], None
    while full is None and t < T0 + 3650 * DAY:
        t += HOUR
        level += per_day / 24 + rng.gauss(0.0, noise / 24**0.5)
        if t <= T0 + days * DAY:
            points.append((t, level))
        if level >= 95.0:
            full = t
    return points, full


def band(f: BatteryForecast) -> tuple[float, float, float]:
    assert f.replace_earliest is not None and f.replace_at is not None
    assert f.replace_latest is not None
    return f.replace_earliest, f.replace_at, f.replace_latest


def full_band(f: StorageForecast) -> tuple[float, float, float]:
    assert f.full_earliest is not None and f.full_at is not None and f.full_latest is not None
    return f.full_earliest, f.full_at, f.full_latest


# --- discharges --------------------------------------------------------------------------------


def test_a_discharge_runs_from_its_first_reading_below_full_to_its_first_at_the_bottom() -> None:
    readings = [(0.0, 100.0), (10.0, 100.0), (20.0, 99.0), (30.0, 98.0), (40.0, 97.0)]
    readings += [(50.0, 97.0), (60.0, 99.0)]
    (run,) = discharges(readings)
    assert run == Discharge(20.0, 40.0, 99.0, 97.0, peak=100.0, peak_at=0.0)
    assert run.seconds_per_percent == 10.0 and run.middle == 30.0


def test_a_rise_ends_a_discharge() -> None:
    readings = [(0.0, 100.0), (10.0, 99.0), (20.0, 98.0), (30.0, 98.5), (40.0, 97.0)]
    # The second run is a single falling reading: no time to measure a rate in.
    assert [(r.start, r.end) for r in discharges(readings)] == [(10.0, 20.0)]


def test_a_long_silence_ends_a_discharge() -> None:
    readings = [(t * 10.0, 100.0 - t) for t in range(6)]
    readings += [(1000.0 + t * 10.0, 90.0 - t) for t in range(6)]
    assert [(r.start, r.end) for r in discharges(readings)] == [(10.0, 50.0), (1010.0, 1050.0)]


def test_runs_too_small_for_the_gauge_to_measure_are_skipped() -> None:
    readings = [(0.0, 100.0), (10.0, 99.99), (20.0, 99.98), (30.0, 100.0), (40.0, 99.0)]
    readings += [(50.0, 98.0)]
    assert [(r.start, r.end) for r in discharges(readings, min_drop=0.1)] == [(40.0, 50.0)]


# --- battery: the forecast ---------------------------------------------------------------------


def test_a_fading_battery_gets_a_replacement_date_with_a_band() -> None:
    f = battery_forecast(nightly(30, fade=0.01, noise=0.01))
    assert f.status is ForecastStatus.OK
    earliest, at, latest = band(f)
    assert earliest < at < latest and latest - earliest < 10 * DAY
    assert abs(at - relative_truth(0.01)) < 2 * DAY
    assert f.points_used == 30 and f.r2 is not None and f.r2 > 0.9
    assert f.reason.startswith("battery health") and "between" in f.reason


def test_without_a_rated_drain_health_is_relative_to_the_first_discharge() -> None:
    f = battery_forecast(nightly(30, fade=0.01, capacity=0.9))
    assert f.relative
    assert f.health_percent == pytest.approx(100 * (0.9 - 0.29) / 0.9, abs=0.01)
    assert f.fade_per_day == pytest.approx(100 * 0.01 / 0.9, rel=1e-6)


def test_with_a_rated_drain_health_is_a_share_of_a_new_battery() -> None:
    f = battery_forecast(nightly(30, fade=0.01, capacity=0.9), rated_drain_per_hour=0.09)
    assert not f.relative
    assert f.health_percent == pytest.approx(100 * (0.9 - 0.29), abs=0.01)
    assert f.fade_per_day == pytest.approx(1.0, rel=1e-6)
    assert f.replace_at == pytest.approx(FIRST_NIGHT + 30 * DAY, abs=60)  # 90 % → 60 %


def test_the_peak_proxy_reads_the_fade_from_how_high_each_charge_gets() -> None:
    rng = random.Random(3)
    readings: History = [(T0, 70.0), (T0 + HOUR, 69.0)]  # opens mid-discharge: no peak seen
    for day in range(1, 30):
        base, peak = T0 + day * DAY, 95.0 - 0.8 * day + rng.gauss(0, 0.5)
        readings += [(base, peak), (base + 6 * HOUR, peak - 3), (base + 12 * HOUR, peak - 6)]
    f = battery_forecast(readings, proxy=CapacityProxy.PEAK)
    assert f.status is ForecastStatus.OK and not f.relative and f.points_used == 29
    assert f.fade_per_day == pytest.approx(0.8, abs=0.05)
    truth = T0 + 35 / 0.8 * DAY + 6 * HOUR  # 95 - 0.8·day = 60, at each discharge's start
    assert f.replace_at == pytest.approx(truth, abs=DAY)


def test_a_short_history_is_too_short_to_say() -> None:
    f = battery_forecast(nightly(3, fade=0.05))
    assert f.status is ForecastStatus.TOO_SHORT
    assert (f.replace_at, f.replace_earliest, f.replace_latest, f.health_percent) == (None,) * 4
    assert f.reason == "3 measurable discharges, need 5"


def test_a_steady_battery_is_flat_rather_than_given_a_date() -> None:
    f = battery_forecast(nightly(30, fade=0.0, noise=0.01, seed=2))
    assert f.status is ForecastStatus.FLAT
    assert f.replace_at is None and f.health_percent == pytest.approx(100, abs=2)
    assert f.reason.startswith("no fade beyond noise")


def test_a_scattered_history_is_noisy_rather_than_given_a_date() -> None:
    f = battery_forecast(nightly(8, fade=0.002, noise=0.3))
    assert f.status is ForecastStatus.NOISY
    assert f.replace_at is None and f.fade_per_day is not None
    assert f.reason.startswith("too noisy to tell")


def test_a_battery_that_does_not_fade_is_seldom_given_a_date() -> None:
    # A 90 % band is a 5 % one-sided test: about one steady unit in twenty looks like fading.
    trials = 400
    dated = sum(
        battery_forecast(nightly(days, fade=0.0, noise=0.1, seed=seed)).replace_at is not None
        for seed in range(trials // 2)
        for days in (8, 30)
    )
    print(f"battery: steady units given a date in {dated}/{trials} = {dated / trials:.1%}")
    assert dated / trials <= 0.08


def test_a_battery_already_below_the_threshold_without_a_trend_has_reached_it() -> None:
    readings: History = []
    for day in range(10):
        base = T0 + day * DAY
        readings += [(base, 55.0), (base + HOUR, 54.0), (base + 2 * HOUR, 53.0)]
    f = battery_forecast(readings, proxy=CapacityProxy.PEAK)
    assert f.status is ForecastStatus.REACHED
    assert band(f) == (T0 + 9 * DAY + HOUR,) * 3


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        battery_forecast([], threshold=0)
    with pytest.raises(ValueError, match="confidence"):
        storage_forecast([], confidence=1.0)
    with pytest.raises(ValueError, match="at least 3"):
        battery_forecast([], min_cycles=2)
    with pytest.raises(ValueError, match="rated drain"):
        battery_forecast([], rated_drain_per_hour=0)


def test_the_true_replacement_date_falls_in_the_band_nine_times_in_ten() -> None:
    hits, trials = 0, 200
    for seed in range(trials):
        rng = random.Random(seed)
        fade, capacity = rng.uniform(0.003, 0.01), rng.uniform(0.85, 1.0)
        f = battery_forecast(nightly(30, fade=fade, capacity=capacity, noise=0.03, seed=seed))
        earliest, _, latest = band(f)
        hits += earliest <= relative_truth(fade, capacity) <= latest
    print(f"battery: true date inside the 90 % band in {hits}/{trials} = {hits / trials:.1%}")
    assert 0.85 <= hits / trials <= 0.96  # near 90 %: neither overconfident nor vague


# --- battery: on the simulator's physics -------------------------------------------------------


def simulated(
    model: str, seed: int, *, days: float, step: float, fade: float
) -> tuple[History, list[float]]:
    """A simulated unit's battery readings every `step` seconds, and its capacity at each."""
    rng, spec, site = random.Random(seed), MODELS_BY_NAME[model], SITES[seed % len(SITES)]
    state = physics.new_physics(rng, spec)
    state.fade_per_day = fade
    readings: History = []
    capacity: list[float] = []
    t = 0.0
    while t < days * DAY:
        t += step
        physics.advance(state, rng, spec, site, step, t)
        readings.append((t, physics.readings(state, rng, spec, site, t)["battery"]))
        capacity.append(state.capacity)
    return readings, capacity


def test_simulated_fading_batteries_are_dated_within_their_bands() -> None:
    inside: dict[str, list[bool]] = {"thermo-v2": [], "tracker-m3": []}
    for model, step, days, seeds in (("thermo-v2", 1800.0, 30, 40), ("tracker-m3", 300.0, 20, 4)):
        for seed in range(seeds):
            fade = random.Random(seed).uniform(0.005, 0.01)
            readings, capacity = simulated(model, seed, days=days, step=step, fade=fade)
            f = battery_forecast(readings)
            assert f.status is ForecastStatus.OK, f.reason
            # The capacity falls linearly: 60 % of what it was at the first discharge is when?
            first = discharges(readings)[0].middle
            truth = first + 0.4 * capacity[int(first // step)] / fade * DAY
            earliest, _, latest = band(f)
            inside[model].append(earliest <= truth <= latest)
    for model, hits in inside.items():
        print(f"simulated {model}: true date inside the 90 % band in {sum(hits)}/{len(hits)}")
    every = [hit for hits in inside.values() for hit in hits]
    assert sum(every) / len(every) >= 0.8


def test_simulated_healthy_batteries_are_not_due() -> None:
    units = [
        (f"{model}-{seed}", battery_forecast(simulated(model, seed, days=30, step=step, fade=0)[0]))
        for model, step in (("thermo-v2", 1800.0), ("tracker-m3", 600.0))
        for seed in range(5)
    ]
    assert due_within(units, now=30 * DAY, days=90) == []


@settings(max_examples=60, deadline=None)
@given(
    fade=st.floats(0.0, 0.015),
    noise=st.floats(0.001, 0.1),
    days=st.integers(5, 40),
    seed=st.integers(0, 10_000),
)
def test_the_band_always_holds_the_fitted_date(
    fade: float, noise: float, days: int, seed: int
) -> None:
    f = battery_forecast(nightly(days, fade=fade, noise=noise, seed=seed))
    dates = (f.replace_earliest, f.replace_at, f.replace_latest)
    if f.status is ForecastStatus.OK:
        earliest, at, latest = band(f)
        assert earliest <= at <= latest
    else:
        assert dates == (None, None, None)


@settings(max_examples=60, deadline=None)
@given(
    slow=st.floats(0.001, 0.015),
    faster=st.floats(0.0001, 0.015),
    noise=st.floats(0.001, 0.05),
    seed=st.integers(0, 10_000),
)
def test_a_faster_fade_never_gives_a_later_date(
    slow: float, faster: float, noise: float, seed: int
) -> None:
    before = battery_forecast(nightly(20, fade=slow, noise=noise, seed=seed))
    after = battery_forecast(nightly(20, fade=slow + faster, noise=noise, seed=seed))
    if before.status is ForecastStatus.OK:
        assert after.status is ForecastStatus.OK
        assert band(after)[1] <= band(before)[1] + 1e-3


# --- storage -----------------------------------------------------------------------------------


def test_filling_storage_gets_a_full_date_with_a_band() -> None:
    readings, full = walk(10, per_day=2.0, noise=0.2, seed=4)
    assert full is not None
    f = storage_forecast(readings)
    assert f.status is ForecastStatus.OK
    earliest, at, latest = full_band(f)
    assert earliest < at < latest and abs(at - full) < 2 * DAY
    assert f.fill_per_day == pytest.approx(2.0, abs=0.3)
    assert f.since == T0 and f.cleanup_levels == () and f.points_used == 24
    assert f.reason.startswith("storage") and "between" in f.reason


def test_a_cleanup_restarts_the_fit() -> None:
    before = [(T0 + h * HOUR, 40.0 + h * 0.5) for h in range(80)]  # 12 points a day, to 79.5
    after = [(T0 + h * HOUR, 50.0 + (h - 80) * 0.05) for h in range(80, 300)]  # 1.2 a day
    f = storage_forecast(before + after)
    assert f.since == T0 + 80 * HOUR and f.cleanup_levels == (79.5,)
    assert f.fill_per_day == pytest.approx(1.2)
    assert f.full_at == pytest.approx(T0 + 80 * HOUR + 45 / 1.2 * DAY)


def test_right_after_a_cleanup_there_is_too_little_to_say() -> None:
    readings = [(T0 + h * HOUR, 40.0 + h) for h in range(50)]
    readings += [(T0 + 50 * HOUR, 20.0), (T0 + 51 * HOUR, 20.5)]
    f = storage_forecast(readings)
    assert f.status is ForecastStatus.TOO_SHORT and f.full_at is None
    assert f.reason.startswith("2 sampled readings since the cleanup on 2025-06-17")
    assert f.reason.endswith(", need 6")


def test_storage_at_the_threshold_has_reached_it_since_it_last_got_there() -> None:
    readings = [(T0, 90.0), (T0 + HOUR, 95.5), (T0 + 2 * HOUR, 94.0), (T0 + 3 * HOUR, 96.0)]
    readings += [(T0 + 4 * HOUR, 97.0)]
    f = storage_forecast(readings)
    assert f.status is ForecastStatus.REACHED
    assert full_band(f) == (T0 + 3 * HOUR,) * 3 and f.used_percent == 97.0


def test_steady_storage_is_flat() -> None:
    rng = random.Random(1)
    f = storage_forecast([(T0 + h * HOUR, 40.0 + rng.uniform(0, 0.01)) for h in range(240)])
    assert f.status is ForecastStatus.FLAT and f.full_at is None


def test_wandering_storage_is_noisy() -> None:
    rng = random.Random(5)
    readings = [(T0 + h * HOUR, 50.0 + rng.uniform(-20, 20)) for h in range(48)]
    f = storage_forecast(readings, cleanup_drop=100.0)
    assert f.status is ForecastStatus.NOISY and f.full_at is None


def test_two_cleanups_from_the_same_level_are_log_rotation() -> None:
    readings: History = []
    for cycle in range(3):
        readings += [(T0 + (cycle * 30 + h) * HOUR, 60.0 + h) for h in range(30)]
    f = storage_forecast(readings)
    assert f.cleanup_levels == (89.0, 89.0) and f.rotates_at == 89.0


def test_cleanups_from_different_levels_are_not_a_rotation() -> None:
    f = replace(storage(0.0, 1.0, 2.0), cleanup_levels=(70.0, 92.0))
    assert f.rotates_at is None
    assert replace(f, cleanup_levels=(92.0,)).rotates_at is None


def test_the_true_full_date_falls_in_the_band_nine_times_in_ten() -> None:
    hits, trials = 0, 200
    for seed in range(trials):
        rng = random.Random(seed)
        per_day, noise = rng.uniform(0.5, 3.0), rng.uniform(0.05, 0.5)
        readings, full = walk(10, per_day=per_day, noise=noise, seed=seed)
        earliest, _, latest = full_band(storage_forecast(readings))
        hits += full is not None and earliest <= full <= latest
    print(f"storage: true date inside the 90 % band in {hits}/{trials} = {hits / trials:.1%}")
    assert 0.85 <= hits / trials <= 0.96


def test_simulated_storage_that_never_rotates_is_dated_within_its_band() -> None:
    hits, trials, spec, step = 0, 100, MODELS_BY_NAME["meter-e5"], 2 * HOUR
    for seed in range(trials):
        rng = random.Random(seed)
        state = physics.new_physics(rng, spec)
        state.rotates = False
        t, readings, full = 0.0, [], None
        while full is None:
            t += step
            physics.advance(state, rng, spec, SITES[0], step, t)
            used = physics.readings(state, rng, spec, SITES[0], t)["storage_used"]
            readings += [(t, used)] if t <= 15 * DAY else []
            full = t if used >= 95.0 else None
        f = storage_forecast(readings)
        earliest, _, latest = full_band(f)
        hits += earliest <= full <= latest
    print(f"simulated meter-e5 storage: true date inside the band in {hits}/{trials}")
    assert hits / trials >= 0.8


def test_simulated_log_rotation_is_recognised() -> None:
    rng, spec = random.Random(7), MODELS_BY_NAME["gateway-x1"]
    state = physics.new_physics(rng, spec)
    state.rotates, state.storage = True, 40.0
    readings: History = []
    for hour in range(1, 60 * 24):
        physics.advance(state, rng, spec, SITES[0], HOUR, hour * HOUR)
        readings.append(
            (hour * HOUR, physics.readings(state, rng, spec, SITES[0], hour * HOUR)["storage_used"])
        )
    f = storage_forecast(readings)
    assert len(f.cleanup_levels) >= 2
    assert f.rotates_at is not None and 90.0 < f.rotates_at < physics.ROTATE_AT


@settings(max_examples=60, deadline=None)
@given(per_day=st.floats(-1.0, 5.0), noise=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_the_storage_band_always_holds_the_fitted_date(
    per_day: float, noise: float, seed: int
) -> None:
    rng = random.Random(seed)
    level, readings = 30.0, []
    for h in range(200):
        level += per_day / 24 + rng.gauss(0, noise / 5)
        readings.append((T0 + h * HOUR, level))
    f = storage_forecast(readings, cleanup_drop=1000.0)
    if f.status in (ForecastStatus.OK, ForecastStatus.REACHED):
        earliest, at, latest = full_band(f)
        assert earliest <= at <= latest
    else:
        assert (f.full_earliest, f.full_at, f.full_latest) == (None, None, None)


@settings(max_examples=60, deadline=None)
@given(
    slow=st.floats(0.1, 3.0),
    faster=st.floats(0.01, 3.0),
    noise=st.floats(0.0, 0.5),
    seed=st.integers(0, 10_000),
)
def test_faster_filling_never_gives_a_later_date(
    slow: float, faster: float, noise: float, seed: int
) -> None:
    def dated(per_day: float) -> StorageForecast:
        rng = random.Random(seed)
        level, readings = 30.0, []
        for h in range(120):
            level += per_day / 24 + rng.gauss(0, noise / 5)
            readings.append((T0 + h * HOUR, level))
        return storage_forecast(readings, cleanup_drop=1000.0)

    before, after = dated(slow), dated(slow + faster)
    if before.status is ForecastStatus.OK:
        assert after.status in (ForecastStatus.OK, ForecastStatus.REACHED)
        assert full_band(after)[1] <= full_band(before)[1] + 1e-3


# --- the due list ------------------------------------------------------------------------------


def battery(earliest: float, at: float, latest: float) -> BatteryForecast:
    return BatteryForecast(
        ForecastStatus.OK,
        f"battery fades (t={at})",
        60.0,
        0.9,
        10,
        replace_at=at,
        replace_earliest=earliest,
        replace_latest=latest,
    )


def storage(earliest: float, at: float, latest: float) -> StorageForecast:
    return StorageForecast(
        ForecastStatus.OK,
        f"storage fills (t={at})",
        95.0,
        0.9,
        10,
        full_at=at,
        full_earliest=earliest,
        full_latest=latest,
    )


def days(n: float) -> float:
    return T0 + n * DAY


def test_units_due_within_the_window_are_listed_most_urgent_first() -> None:
    units: list[tuple[str, Forecast]] = [
        ("a", battery(days(20), days(25), days(40))),
        ("b", storage(days(3), days(4), days(5))),
        ("c", battery(days(40), days(50), days(60))),
    ]
    assert due_within(units, now=T0, days=30) == [
        Due("b", Maintenance.FREE_STORAGE, days(3), days(4), days(5), units[1][1].reason),
        Due("a", Maintenance.REPLACE_BATTERY, days(20), days(25), days(40), units[0][1].reason),
    ]


def test_the_earliest_date_of_the_band_decides_not_the_fitted_one() -> None:
    units = [("a", battery(days(25), days(45), days(80)))]
    assert [d.device for d in due_within(units, now=T0, days=30)] == ["a"]


def test_overdue_units_are_listed_first() -> None:
    units: list[tuple[str, Forecast]] = [
        ("late", storage(days(-4), days(-2), days(1))),
        ("soon", battery(days(1), days(2), days(3))),
    ]
    assert [d.device for d in due_within(units, now=T0, days=7)] == ["late", "soon"]


def test_forecasts_without_a_date_are_not_due() -> None:
    flat = BatteryForecast(ForecastStatus.FLAT, "no fade", 60.0, 0.9, 30, health_percent=97.0)
    short = StorageForecast(ForecastStatus.TOO_SHORT, "2 steps", 95.0, 0.9, 2)
    assert due_within([("a", flat), ("b", short)], now=T0, days=365) == []


def test_a_unit_that_rotates_its_logs_is_not_due_to_free_storage() -> None:
    rotating = replace(storage(days(1), days(2), days(3)), cleanup_levels=(92.0, 91.5))
    full = replace(rotating, status=ForecastStatus.REACHED)
    assert due_within([("a", rotating)], now=T0, days=30) == []
    assert [d.device for d in due_within([("a", full)], now=T0, days=30)] == ["a"]


def test_a_unit_can_be_due_for_both() -> None:
    units: list[tuple[str, Forecast]] = [
        ("a", battery(days(2), days(3), days(4))),
        ("a", storage(days(1), days(2), days(3))),
    ]
    found = due_within(units, now=T0, days=7)
    assert [d.maintenance for d in found] == [Maintenance.FREE_STORAGE, Maintenance.REPLACE_BATTERY]


# --- helpers -----------------------------------------------------------------------------------


def test_t_quantiles_match_the_tables() -> None:
    assert t_quantile(0.9, 10) == pytest.approx(1.812, abs=1e-3)
    assert t_quantile(0.95, 3) == pytest.approx(3.182, abs=1e-3)
    assert t_quantile(0.9, 1) == pytest.approx(6.314, abs=1e-3)


def test_the_public_surface_is_pinned() -> None:
    assert sorted(forecast.__all__) == sorted(
        [
            "DAY",
            "BatteryForecast",
            "CapacityProxy",
            "Discharge",
            "Due",
            "Forecast",
            "ForecastStatus",
            "History",
            "Maintenance",
            "StorageForecast",
            "battery_forecast",
            "discharges",
            "due_within",
            "storage_forecast",
            "t_quantile",
        ]
    )
