"""The rollout planner: phases, schedule, error criteria, health, pacing; pure, in fake time."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper.services.rollout.health import Verdict
from fleetkeeper.services.rollout.planner import (
    ABORTED,
    CANCELED,
    FINISHED,
    PAUSED,
    RUNNING,
    SCHEDULED,
    STOPPED,
    PhaseCounts,
    Plan,
    RolloutState,
    Snapshot,
    eta,
    jitter_offsets,
    phase_sizes,
    plan,
    retry_delay,
)
from fleetkeeper.services.rollout.policy import RolloutPolicy

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ACTIVE = ("notified", "downloading", "downloaded", "installing", "rebooting", "verifying")
# A deployment that has been running a while: its first tick is behind it.
TICKING = RolloutState(phase_started_at=T0, last_tick_at=T0, rate=10)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def policy(**fields: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate(fields)


def phase(
    size: int | None = None,
    *,
    ready: int = 0,
    failures: dict[str, int] | None = None,
    **states: int,
) -> PhaseCounts:
    """One phase's counts; its size is the sum of the states unless given."""
    total = sum(states.values()) if size is None else size
    return PhaseCounts(size=total, states=states, failures=failures or {}, ready=ready)


def snap(
    pol: RolloutPolicy,
    *phases: PhaseCounts,
    rollout: RolloutState = TICKING,
    notified: int | None = None,
    in_progress: int | None = None,
    **more: Any,
) -> Snapshot:
    """A snapshot whose totals follow from its phases unless given."""
    succeeded = sum(p.states.get("succeeded", 0) for p in phases)
    working = sum(p.states.get(s, 0) for p in phases for s in ACTIVE)
    done = sum(n for p in phases for s, n in p.states.items() if s != "queued")
    return Snapshot(
        policy=pol,
        rollout=rollout,
        phases=phases,
        notified_total=done if notified is None else notified,
        succeeded_total=succeeded,
        in_progress=working if in_progress is None else in_progress,
        **more,
    )


def kinds(result: Plan) -> list[str]:
    return [event.kind for event in result.events]


# --- phase sizes -------------------------------------------------------------------------------


def test_default_phases_are_ten_fifty_and_all_percent() -> None:
    assert phase_sizes(policy(), 1000) == [100, 500, 1000]


def test_a_percent_phase_rounds_up() -> None:
    assert phase_sizes(policy(phases=[10, 100]), 15) == [2, 15]


def test_a_percent_phase_takes_at_least_one_device() -> None:
    assert phase_sizes(policy(phases=[1, 100]), 10) == [1, 10]


def test_percentages_are_decimal_not_binary_fractions() -> None:
    # 14.3 / 100 * 1000 is 143.00000000000003 in floating point.
    assert phase_sizes(policy(phases=[14.3, 100]), 1000) == [143, 1000]


def test_a_count_phase_is_capped_at_the_target() -> None:
    assert phase_sizes(policy(phases=[{"count": 5}, {"count": 50}, 100]), 20) == [5, 20, 20]


def test_the_last_phase_always_covers_the_whole_target() -> None:
    assert phase_sizes(policy(phases=[10, 50]), 100) == [10, 100]
    assert phase_sizes(policy(phases=[{"count": 3}]), 100) == [100]


def test_a_mixed_list_never_goes_down() -> None:
    assert phase_sizes(policy(phases=[{"count": 50}, 10, 100]), 100) == [50, 50, 100]


def test_a_tiny_fleet_repeats_boundaries() -> None:
    assert phase_sizes(policy(), 2) == [1, 1, 2]
    assert phase_sizes(policy(), 0) == [0, 0, 0]


def test_a_negative_target_is_refused() -> None:
    with pytest.raises(ValueError):
        phase_sizes(policy(), -1)


phase_specs = st.one_of(
    st.decimals(min_value="0.1", max_value=100, places=1).map(float),
    st.integers(1, 5000).map(lambda n: {"count": n}),
)


def _increasing(specs: list[Any]) -> list[Any]:
    """Keep the percentages and the counts each strictly increasing, as the policy demands."""
    out: list[Any] = []
    top_percent, top_count = 0.0, 0
    for spec in specs:
        if isinstance(spec, dict) and spec["count"] > top_count:
            top_count = spec["count"]
            out.append(spec)
        elif isinstance(spec, float) and spec > top_percent:
            top_percent = spec
            out.append(spec)
    return out or [100]


