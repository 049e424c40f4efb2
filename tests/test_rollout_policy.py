"""The rollout policy: safe defaults, the short forms, and what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fleetkeeper.services.rollout.policy import (
    AbortCriterion,
    PhaseSpec,
    RolloutPolicy,
    parse_duration,
)


def policy(**fields: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate(fields)


def refused(match: str, **fields: Any) -> None:
    with pytest.raises(ValidationError, match=match):
        policy(**fields)


# --- defaults ----------------------------------------------------------------------------------


def test_the_defaults_are_the_documented_safe_ones() -> None:
    p = policy()
    assert [phase.percent for phase in p.phases] == [10, 50, 100]
    assert (p.success_threshold, p.soak, p.error_threshold, p.min_executed) == (90, 0, 10, 1)
    assert (p.on_error, p.rollback_on_abort, p.abort_criteria) == ("pause", False, [])
    rate = p.rate
    assert (rate.base_per_minute, rate.increment_factor) == (10, 2)
    assert (rate.increase_after_notified, rate.increase_after_succeeded) == (None, 10)
    assert (rate.max_per_minute, rate.max_in_progress) == (1000, 100)
    t = p.timeouts
    assert (t.notified, t.download, t.install, t.reboot, t.verify) == (86400, 1800, 1800, 600, 600)
    assert [(r.on, r.limit) for r in p.retries] == [
        ("download_failed", 3),
        ("timed_out", 1),
        ("precondition", 12),
    ]
    assert (p.jitter, p.expected_duration) == (60, 900)
    assert p.health_watch.enabled and p.health_watch.min_devices == 20
    assert p.preconditions.min_battery == 20 and p.preconditions.not_busy


def test_each_policy_gets_its_own_default_lists() -> None:
    first, second = policy(), policy()
    first.phases.append(PhaseSpec(count=5))
    assert len(second.phases) == 3


# --- phases ------------------------------------------------------------------------------------


def test_a_bare_number_is_a_percent_phase() -> None:
    assert policy(phases=[25, 100]).phases[0] == PhaseSpec(percent=25)


def test_a_phase_may_be_a_count_with_its_own_threshold_and_soak() -> None:
    phase = policy(phases=[{"count": 5, "success_threshold": 100, "soak": "1h"}]).phases[0]
    assert (phase.count, phase.percent, phase.success_threshold, phase.soak) == (5, None, 100, 3600)


@pytest.mark.parametrize("phase", [{}, {"percent": 10, "count": 5}])
def test_a_phase_is_either_a_percent_or_a_count(phase: dict[str, Any]) -> None:
    refused("either a percent or a count", phases=[phase])


@pytest.mark.parametrize("phases", [[50, 10], [10, 10], [0, 100]])
def test_percent_phases_must_increase(phases: list[float]) -> None:
    refused("percentages must increase", phases=phases)


def test_count_phases_must_increase() -> None:
    refused("counts must increase", phases=[{"count": 10}, {"count": 10}])


def test_counts_and_percentages_may_be_mixed() -> None:
    assert len(policy(phases=[{"count": 50}, 10, {"count": 100}, 100]).phases) == 4


@pytest.mark.parametrize("phases", [[], [101], [True], [-5]])
def test_impossible_phase_lists_are_refused(phases: list[Any]) -> None:
    with pytest.raises(ValidationError):
        policy(phases=phases)


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1.5h", 5400), (45, 45)],
)
def test_durations_read_seconds_or_a_unit(text: str | int, seconds: float) -> None:
    assert policy(soak=text).soak == seconds


@pytest.mark.parametrize("text", ["soon", "-5", "5 min", "1e3", "inf", ""])
def test_a_duration_that_is_not_one_is_refused(text: str) -> None:
    refused("not a duration", soak=text)


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_duration(value: bool) -> None:
    refused("not a duration", jitter=value)


def test_durations_stop_at_a_year() -> None:
    refused("less than or equal", soak="367d")
    refused("greater than or equal", soak=-1)


def test_parse_duration_leaves_numbers_to_the_model() -> None:
    assert parse_duration(12.5) == 12.5
    assert parse_duration(None) is None


@given(amount=st.integers(0, 300), unit=st.sampled_from(["", "s", "m", "h", "d"]))
def test_a_duration_in_a_unit_is_that_many_seconds(amount: int, unit: str) -> None:
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{amount}{unit}") == amount * factor


# --- rate, criteria, schedule ------------------------------------------------------------------


def test_the_maximum_rate_cannot_be_below_the_base() -> None:
    refused("below base_per_minute", rate={"base_per_minute": 50, "max_per_minute": 20})


def test_the_error_threshold_is_the_first_criterion() -> None:
    p = policy(
        error_threshold=5,
        min_executed=3,
        abort_criteria=[{"failure": "download_failed", "threshold": 20}],
    )
    assert p.criteria() == [
        AbortCriterion(failure="any", threshold=5, min_executed=3),
        AbortCriterion(failure="download_failed", threshold=20, min_executed=1),
    ]


def test_a_schedule_must_end_after_it_starts() -> None:
    refused(
        "not after start_at",
        schedule={"start_at": "2026-01-02T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"},
    )


def test_schedule_times_without_an_offset_are_utc() -> None:
    schedule = policy(schedule={"start_at": "2026-01-01T02:00:00"}).schedule
    assert schedule.start_at == datetime(2026, 1, 1, 2, 0, tzinfo=UTC)


def test_a_naive_start_and_an_aware_end_compare() -> None:
    # Before the fix this raised a bare TypeError instead of validating.
    schedule = policy(
        schedule={"start_at": "2026-01-01T00:00:00", "end_at": "2026-01-01T06:00:00+02:00"}
    ).schedule
    assert schedule.end_at is not None and schedule.start_at is not None
    assert schedule.end_at > schedule.start_at


def test_a_window_shorter_than_one_device_could_never_finish() -> None:
    refused(
        "never finish",
        schedule={"windows": [{"cron": "0 2 * * *", "duration": "10m"}]},
    )
    ok = policy(
        schedule={"windows": [{"cron": "0 2 * * *", "duration": "10m"}]}, expected_duration=300
    )
    assert ok.schedule.windows[0].duration == 600


@pytest.mark.parametrize(
    "fields",
    [
        {"phase": [10]},
        {"rate": {"base": 10}},
        {"schedule": {"windows": [{"cron": "0 2 * * *", "duration": 3600, "tz": "UTC"}]}},
        {"retries": [{"on": "sometimes", "limit": 1}]},
        {"on_error": "panic"},
    ],
)
def test_unknown_or_misspelt_settings_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        policy(**fields)


# --- storage -----------------------------------------------------------------------------------

EXAMPLES = [
    {},
    {
        "phases": [10, 50, 100],
        "error_threshold": 10,
        "on_error": "pause",
        "rollback_on_abort": True,
    },
    {
        "phases": [{"count": 5, "soak": "30m"}, 25, {"percent": 100, "success_threshold": 95}],
        "soak": "1h",
        "abort_criteria": [{"failure": "signature_invalid", "threshold": 0}],
        "rate": {"base_per_minute": 2.5, "increase_after_notified": 20, "max_per_minute": 100},
        "retries": [{"on": "all", "limit": 2, "backoff": "5m"}],
        "schedule": {
            "start_at": "2026-05-01T22:00:00+02:00",
            "end_at": "2026-05-08T06:00:00",
            "windows": [{"cron": "0 1 * * 1-5", "duration": "4h", "timezone": "Europe/Berlin"}],
            "window_attribute": "maintenance",
        },
        "health_watch": {"metrics": ["cpu_temp"], "confidence": 0.95},
    },
]


@pytest.mark.parametrize("data", EXAMPLES)
def test_the_stored_form_reads_back_the_same(data: dict[str, Any]) -> None:
    original = policy(**data)
    stored = original.model_dump(mode="json")
    assert RolloutPolicy.model_validate(stored) == original
    assert RolloutPolicy.model_validate(stored).model_dump(mode="json") == stored
