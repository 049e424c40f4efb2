"""The alert lifecycle in simulated time: pending, firing, resolved, hysteresis, flapping."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetkeeper.services.alerting.lifecycle import (
    TABLE,
    Change,
    NoSuchAlert,
    RuleEvaluator,
    Transition,
    Verdict,
)
from fleetkeeper.services.alerting.model import AlertState, fingerprint
from fleetkeeper.services.alerting.rules import AlertRule, Observation, Reading

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DEVICE = {"device": "d-1", "site": "oslo-3"}
MINUTE = 60.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def evaluator(**fields: Any) -> RuleEvaluator:
    spec = {"name": "low-battery", "condition": "battery < 15 for 5m", **fields}
    return RuleEvaluator(AlertRule.model_validate(spec))


def battery(now: float, value: float | None) -> Observation:
    metrics = {} if value is None else {"battery": [Reading(at(now), value)]}
    return Observation(at(now), metrics)


def run(ev: RuleEvaluator, readings: Iterable[tuple[float, float | None]]) -> list[Transition]:
    done: list[Transition] = []
    for now, value in readings:
        done += ev.observe(DEVICE, battery(now, value))
    return done


def changes(transitions: Iterable[Transition]) -> list[tuple[Change, float]]:
    return [(t.change, (t.at - T0).total_seconds()) for t in transitions]


def notified(transitions: Iterable[Transition]) -> list[Transition]:
    return [t for t in transitions if t.notifies]


def every_minute(values: Iterable[float | None], start: float = 0) -> list[tuple[float, Any]]:
    return [(start + i * MINUTE, v) for i, v in enumerate(values)]


# --- the table ---------------------------------------------------------------------------------


def test_the_table_covers_every_state_and_verdict() -> None:
    for state in (None, AlertState.PENDING, AlertState.FIRING):
        for verdict in Verdict:
            assert (state, verdict) in TABLE


# --- pending and firing ------------------------------------------------------------------------


def test_an_alert_is_pending_then_fires_after_its_for_duration() -> None:
    ev = evaluator()
    done = run(ev, every_minute([10] * 6))
    assert changes(done) == [(Change.PENDING, 0), (Change.FIRING, 300)]
    (alert,) = ev.alerts.values()
    assert (alert.state, alert.active_since, alert.fired_at, alert.value) == (
        AlertState.FIRING,
        at(0),
        at(300),
        10,
    )


def test_a_rule_without_for_fires_at_once() -> None:
    ev = evaluator(condition="battery < 15")
    assert changes(run(ev, [(0, 10)])) == [(Change.PENDING, 0), (Change.FIRING, 0)]


def test_a_pending_alert_that_stops_holding_is_cancelled_unnotified() -> None:
    ev = evaluator()
    done = run(ev, every_minute([10, 10, 10, 50]))
    assert changes(done) == [(Change.PENDING, 0), (Change.CANCELLED, 180)]
    assert notified(done) == []
    assert ev.alerts == {}


def test_the_pending_time_starts_again_after_a_break() -> None:
    ev = evaluator()
    done = run(ev, every_minute([10, 10, 10, 10, 50, 10, 10, 10, 10, 10, 10]))
    assert [c for c in changes(done) if c[0] is Change.FIRING] == [(Change.FIRING, 600)]


def test_a_firing_alert_resolves_when_its_condition_no_longer_holds() -> None:
    ev = evaluator()
    done = run(ev, every_minute([10] * 6 + [50]))
    assert changes(notified(done)) == [(Change.FIRING, 300), (Change.RESOLVED, 360)]
    assert ev.alerts == {}


def test_a_resolved_alert_reopens_as_a_new_episode() -> None:
    ev = evaluator(condition="battery < 15")
    done = run(ev, [(0, 10), (60, 50), (3 * 3600, 10)])
    assert changes(notified(done)) == [
        (Change.FIRING, 0),
        (Change.RESOLVED, 60),
        (Change.FIRING, 3 * 3600),
    ]
    (alert,) = ev.alerts.values()
    assert alert.active_since == at(3 * 3600)


# --- identity ----------------------------------------------------------------------------------


def test_the_same_condition_never_opens_twice() -> None:
    ev = evaluator()
    run(ev, every_minute([10] * 20))
    assert len(ev.alerts) == 1


def test_an_alert_is_identified_by_rule_and_labels() -> None:
    ev = evaluator(condition="battery < 15", labels={"team": "field"})
    (first, _) = ev.observe(DEVICE, battery(0, 10))
    ev.observe({"device": "d-2", "site": "oslo-3"}, battery(0, 10))
    assert len(ev.alerts) == 2
    labels = {"team": "field", **DEVICE, "rule": "low-battery", "severity": "warning"}
    assert dict(first.labels) == labels
    assert first.fingerprint == fingerprint("low-battery", labels)
    assert ev.alerts[first.fingerprint].fingerprint == first.fingerprint


# --- missing data ------------------------------------------------------------------------------


def test_missing_data_neither_opens_nor_fires_nor_clears() -> None:
    ev = evaluator(condition="battery < 15")
    assert run(ev, [(0, None)]) == []
    run(ev, [(60, 10)])
    assert run(ev, every_minute([None] * 30, start=120)) == []
    (alert,) = ev.alerts.values()
    assert alert.state is AlertState.FIRING and alert.value == 10


def test_missing_data_does_not_cancel_a_pending_alert() -> None:
    ev = evaluator()
    done = run(ev, every_minute([10, None, None, 10, 10, 10]))
    assert changes(done) == [(Change.PENDING, 0), (Change.FIRING, 300)]


# --- hysteresis --------------------------------------------------------------------------------


def test_hysteresis_fires_below_15_and_clears_above_20() -> None:
    ev = evaluator(condition="battery < 15", clear="battery > 20")
    done = run(ev, every_minute([14, 17, 19, 20, 16, 21]))
    assert changes(done) == [(Change.PENDING, 0), (Change.FIRING, 0), (Change.RESOLVED, 300)]


def test_in_the_band_nothing_opens() -> None:
    ev = evaluator(condition="battery < 15", clear="battery > 20")
    assert run(ev, every_minute([18, 16, 20, 15])) == []


def test_a_pending_alert_in_the_band_is_cancelled() -> None:
    ev = evaluator(clear="battery > 20")
    done = run(ev, every_minute([10, 17]))
    assert changes(done) == [(Change.PENDING, 0), (Change.CANCELLED, 60)]


def test_a_clear_with_for_must_hold_that_long_without_a_break() -> None:
    ev = evaluator(condition="battery < 15", clear="battery > 20 for 10m")
    run(ev, [(0, 10)])
    done = run(ev, every_minute([25] * 5 + [18] + [25] * 11, start=60))
    assert changes(notified(done)) == [(Change.RESOLVED, 60 + 16 * MINUTE)]


def test_offline_fires_30_minutes_after_last_seen_and_clears_when_heard() -> None:
    ev = evaluator(name="offline", condition="offline for 30m")
    seen = at(0)
    done: list[Transition] = []
    for minute in range(0, 36, 5):
        done += ev.observe(DEVICE, Observation(at(minute * MINUTE), last_seen=seen))
    done += ev.observe(DEVICE, Observation(at(36 * MINUTE), last_seen=at(36 * MINUTE)))
    assert changes(notified(done)) == [(Change.FIRING, 1800), (Change.RESOLVED, 2160)]
    assert done[1].value == 1800


def test_a_health_flag_fires_after_its_for_duration() -> None:
    ev = evaluator(name="faulty", condition="health = faulty_sensor for 10m")
    flagged = frozenset({"faulty_sensor"})
    done: list[Transition] = []
    for minute in range(12):
        done += ev.observe(DEVICE, Observation(at(minute * MINUTE), flags=flagged))
    done += ev.observe(DEVICE, Observation(at(12 * MINUTE), flags=frozenset()))
    done += ev.observe(DEVICE, Observation(at(13 * MINUTE)))  # health unknown
    assert changes(notified(done)) == [(Change.FIRING, 600), (Change.RESOLVED, 720)]


# --- operators ---------------------------------------------------------------------------------


def test_acknowledging_keeps_the_alert_firing_and_marks_it() -> None:
    ev = evaluator(condition="battery < 15")
    (_, fired) = run(ev, [(0, 10)])
    (ack,) = ev.acknowledge(fired.fingerprint, by="ana", at=at(60), note="on my way")
    assert (ack.change, ack.by, ack.note, ack.notifies) == (
        Change.ACKNOWLEDGED,
        "ana",
        "on my way",
        False,
    )
    alert = ev.alerts[fired.fingerprint]
    assert alert.state is AlertState.FIRING and alert.acknowledged
    assert (alert.acknowledged_by, alert.acknowledged_note) == ("ana", "on my way")
    assert run(ev, [(120, 10)]) == []


def test_only_a_firing_alert_is_acknowledged() -> None:
    ev = evaluator()
    (pending,) = run(ev, [(0, 10)])
    with pytest.raises(ValueError, match="only a firing alert"):
        ev.acknowledge(pending.fingerprint, by="ana", at=at(1))
    with pytest.raises(NoSuchAlert):
        ev.acknowledge("0" * 16, by="ana", at=at(1))


def test_an_operator_resolves_and_a_still_true_condition_pends_again() -> None:
    ev = evaluator()
    fired = run(ev, every_minute([10] * 6))[-1]
    (resolved,) = ev.resolve(fired.fingerprint, by="ana", at=at(330), note="replaced battery")
    assert (resolved.change, resolved.by, resolved.note) == (
        Change.RESOLVED,
        "ana",
        "replaced battery",
    )
    assert ev.alerts == {}
    with pytest.raises(NoSuchAlert):
        ev.resolve(fired.fingerprint, by="ana", at=at(331))
    assert changes(run(ev, [(360, 10)])) == [(Change.PENDING, 360)]


# --- flapping ----------------------------------------------------------------------------------


def test_a_metric_flapping_every_minute_under_5m_pending_sends_nothing() -> None:
    """The issue's case: 1 minute bad, 1 minute good, repeating, with `for 5m`."""
    ev = evaluator(condition="battery < 15 for 5m", clear="battery > 20")
    readings = [(s, 10.0 if (s // 60) % 2 == 0 else 30.0) for s in range(0, 6 * 3600, 10)]
    done = run(ev, readings)
    assert notified(done) == []
    assert {t.change for t in done} == {Change.PENDING, Change.CANCELLED}


def test_a_flapping_alert_is_held_firing_instead_of_resolving() -> None:
    ev = evaluator(condition="battery < 15")  # no pending time: every bad minute fires
    done = run(ev, every_minute([10, 50] * 10))
    assert changes(notified(done)) == [
        (Change.FIRING, 0),
        (Change.RESOLVED, 60),
        (Change.FIRING, 120),
        (Change.FLAPPING, 180),  # the 4th flip in 30 minutes: held firing
    ]
    (alert,) = ev.alerts.values()
    assert alert.state is AlertState.FIRING and alert.flapping


def test_a_flapping_alert_resolves_once_its_clear_held_for_the_settle_period() -> None:
    ev = evaluator(condition="battery < 15", flap_settle="15m")
    run(ev, every_minute([10, 50] * 10 + [10]))  # flapping from minute 3, bad at minute 20
    done = run(ev, every_minute([50] * 16, start=21 * MINUTE))
    assert changes(notified(done)) == [(Change.RESOLVED, 36 * MINUTE)]
    assert done[0].labels["rule"] == "low-battery"


def test_a_flapping_alert_settles_only_after_an_unbroken_calm() -> None:
    ev = evaluator(condition="battery < 15", flap_settle="15m")
    run(ev, every_minute([10, 50] * 10 + [10]))
    done = run(ev, every_minute([50] * 10 + [10] + [50] * 16, start=21 * MINUTE))
    assert changes(notified(done)) == [(Change.RESOLVED, (32 + 15) * MINUTE)]


def test_flips_spread_beyond_the_window_are_not_flapping() -> None:
    ev = evaluator(condition="battery < 15", flap_window="30m")
    readings = [(i * 20 * MINUTE, 10.0 if i % 2 == 0 else 50.0) for i in range(12)]
    done = run(ev, readings)
    assert Change.FLAPPING not in {t.change for t in done}
    assert len(notified(done)) == 12


def test_flap_parameters_come_from_the_rule() -> None:
    ev = evaluator(condition="battery < 15", flap_flips=6)
    done = run(ev, every_minute([10, 50] * 4))
    assert [c for c, _ in changes(notified(done))].index(Change.FLAPPING) == 5


def test_prune_forgets_old_flips() -> None:
    ev = evaluator(condition="battery < 15")
    run(ev, [(0, 10), (60, 50)])
    assert len(ev.flips) == 1
    ev.prune(at(3600))
    assert ev.flips == {}


def test_an_evaluator_resumes_from_stored_state() -> None:
    ev = evaluator()
    run(ev, every_minute([10] * 3))
    resumed = RuleEvaluator(ev.rule, alerts=ev.alerts, flips=ev.flips)
    assert changes(run(resumed, every_minute([10] * 3, start=180))) == [(Change.FIRING, 300)]


# --- properties --------------------------------------------------------------------------------


@given(
    st.lists(st.booleans(), min_size=1, max_size=80),
    st.integers(min_value=0, max_value=10),
)
def test_firing_only_after_for_elapsed_with_the_condition_continuously_true(
    bad: list[bool], hold_minutes: int
) -> None:
    ev = evaluator(
        condition=f"battery < 15 for {hold_minutes}m" if hold_minutes else "battery < 15"
    )
    true_since: float | None = None
    for i, is_bad in enumerate(bad):
        now = i * MINUTE
        true_since = (true_since if true_since is not None else now) if is_bad else None
        for t in ev.observe(DEVICE, battery(now, 10 if is_bad else 50)):
            if t.change is Change.FIRING:
                assert true_since is not None
                assert now - true_since >= hold_minutes * MINUTE


@given(st.lists(st.sampled_from([10.0, 17.0, 25.0, None]), max_size=80))
def test_at_most_one_open_alert_and_states_alternate(values: list[float | None]) -> None:
    ev = evaluator(condition="battery < 15 for 2m", clear="battery > 20")
    firing = False
    for t in run(ev, every_minute(values)):
        assert len(ev.alerts) <= 1
        if t.change is Change.FIRING:
            assert not firing
            firing = True
        elif t.change is Change.RESOLVED:
            assert firing
            firing = False