@given(
    specs=st.lists(phase_specs, min_size=1, max_size=8).map(_increasing),
    total=st.integers(0, 10**6),
)
def test_phase_sizes_are_cumulative_bounded_and_end_at_the_target(
    specs: list[Any], total: int
) -> None:
    pol = policy(phases=specs)
    sizes = phase_sizes(pol, total)
    assert len(sizes) == len(specs)
    assert sizes[-1] == total
    assert sizes == sorted(sizes)
    assert all(min(1, total) <= size <= total for size in sizes)
    for spec, size in zip(specs[:-1], sizes[:-1], strict=True):
        wanted = (
            spec["count"]
            if isinstance(spec, dict)
            else math.ceil(Fraction(str(spec)) * total / 100)
        )
        assert size >= min(wanted, total)


# --- schedule ----------------------------------------------------------------------------------

WAITING = RolloutState(state=SCHEDULED, phase_started_at=T0)


def test_a_scheduled_deployment_waits_for_its_start() -> None:
    pol = policy(phases=[100], schedule={"start_at": at(3600).isoformat()})
    result = plan(snap(pol, phase(10, queued=10, ready=10), rollout=WAITING), at(60))
    assert result.rollout == WAITING
    assert result.notify == 0
    assert result.next_tick_at == at(3600)


def test_a_scheduled_deployment_starts_at_its_start_time() -> None:
    pol = policy(phases=[100], schedule={"start_at": at(3600).isoformat()})
    result = plan(snap(pol, phase(10, queued=10, ready=10), rollout=WAITING), at(3600))
    assert result.rollout.state == RUNNING
    assert result.rollout.phase_started_at == at(3600)
    assert kinds(result) == ["started"]
    assert result.notify == 1


def test_the_end_of_the_schedule_stops_a_deployment() -> None:
    pol = policy(phases=[100], schedule={"end_at": at(600).isoformat()})
    result = plan(snap(pol, phase(10, queued=5, succeeded=5, ready=5)), at(600))
    assert result.rollout.state == STOPPED
    assert "schedule ended" in (result.rollout.reason or "")
    assert kinds(result) == ["stopped"]
    assert result.notify == 0 and not result.cancel_queued
    assert result.next_tick_at is None


def test_the_end_of_the_schedule_cancels_when_asked() -> None:
    pol = policy(phases=[100], schedule={"end_at": at(600).isoformat(), "end_behaviour": "cancel"})
    result = plan(snap(pol, phase(10, queued=10, ready=10)), at(601))
    assert result.rollout.state == CANCELED
    assert result.cancel_queued and not result.rollback
    assert kinds(result) == ["canceled"]


def test_a_schedule_that_ended_before_the_start_was_seen_stops_at_once() -> None:
    pol = policy(
        phases=[100], schedule={"start_at": at(60).isoformat(), "end_at": at(120).isoformat()}
    )
    result = plan(snap(pol, phase(10, queued=10, ready=10), rollout=WAITING), at(500))
    assert result.rollout.state == STOPPED
    assert result.notify == 0


def test_a_running_deployment_looks_again_by_its_end() -> None:
    pol = policy(phases=[100], schedule={"end_at": at(600).isoformat()})
    result = plan(snap(pol, phase(10, queued=10)), at(30))
    assert result.next_tick_at is not None and result.next_tick_at <= at(600)


# --- paused and final --------------------------------------------------------------------------


@pytest.mark.parametrize("state", [PAUSED, STOPPED, ABORTED, CANCELED, FINISHED])
def test_a_paused_or_final_deployment_does_nothing(state: str) -> None:
    rollout = replace(TICKING, state=state, reason="why")
    counts = phase(10, queued=10, ready=10)
    result = plan(snap(policy(phases=[100]), counts, rollout=rollout), at(60))
    assert result == Plan(rollout=rollout)


def test_an_unknown_state_is_refused() -> None:
    with pytest.raises(ValueError, match="sleeping"):
        rollout = replace(TICKING, state="sleeping")
        plan(snap(policy(phases=[100]), phase(1, queued=1), rollout=rollout), T0)


