"""One device's execution: who may move it where, and how its failures are classified."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest

from fleetkeeper.services.rollout.execution import (
    ACTIVE,
    CANCELABLE,
    DEVICE_TRANSITIONS,
    FINAL,
    PROGRESS,
    REPEATABLE,
    SERVER_TRANSITIONS,
    STEP_OF,
    TOUCHED,
    UNSUCCESSFUL,
    Reason,
    State,
    TransitionError,
    check_device_move,
    check_server_move,
    device_may,
    failure_kind,
)
from fleetkeeper.services.rollout.policy import FailureKind, Timeouts

S = State

# What a device may report, written out: forward through the steps (skipping allowed),
# succeeded once it installed (or straight away for a package without steps), failed from
# any step, canceled before installing, rolled back once the new firmware may run.
DEVICE_ALLOWED = {
    (S.NOTIFIED, S.DOWNLOADING),
    (S.NOTIFIED, S.DOWNLOADED),
    (S.NOTIFIED, S.INSTALLING),
    (S.NOTIFIED, S.REBOOTING),
    (S.NOTIFIED, S.VERIFYING),
    (S.NOTIFIED, S.SUCCEEDED),
    (S.NOTIFIED, S.FAILED),
    (S.NOTIFIED, S.CANCELED),
    (S.DOWNLOADING, S.DOWNLOADED),
    (S.DOWNLOADING, S.INSTALLING),
    (S.DOWNLOADING, S.REBOOTING),
    (S.DOWNLOADING, S.VERIFYING),
    (S.DOWNLOADING, S.SUCCEEDED),
    (S.DOWNLOADING, S.FAILED),
    (S.DOWNLOADING, S.CANCELED),
    (S.DOWNLOADED, S.INSTALLING),
    (S.DOWNLOADED, S.REBOOTING),
    (S.DOWNLOADED, S.VERIFYING),
    (S.DOWNLOADED, S.SUCCEEDED),
    (S.DOWNLOADED, S.FAILED),
    (S.DOWNLOADED, S.CANCELED),
    (S.INSTALLING, S.REBOOTING),
    (S.INSTALLING, S.VERIFYING),
    (S.INSTALLING, S.SUCCEEDED),
    (S.INSTALLING, S.FAILED),
    (S.INSTALLING, S.ROLLED_BACK),
    (S.REBOOTING, S.VERIFYING),
    (S.REBOOTING, S.SUCCEEDED),
    (S.REBOOTING, S.FAILED),
    (S.REBOOTING, S.ROLLED_BACK),
    (S.VERIFYING, S.SUCCEEDED),
    (S.VERIFYING, S.FAILED),
    (S.VERIFYING, S.ROLLED_BACK),
    (S.ROLLING_BACK, S.FAILED),
    (S.ROLLING_BACK, S.ROLLED_BACK),
}
# A progress report repeats the device's current step.
REPEATS = {(s, s) for s in (S.DOWNLOADING, S.DOWNLOADED, S.INSTALLING, S.REBOOTING, S.VERIFYING)}

SERVER_ALLOWED = {
    (S.QUEUED, S.NOTIFIED),
    (S.QUEUED, S.CANCELED),
    (S.QUEUED, S.SKIPPED),
    (S.NOTIFIED, S.CANCELED),
    *((s, S.TIMED_OUT) for s in ACTIVE),
    (S.SUCCEEDED, S.ROLLING_BACK),
    (S.FAILED, S.QUEUED),
    (S.TIMED_OUT, S.QUEUED),
}


def test_the_device_table_is_exactly_the_documented_one() -> None:
    assert {(a, b) for a, targets in DEVICE_TRANSITIONS.items() for b in targets} == DEVICE_ALLOWED


def test_the_server_table_is_exactly_the_documented_one() -> None:
    assert {(a, b) for a, targets in SERVER_TRANSITIONS.items() for b in targets} == SERVER_ALLOWED


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(State, State)))
def test_each_device_report_is_accepted_or_refused_naming_both_states(
    current: State, wanted: State
) -> None:
    if (current, wanted) in DEVICE_ALLOWED | REPEATS:
        assert check_device_move(current, wanted) is wanted
        return
    with pytest.raises(TransitionError) as refused:
        check_device_move(current, wanted)
    assert (refused.value.current, refused.value.wanted) == (current, wanted)
    assert str(current) in str(refused.value) and str(wanted) in str(refused.value)


def test_a_device_repeats_its_step_to_report_progress() -> None:
    assert check_device_move("downloading", "downloading") is State.DOWNLOADING
    assert {s for s, _ in REPEATS} == REPEATABLE


@pytest.mark.parametrize("state", [S.QUEUED, S.NOTIFIED, S.ROLLING_BACK, *FINAL])
def test_a_state_the_device_did_not_report_cannot_be_repeated(state: State) -> None:
    assert not device_may(state, state)


def test_progress_never_goes_backwards() -> None:
    for earlier, later in itertools.combinations(PROGRESS, 2):
        assert device_may(earlier, later)
        assert not device_may(later, earlier)


@pytest.mark.parametrize("state", [S.QUEUED, S.NOTIFIED, S.ROLLING_BACK, S.TIMED_OUT, S.SKIPPED])
def test_a_device_never_reports_the_servers_states(state: State) -> None:
    assert not any(device_may(source, state) for source in State if source != state)


@pytest.mark.parametrize("state", sorted(FINAL))
def test_a_final_state_takes_no_report(state: State) -> None:
    assert DEVICE_TRANSITIONS[state] == frozenset()


def test_a_device_cancels_only_before_installing() -> None:
    assert {s for s in State if device_may(s, S.CANCELED)} == CANCELABLE - {S.QUEUED}


def test_a_device_rolls_back_only_once_the_new_firmware_may_run() -> None:
    assert {s for s in State if device_may(s, S.ROLLED_BACK)} == TOUCHED | {S.ROLLING_BACK}


def test_unknown_state_names_are_transition_errors() -> None:
    with pytest.raises(TransitionError, match="sleeping"):
        check_device_move("downloading", "sleeping")
    with pytest.raises(TransitionError, match="limbo"):
        check_device_move("limbo", "succeeded")
    with pytest.raises(TransitionError, match="limbo"):
        check_server_move("limbo", S.QUEUED)


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(State, State)))
def test_each_server_move_is_allowed_or_refused(current: State, wanted: State) -> None:
    if (current, wanted) in SERVER_ALLOWED:
        assert check_server_move(current, wanted) is wanted
    else:
        with pytest.raises(TransitionError):
            check_server_move(current, wanted)


def test_only_failures_and_timeouts_are_retried() -> None:
    assert {s for s in State if S.QUEUED in SERVER_TRANSITIONS[s]} == {S.FAILED, S.TIMED_OUT}


# --- the state groups --------------------------------------------------------------------------


def test_active_and_final_states_do_not_overlap() -> None:
    assert not ACTIVE & FINAL
    assert {*ACTIVE, *FINAL, S.QUEUED} == set(State)


def test_unsuccessful_states_are_final() -> None:
    assert UNSUCCESSFUL <= FINAL and S.SUCCEEDED not in UNSUCCESSFUL


def test_cancelable_and_touched_states_split_the_way_to_success() -> None:
    assert not CANCELABLE & TOUCHED
    assert {S.QUEUED, *PROGRESS} == CANCELABLE | TOUCHED


def test_every_active_state_has_a_timeout_step() -> None:
    assert set(STEP_OF) == ACTIVE
    assert set(STEP_OF.values()) <= set(Timeouts.model_fields)


# --- failure kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason", "last_active", "kind"),
    [
        (S.TIMED_OUT, "timed_out", S.INSTALLING, "timed_out"),
        (S.TIMED_OUT, "timed_out", S.NOTIFIED, "timed_out"),
        (S.FAILED, "precondition_failed", S.DOWNLOADED, "precondition"),
        (S.FAILED, "connection_lost", S.INSTALLING, "download_failed"),
        (S.FAILED, "invalid_uri", S.NOTIFIED, "download_failed"),
        (S.FAILED, None, S.DOWNLOADING, "download_failed"),
        (S.FAILED, "update_failed", S.NOTIFIED, "download_failed"),
        (S.FAILED, "signature_invalid", S.DOWNLOADING, "failed"),
        (S.FAILED, "update_failed", S.INSTALLING, "failed"),
        (S.ROLLED_BACK, "health_check_failed", S.VERIFYING, "failed"),
        (S.FAILED, None, None, "failed"),
    ],
)
def test_a_failure_falls_into_the_retry_kind_the_policy_names(
    state: State, reason: str | None, last_active: State | None, kind: str
) -> None:
    assert failure_kind(state, reason, last_active) == kind


def test_failure_kinds_accept_the_plain_strings_the_database_holds() -> None:
    assert failure_kind("timed_out", None, None) == "timed_out"  # type: ignore[arg-type]
    assert failure_kind("failed", None, "downloading") == "download_failed"  # type: ignore[arg-type]


def test_every_failure_kind_is_a_retry_rule_name() -> None:
    kinds = {failure_kind(s, r, a) for s in UNSUCCESSFUL for r in [None, *Reason] for a in State}
    assert kinds <= set(get_args(FailureKind)) - {"all"}


def test_reasons_are_unique_snake_case_names() -> None:
    values = [str(reason) for reason in Reason]
    assert len(values) == len(set(values))
    assert all(value.isidentifier() and value == value.lower() for value in values)