def test_counts_for_another_number_of_phases_are_refused() -> None:
    with pytest.raises(ValueError, match="phase counts"):
        plan(snap(policy(), phase(1, queued=1)), T0)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        plan(snap(policy(phases=[100]), phase(1, queued=1)), datetime(2026, 1, 1))


# --- error criteria ----------------------------------------------------------------------------


def test_more_failures_than_the_error_threshold_pause() -> None:
    pol = policy(phases=[10, 100])
    counts = phase(10, succeeded=7, failed=2, downloading=1)
    result = plan(snap(pol, counts, phase(90, queued=90)), at(5))
    assert result.rollout.state == PAUSED
    assert result.notify == 0
    assert result.rollout.reason == (
        "phase 1: 2 of 9 executed devices failed (22.2 % > 10 %, error_threshold)"
    )
    (event,) = result.events
    assert event.kind == "paused"
    assert event.detail["criterion"] == "error_threshold"
    assert (event.detail["failing"], event.detail["executed"], event.detail["phase"]) == (2, 9, 0)


def test_failures_exactly_at_the_threshold_do_not_trip() -> None:
    counts = phase(20, succeeded=18, failed=2)  # 10 %, and the threshold is "more than"
    result = plan(snap(policy(phases=[100]), counts), at(5))
    assert result.rollout.state != PAUSED


def test_a_threshold_of_zero_trips_on_the_first_failure() -> None:
    counts = phase(100, succeeded=99, failed=1)
    assert (
        plan(snap(policy(phases=[100], error_threshold=0), counts), at(5)).rollout.state == PAUSED
    )


def test_criteria_wait_for_min_executed_devices() -> None:
    pol = policy(phases=[100], min_executed=5)
    waiting = plan(snap(pol, phase(10, failed=4, installing=6)), at(5))
    assert waiting.rollout.state == RUNNING
    tripped = plan(snap(pol, phase(10, failed=4, succeeded=1, installing=5)), at(5))
    assert tripped.rollout.state == PAUSED


def test_timeouts_and_rollbacks_are_failures_but_cancellations_are_not_executed() -> None:
    counts = phase(40, succeeded=18, timed_out=1, rolled_back=1, canceled=20)
    result = plan(snap(policy(phases=[100], error_threshold=9), counts), at(5))
    assert result.rollout.state == PAUSED
    assert result.events[0].detail["executed"] == 20


def test_abort_cancels_the_rest_and_rolls_back_when_the_policy_says_so() -> None:
    pol = policy(phases=[100], on_error="abort", rollback_on_abort=True)
    result = plan(snap(pol, phase(10, succeeded=1, failed=1, queued=8, ready=8)), at(5))
    assert result.rollout.state == ABORTED
    assert result.cancel_queued and result.rollback
    assert result.notify == 0
    assert kinds(result) == ["aborted"]
    assert result.next_tick_at is None


def test_abort_without_rollback_leaves_updated_devices_alone() -> None:
    pol = policy(phases=[100], on_error="abort")
    result = plan(snap(pol, phase(10, succeeded=1, failed=1, queued=8)), at(5))
    assert result.cancel_queued and not result.rollback


def test_an_abort_criterion_counts_only_its_own_failures() -> None:
    pol = policy(
        phases=[100],
        error_threshold=50,
        abort_criteria=[{"failure": "download_failed", "threshold": 5}],
        on_error="abort",
    )
    other = phase(succeeded=18, failed=2, queued=10, failures={"failed": 2, "update_failed": 2})
    assert plan(snap(pol, other), at(5)).rollout.state == RUNNING
    downloads = phase(succeeded=18, failed=2, queued=10, failures={"download_failed": 2})
    result = plan(snap(pol, downloads), at(5))
    assert result.rollout.state == ABORTED
    assert result.events[0].detail["criterion"] == "abort_criteria[0]"
    assert "with download_failed" in (result.rollout.reason or "")


def test_an_earlier_phase_whose_last_devices_fail_late_still_trips() -> None:
    pol = policy(phases=[10, 100])
    rollout = replace(TICKING, phase=1)
    late = phase(10, succeeded=8, failed=2)  # 20 % after the next phase started
    result = plan(snap(pol, late, phase(90, queued=90, ready=90), rollout=rollout), at(5))
    assert result.rollout.state == PAUSED
    assert result.events[0].detail["phase"] == 0


# --- health ------------------------------------------------------------------------------------


def test_a_worse_health_verdict_pauses_with_its_findings() -> None:
    verdict = Verdict(worse=True, findings=("offline 30.0 % of 40 updated vs 5.0 % of 200",))
    counts = (phase(10, succeeded=10), phase(40, queued=40), phase(50, queued=50))
    result = plan(snap(policy(), *counts, health=verdict), at(5))
    assert result.rollout.state == PAUSED
    assert result.rollout.reason == "health watch: offline 30.0 % of 40 updated vs 5.0 % of 200"
    assert kinds(result) == ["health_watch"]
    assert result.events[0].detail["findings"] == list(verdict.findings)


def test_a_verdict_that_is_not_worse_changes_nothing() -> None:
    verdict = Verdict(worse=False, findings=())
    result = plan(snap(policy(phases=[100]), phase(10, queued=10, ready=10), health=verdict), at(5))
    assert result.rollout.state == RUNNING


# --- phases ------------------------------------------------------------------------------------


def test_a_phase_that_meets_its_success_threshold_starts_the_next() -> None:
    pol = policy(phases=[10, 100])
    result = plan(snap(pol, phase(10, succeeded=9, installing=1), phase(90, queued=90)), at(5))
    assert result.rollout.phase == 1
    assert result.rollout.phase_started_at == at(5)
    assert result.rollout.threshold_met_at is None
    assert [(e.kind, e.detail) for e in result.events] == [
        ("phase_started", {"phase": 1, "size": 90})
    ]


def test_a_phase_below_its_success_threshold_holds_the_next_back() -> None:
    pol = policy(phases=[10, 100])
    result = plan(snap(pol, phase(10, succeeded=8, installing=2), phase(90, queued=90)), at(5))
    assert result.rollout.phase == 0
    assert result.rollout.threshold_met_at is None


def test_the_next_phase_waits_for_the_soak_time() -> None:
    pol = policy(phases=[10, 100], soak="10m")
    counts = (phase(10, succeeded=10), phase(90, queued=90))
    first = plan(snap(pol, *counts), at(5))
    assert first.rollout.phase == 0
    assert first.rollout.threshold_met_at == at(5)
    assert first.next_tick_at == at(605)
    still = plan(snap(pol, *counts, rollout=first.rollout), at(604))
    assert still.rollout.phase == 0 and still.rollout.threshold_met_at == at(5)
    soaked = plan(snap(pol, *counts, rollout=still.rollout), at(605))
    assert soaked.rollout.phase == 1
    assert kinds(soaked) == ["phase_started"]


def test_a_threshold_that_stops_holding_restarts_the_soak() -> None:
    pol = policy(phases=[10, 100], soak=600, error_threshold=50)
    rollout = replace(TICKING, threshold_met_at=at(0))
    rolled = phase(10, succeeded=8, rolling_back=1, rolled_back=1)  # an operator rolls back
    result = plan(snap(pol, rolled, phase(90, queued=90), rollout=rollout), at(300))
    assert result.rollout.state == RUNNING
    assert result.rollout.threshold_met_at is None


def test_a_phase_may_override_the_threshold_and_the_soak() -> None:
    pol = policy(phases=[{"percent": 10, "success_threshold": 50, "soak": 0}, 100], soak=3600)
    result = plan(snap(pol, phase(10, succeeded=5, installing=5), phase(90, queued=90)), at(5))
    assert result.rollout.phase == 1


def test_empty_phases_pass_at_once() -> None:
    pol = policy(soak=600)  # 2 devices: phases of 1, 0 and 1
    counts = (phase(1, succeeded=1), phase(0), phase(1, queued=1))
    first = plan(snap(pol, *counts), at(5))
    soaked = plan(snap(pol, *counts, rollout=first.rollout), at(605))
    assert soaked.rollout.phase == 2
    assert [e.detail["phase"] for e in soaked.events] == [1, 2]


def test_the_last_phase_done_with_nothing_left_finishes_the_deployment() -> None:
    pol = policy(phases=[100])
    result = plan(snap(pol, phase(10, succeeded=9, failed=1)), at(5))
    assert result.rollout.state == FINISHED
    assert kinds(result) == ["finished"]
    assert result.notify == 0 and result.next_tick_at is None


def test_the_last_phase_done_waits_for_devices_still_working() -> None:
    pol = policy(phases=[100])
    result = plan(snap(pol, phase(10, succeeded=9, verifying=1)), at(5))
    assert result.rollout.state == RUNNING


def test_a_continuous_deployment_never_finishes_by_itself() -> None:
    pol = policy(phases=[100])
    result = plan(snap(pol, phase(10, succeeded=10), continuous=True), at(5))
    assert result.rollout.state == RUNNING


def test_a_phase_that_can_no_longer_reach_its_threshold_pauses() -> None:
    pol = policy(phases=[10, 100], error_threshold=50)
    stuck = phase(10, succeeded=8, failed=1, canceled=1)
    result = plan(snap(pol, stuck, phase(90, queued=90)), at(5))
    assert result.rollout.state == PAUSED
    assert result.rollout.reason is not None and "cannot reach" in result.rollout.reason


def test_a_last_phase_below_its_success_threshold_finishes_when_nothing_is_left() -> None:
    pol = policy(phases=[100], error_threshold=50)
    result = plan(snap(pol, phase(10, succeeded=8, failed=2)), at(5))
    assert result.rollout.state == FINISHED
    assert result.rollout.reason == "finished below the success threshold"
    assert result.events[-1].detail["threshold_met"] is False


# --- pacing ------------------------------------------------------------------------------------

STARTING = RolloutState(phase_started_at=T0)
EVERYONE = phase(10**6, queued=10**6, ready=10**6)


def steady(base: float, **rate: Any) -> RolloutPolicy:
    """One phase, every device ready, a fixed rate unless told otherwise."""
    return policy(
        phases=[100],
        rate={"base_per_minute": base, "increase_after_succeeded": None, **rate},
    )


def test_the_first_tick_starts_one_device_at_once() -> None:
    result = plan(snap(steady(10), EVERYONE, rollout=STARTING), T0)
    assert result.notify == 1
    assert result.rollout.rate == 10
    assert result.rollout.last_tick_at == T0
    assert result.next_tick_at == at(6)


def test_the_first_tick_of_a_fast_policy_starts_a_seconds_worth() -> None:
    fast = steady(6000, max_per_minute=6000)
    assert plan(snap(fast, EVERYONE, rollout=STARTING), T0).notify == 100


def test_credit_carries_fractions_between_ticks() -> None:
    rollout, notified = STARTING, 0
    for second in range(60):
        result = plan(snap(steady(10), EVERYONE, rollout=rollout, notified=notified), at(second))
        rollout, notified = result.rollout, notified + result.notify
    assert notified == 10  # at 0, 6, 12, ... 54 s


def test_notifications_are_limited_by_ready_devices() -> None:
    few = phase(1000, queued=1000, ready=3)
    result = plan(snap(steady(600), few, rollout=replace(TICKING, rate=600)), at(60))
    assert result.notify == 3


def test_notifications_are_limited_by_max_in_progress() -> None:
    pol = steady(600, max_in_progress=5)
    counts = phase(1000, queued=997, installing=3, ready=997)
    result = plan(snap(pol, counts, rollout=replace(TICKING, rate=600)), at(60))
    assert result.notify == 2


def test_ready_devices_of_later_phases_are_not_notified() -> None:
    pol = policy(phases=[10, 100], rate={"base_per_minute": 600})
    counts = (phase(10, installing=10), phase(90, queued=90, ready=90))
    assert plan(snap(pol, *counts, rollout=replace(TICKING, rate=600)), at(60)).notify == 0


def test_no_credit_builds_up_while_nothing_is_ready() -> None:
    rollout = replace(TICKING, rate=60)
    for second in range(1, 301):  # five minutes with nothing ready
        rollout = plan(
            snap(steady(60), phase(100, queued=100), rollout=rollout), at(second)
        ).rollout
        assert rollout.credit <= 1.0  # one second's worth at 60 a minute
    freed = plan(snap(steady(60), phase(100, queued=100, ready=100), rollout=rollout), at(301))
    assert freed.notify == 2  # the second held back and the one just earned: no burst


def test_a_long_gap_earns_at_most_a_minutes_worth() -> None:
    result = plan(snap(steady(10), EVERYONE, rollout=TICKING), at(3600))
    assert result.notify == 10


def test_the_rate_grows_after_enough_successes() -> None:
    pol = policy(phases=[100], rate={"base_per_minute": 10, "increase_after_succeeded": 10})
    counts = phase(100, succeeded=10, queued=90, ready=90)
    result = plan(snap(pol, counts, rollout=TICKING, notified=10), at(1))
    assert result.rollout.rate == 20
    assert result.rollout.succeeded_at_rate == 10
    assert result.rollout.notified_at_rate == 10
    assert [(e.kind, e.detail) for e in result.events] == [
        ("rate_increased", {"rate": 20, "previous": 10, "increases": 1})
    ]


def test_successes_beyond_a_step_carry_over_to_the_next() -> None:
    pol = policy(phases=[100], rate={"base_per_minute": 10, "increase_after_succeeded": 10})
    counts = phase(100, succeeded=35, queued=65, ready=65)
    result = plan(snap(pol, counts, rollout=TICKING, notified=35), at(1))
    assert result.rollout.rate == 80
    assert result.rollout.succeeded_at_rate == 30


def test_the_rate_grows_at_the_device_that_completes_the_notified_count() -> None:
    pol = steady(60, increase_after_notified=5)  # one a second, then two, ...
    result = plan(snap(pol, EVERYONE, notified=0, rollout=replace(TICKING, rate=60)), at(8))
    # 5 devices in 5 s at 60/min, 5 in 2.5 s at 120/min, then 0.5 s at 240/min: 2 more.
    assert result.notify == 12
    assert result.rollout.rate == 240
    assert result.rollout.notified_at_rate == 10


def test_the_rate_never_exceeds_its_maximum() -> None:
    pol = policy(phases=[100], rate={"base_per_minute": 10, "max_per_minute": 15})
    counts = phase(100, succeeded=50, queued=50, ready=50)
    assert plan(snap(pol, counts, notified=50), at(1)).rollout.rate == 15


def test_a_factor_of_one_keeps_the_rate() -> None:
    pol = policy(phases=[100], rate={"base_per_minute": 10, "increment_factor": 1})
    counts = phase(100, succeeded=50, queued=50, ready=50)
    result = plan(snap(pol, counts, notified=50), at(1))
    assert result.rollout.rate == 10 and "rate_increased" not in kinds(result)


def test_nothing_to_notify_and_nothing_due_leaves_the_next_tick_open() -> None:
    result = plan(snap(steady(10), phase(10, installing=10)), at(5))
    assert result.next_tick_at is None


def test_a_closed_window_is_looked_at_again_when_it_opens() -> None:
    pol = policy(phases=[100], schedule={"windows": [{"cron": "0 2 * * *", "duration": "2h"}]})
    result = plan(snap(pol, phase(10, queued=10)), at(0))  # 12:00 UTC, no device ready
    assert result.next_tick_at == datetime(2026, 3, 3, 2, 0, tzinfo=UTC)


def test_a_new_phase_is_looked_at_again_soon_for_its_devices() -> None:
    pol = policy(phases=[10, 100])
    result = plan(snap(pol, phase(10, succeeded=10), phase(90, queued=90)), at(5))
    assert result.next_tick_at is not None and result.next_tick_at <= at(11)


def _ideal_minutes(base: float, factor: float, after: int, top: float, minutes: int) -> list[int]:
    """The policy by the letter: one device every 60/rate s from t=0, devices succeeding at
    once, the rate multiplied the moment `after` more have succeeded; devices per minute."""
    times, t, rate, since = [], 0.0, base, 0
    while t < minutes * 60:
        times.append(t)
        since += 1
        if since == after:
            rate, since = min(rate * factor, top), 0
        t += 60 / rate
    return [sum(1 for x in times if m * 60 <= x < (m + 1) * 60) for m in range(minutes)]


def _per_minute(pol: RolloutPolicy, minutes: int, longest: float) -> list[int]:
    """Tick like the scheduler: at next_tick_at, and at least every `longest` seconds; every
    notified device succeeds at once."""
    rollout, notified, counts, now = STARTING, 0, [0] * minutes, T0
    while now < at(minutes * 60):
        state = phase(10**6, succeeded=notified, queued=10**6 - notified, ready=10**6)
        result = plan(snap(pol, state, rollout=rollout, notified=notified, in_progress=0), now)
        assert result.rollout.credit >= 0
        counts[int((now - T0).total_seconds() // 60)] += result.notify
        rollout, notified = result.rollout, notified + result.notify
        later = now + timedelta(seconds=longest)
        now = min(later, result.next_tick_at) if result.next_tick_at else later
    return counts


@pytest.mark.parametrize("longest", [1, 10])
def test_minute_by_minute_counts_follow_the_exponential_policy(longest: float) -> None:
    pol = policy(
        phases=[100],
        rate={"base_per_minute": 10, "increment_factor": 2, "increase_after_succeeded": 10},
    )
    expected = _ideal_minutes(10, 2, 10, 1000, 6)
    assert expected == [11, 174, 1000, 1000, 1000, 1000]
    counts = _per_minute(pol, 6, longest)
    assert all(abs(got - want) <= 1 for got, want in zip(counts, expected, strict=True)), counts


@pytest.mark.parametrize("interval", [1, 10])
def test_ticks_every_second_or_every_ten_seconds_notify_the_same_per_minute(
    interval: float,
) -> None:
    rollout, notified, counts = STARTING, 0, [0] * 5
    for k in range(int(300 / interval)):
        now = at(k * interval)
        result = plan(snap(steady(37), EVERYONE, rollout=rollout, notified=notified), now)
        counts[int(k * interval // 60)] += result.notify
        rollout, notified = result.rollout, notified + result.notify
    assert counts[1:] == [37, 37, 37, 37]


@settings(max_examples=20, deadline=None)
@given(
    base=st.integers(1, 600),
    intervals=st.lists(st.floats(1, 20), min_size=1, max_size=30),
)
def test_over_an_hour_of_random_ticks_the_pace_stays_within_the_rate(
    base: int, intervals: list[float]
) -> None:
    pol = steady(base, max_per_minute=max(base, 1000), max_in_progress=1_000_000)
    rollout, notified, now, k = STARTING, 0, T0, 0
    counts = [0] * 60
    while now < at(3600):
        result = plan(snap(pol, EVERYONE, rollout=rollout, notified=notified), now)
        rollout, notified = result.rollout, notified + result.notify
        assert 0 <= rollout.credit < max(1.0, base / 60) + 1e-9
        elapsed = (now - T0).total_seconds()
        # Never ahead of the policy, and never more than a device behind it.
        allowed = max(1, base / 60) + base * elapsed / 60
        assert allowed - 1 - 1e-6 <= notified <= allowed + 1e-6
        counts[int(elapsed // 60)] += result.notify
        now += timedelta(seconds=intervals[k % len(intervals)])
        k += 1
    longest = max(intervals)
    # A minute holds the devices due in it, plus those due during one late tick before it.
    assert max(counts) <= base * (60 + longest) / 60 + 1


@settings(max_examples=40, deadline=None)
@given(
    base=st.integers(1, 100),
    factor=st.sampled_from([1.0, 1.5, 2.0, 5.0]),
    after=st.integers(1, 50),
    intervals=st.lists(st.floats(0.1, 30), min_size=1, max_size=20),
)
def test_the_rate_only_grows_and_stays_under_its_maximum(
    base: int, factor: float, after: int, intervals: list[float]
) -> None:
    pol = policy(
        phases=[100],
        rate={
            "base_per_minute": base,
            "increment_factor": factor,
            "increase_after_succeeded": after,
            "max_per_minute": 500,
        },
    )
    rollout, notified, now = STARTING, 0, T0
    for k in range(200):
        state = phase(10**6, succeeded=notified, queued=10**6 - notified, ready=10**6)
        result = plan(snap(pol, state, rollout=rollout, notified=notified, in_progress=0), now)
        assert rollout.rate <= result.rollout.rate <= 500
        assert result.rollout.credit >= 0
        rollout, notified = result.rollout, notified + result.notify
        now += timedelta(seconds=intervals[k % len(intervals)])


# --- jitter, retries, eta ----------------------------------------------------------------------


def test_jitter_spreads_a_wave_one_device_per_slot() -> None:
    offsets = jitter_offsets(10, 60, random.Random(1))
    assert [int(offset // 6) for offset in offsets] == list(range(10))


def test_jitter_is_random_within_the_slots() -> None:
    assert jitter_offsets(5, 60, random.Random(1)) != jitter_offsets(5, 60, random.Random(2))
    assert jitter_offsets(5, 60, random.Random(3)) == jitter_offsets(5, 60, random.Random(3))


def test_no_jitter_starts_everyone_at_once() -> None:
    assert jitter_offsets(3, 0, random.Random(1)) == [0.0, 0.0, 0.0]
    assert jitter_offsets(0, 60, random.Random(1)) == []


@given(count=st.integers(1, 500), spread=st.floats(0.001, 86400), seed=st.integers(0, 2**32))
def test_jitter_offsets_stay_within_the_spread(count: int, spread: float, seed: int) -> None:
    offsets = jitter_offsets(count, spread, random.Random(seed))
    assert len(offsets) == count
    assert all(0 <= offset < spread for offset in offsets)
    assert offsets == sorted(offsets)


class Middle(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def test_retry_delays_back_off_by_the_factor() -> None:
    pol = policy(
        retries=[{"on": "download_failed", "limit": 3, "backoff": 60, "backoff_factor": 2}]
    )
    delays = [retry_delay(pol, "download_failed", n, Middle()) for n in (1, 2, 3, 4)]
    assert delays == [60, 120, 240, None]


def test_retry_delays_are_jittered_by_ten_percent() -> None:
    rng = random.Random(5)
    pol = policy(retries=[{"on": "failed", "limit": 1, "backoff": 100}])
    delays = [retry_delay(pol, "failed", 1, rng) for _ in range(200)]
    assert all(d is not None and 90 <= d <= 110 for d in delays)
    assert len(set(delays)) > 1


def test_the_first_rule_for_a_kind_wins_then_an_all_rule() -> None:
    pol = policy(
        retries=[
            {"on": "timed_out", "limit": 1, "backoff": 10},
            {"on": "all", "limit": 2, "backoff": 500},
            {"on": "timed_out", "limit": 5, "backoff": 1},
        ]
    )
    assert retry_delay(pol, "timed_out", 1, Middle()) == pytest.approx(10)
    assert retry_delay(pol, "timed_out", 2, Middle()) is None
    assert retry_delay(pol, "failed", 2, Middle()) == pytest.approx(1000)


def test_a_failure_without_a_rule_is_not_retried() -> None:
    assert retry_delay(policy(), "failed", 1, Middle()) is None
    assert retry_delay(policy(retries=[]), "download_failed", 1, Middle()) is None


def test_the_default_retries_are_the_documented_ones() -> None:
    pol = policy()
    assert retry_delay(pol, "download_failed", 3, Middle()) == pytest.approx(240)
    assert retry_delay(pol, "download_failed", 4, Middle()) is None
    assert retry_delay(pol, "timed_out", 2, Middle()) is None
    assert retry_delay(pol, "precondition", 12, Middle()) == pytest.approx(600)


def test_a_huge_backoff_is_capped_at_a_year() -> None:
    pol = policy(retries=[{"on": "all", "limit": 100, "backoff": "1d", "backoff_factor": 10}])
    assert retry_delay(pol, "failed", 100, Middle()) == 366 * 86400


def test_retries_count_from_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(policy(), "failed", 0, Middle())


def test_eta_is_the_unfinished_devices_at_the_current_rate() -> None:
    counts = phase(100, succeeded=30, failed=5, skipped=0, installing=5, queued=60)
    result = eta(snap(policy(phases=[100]), counts, rollout=replace(TICKING, rate=13)), T0)
    assert result == T0 + timedelta(minutes=5)


@pytest.mark.parametrize(
    "rollout",
    [replace(TICKING, state=PAUSED), replace(TICKING, state=FINISHED), replace(TICKING, rate=0)],
)
def test_eta_is_unknown_when_paused_finished_or_not_started(rollout: RolloutState) -> None:
    assert eta(snap(policy(phases=[100]), phase(10, queued=10), rollout=rollout), T0) is None
