"""The device's job state machine, pure: steps, reports, cancels, closings and restarts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fleetkeeper.agent.update.machine import (
    FINAL_STATES,
    NEEDS_REASON,
    ROLLBACK_REASON,
    TABLES,
    Event,
    Readings,
    Report,
    Step,
    UndefinedMove,
    UpdateState,
    advance,
    progress,
    queue,
    resume_event,
    sent,
    start,
    storage_shortfall,
    timeout,
    unmet_preconditions,
)
from fleetkeeper.protocol.messages import ArtifactRef, Command, Job

E = Event
REPORTABLE = {"downloading", "downloaded", "installing", "rebooting", "verifying"} | FINAL_STATES
ARTIFACT = ArtifactRef(
    id="art-1", version="2.4.0", sha256="ab" * 32, signature="sig", key_id="k", url="/a"
)


def job(kind: str = "update", **fields: Any) -> Job:
    defaults: dict[str, Any] = {"artifact": ARTIFACT} if kind == "update" else {}
    if kind == "command":
        defaults["command"] = Command(id="j-1", name="ping")
    if kind == "rollback":
        defaults["rollback_to"] = "2.3.0"
    return Job(id="j-1", deployment_id="d-1", kind=kind, state="notified", **defaults | fields)


def run(state: UpdateState, *events: Event, version: str | None = "2.4.0") -> UpdateState:
    for event in events:
        state = advance(state, event, version=version)
    return state


def reported(state: UpdateState) -> list[str]:
    return [r.state for r in state.outbox]


def delivered(state: UpdateState) -> UpdateState:
    """`state` once the server took every report."""
    while state.outbox:
        state = sent(state)
    return state


HAPPY = (E.READY, E.DOWNLOADED, E.VERIFIED, E.GO, E.INSTALLED, E.SWITCHED, E.RUNS_NEW, E.HEALTHY)


# --- the tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_every_report_is_a_state_the_protocol_knows_and_failures_have_a_reason(kind: str) -> None:
    for (_, event), move in TABLES[kind].items():
        if move.report is not None:
            assert move.report in REPORTABLE
        if move.report in NEEDS_REASON:
            assert move.reason, f"{kind}: {event} reports {move.report} without a reason"
        if move.report in FINAL_STATES:
            assert move.to is Step.DONE


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_every_step_answers_a_cancel_and_a_closing(kind: str) -> None:
    steps = {step for step, _ in TABLES[kind]}
    for step in steps:
        assert (step, E.CANCEL) in TABLES[kind]
        assert (step, E.CLOSED) in TABLES[kind]


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_every_step_can_reach_done(kind: str) -> None:
    table = TABLES[kind]
    reach = {Step.DONE}
    changed = True
    while changed:
        changed = False
        for (step, _), move in table.items():
            if move.to in reach and step not in reach:
                reach.add(step)
                changed = True
    assert {step for step, _ in table} <= reach


def test_an_event_a_step_does_not_know_is_a_bug() -> None:
    with pytest.raises(UndefinedMove, match="check has no move on committed"):
        advance(start(job()), E.COMMITTED)


# --- an update ------------------------------------------------------------------------------


def test_a_healthy_update_reports_every_step_and_ends_succeeded_with_its_version() -> None:
    state = start(job())
    reports = []
    for event in (*HAPPY, E.COMMITTED):
        state = advance(state, event, version="2.4.0")
        reports += state.outbox
        state = delivered(state)
    assert [r.state for r in reports] == [
        "downloading",
        "downloaded",
        "installing",
        "rebooting",
        "verifying",
        "succeeded",
    ]
    assert reports[0].progress == 0
    assert reports[-1] == Report("succeeded", version="2.4.0")
    assert all(r.version is None for r in reports[:-1])
    assert state.done and state.result == "succeeded"


def test_an_unhealthy_update_goes_back_and_reports_rolled_back_with_the_old_version() -> None:
    state = run(start(job()), *HAPPY[:-1])
    state = advance(state, E.UNHEALTHY, detail="the health check exited 3")
    assert state.step is Step.ROLLBACK and state.reason == "health_check_failed"
    state = run(state, E.SWITCHED, E.RUNS_OLD, version="2.3.0")
    assert state.outbox[-1] == Report(
        "rolled_back",
        reason="health_check_failed",
        detail="the health check exited 3",
        version="2.3.0",
    )


def test_a_new_slot_that_does_not_boot_is_rolled_back() -> None:
    state = run(start(job()), *HAPPY[:6])
    state = advance(state, E.RUNS_OLD, detail="slot b did not boot")
    state = run(state, E.SWITCHED, E.RUNS_OLD, version="2.3.0")
    assert state.outbox[-1].state == "rolled_back"
    assert state.outbox[-1].detail == "slot b did not boot"


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ((E.BLOCKED,), "precondition_failed"),
        ((E.NO_SPACE,), "not_enough_storage"),
        ((E.UNTRUSTED,), "signature_invalid"),
        ((E.UNSUPPORTED,), "unsupported_package"),
        ((E.READY, E.FAILED), "connection_lost"),
        ((E.READY, E.DOWNLOADED, E.CORRUPT), "integrity_check_failure"),
        ((E.READY, E.DOWNLOADED, E.UNTRUSTED), "signature_invalid"),
        ((E.READY, E.DOWNLOADED, E.VERIFIED, E.EXPIRED), "timed_out"),
        ((E.READY, E.DOWNLOADED, E.VERIFIED, E.GO, E.FAILED), "update_failed"),
    ],
)
def test_a_failure_before_the_switch_reports_failed_with_its_reason(
    events: tuple[Event, ...], reason: str
) -> None:
    state = run(start(job()), *events, version="2.3.0")
    assert state.done
    assert (state.outbox[-1].state, state.outbox[-1].reason) == ("failed", reason)
    assert state.outbox[-1].version == "2.3.0"


def test_an_event_reason_beats_the_table_default() -> None:
    state = advance(advance(start(job()), E.READY), E.FAILED, reason="invalid_uri", detail="404")
    assert (state.outbox[-1].reason, state.outbox[-1].detail) == ("invalid_uri", "404")


# --- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("events", [(), (E.READY,), (E.READY, E.DOWNLOADED, E.VERIFIED)])
def test_a_cancel_before_installing_ends_the_job_canceled(events: tuple[Event, ...]) -> None:
    state = advance(run(start(job()), *events), E.CANCEL, version="2.3.0")
    assert state.done and state.outbox[-1] == Report("canceled", version="2.3.0")


def test_a_cancel_once_installing_is_refused_in_the_next_report_only() -> None:
    state = delivered(run(start(job()), E.READY, E.DOWNLOADED, E.VERIFIED, E.GO))
    state = advance(state, E.CANCEL)
    assert state.step is Step.INSTALL and state.cancel_refused and not state.outbox
    state = advance(state, E.INSTALLED)
    assert state.outbox == (Report("rebooting", cancel_refused=True),)
    state = advance(delivered(state), E.SWITCHED)
    state = advance(state, E.RUNS_NEW)
    assert state.outbox == (Report("verifying"),)


def test_a_rollback_job_is_never_canceled() -> None:
    state = advance(start(job("rollback")), E.CANCEL)
    assert state.step is Step.CHECK and state.cancel_refused


# --- the server closing the job -------------------------------------------------------------


def test_a_job_closed_before_the_switch_ends_silently() -> None:
    state = run(start(job()), E.READY)
    state = advance(state, E.CLOSED)
    assert state.done and state.closed and not state.outbox


@pytest.mark.parametrize("count", [5, 6, 7])
def test_a_job_closed_after_the_switch_returns_to_the_committed_slot_silently(count: int) -> None:
    state = advance(run(start(job()), *HAPPY[:count]), E.CLOSED)
    assert state.step is Step.ROLLBACK and state.closed and not state.outbox
    state = run(state, E.SWITCHED, E.RUNS_OLD)
    assert state.done and not state.outbox and state.result == "rolled_back"


# --- progress -------------------------------------------------------------------------------


def test_progress_is_reported_every_ten_percent_and_coalesced_while_unsent() -> None:
    state = delivered(advance(start(job()), E.READY))
    seen = []
    for received in range(0, 1001, 25):
        state = progress(state, received, 1000)
        if state.outbox:
            seen.append(state.outbox[-1].progress)
            state = sent(state)
    assert seen == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    unsent = progress(progress(state, 0, 1), 0, 1)
    assert unsent == state  # 100 % is what `downloaded` says, not a progress report


def test_an_unsent_progress_report_is_replaced_by_the_next() -> None:
    state = advance(start(job()), E.READY)
    state = progress(progress(state, 15, 100), 35, 100)
    assert [(r.state, r.progress) for r in state.outbox] == [("downloading", 35)]


def test_a_final_report_replaces_the_unsent_steps_before_it_keeping_a_refused_cancel() -> None:
    outbox = (Report("installing"), Report("rebooting", cancel_refused=True))
    assert queue(outbox, Report("failed", reason="update_failed")) == (
        Report("failed", reason="update_failed", cancel_refused=True),
    )


# --- restarts -------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [6, 7])  # boot, health
def test_a_restart_after_the_switch_is_a_boot_of_the_slot_that_runs(count: int) -> None:
    state = replace(run(start(job()), *HAPPY[:count]), target="b")
    assert resume_event(state, "b") == (E.RUNS_NEW, "slot b booted")
    meaning = resume_event(state, "a")
    assert meaning is not None and meaning[0] is E.RUNS_OLD and "slot a" in meaning[1]


def test_a_restart_before_the_switch_means_nothing_the_step_runs_again() -> None:
    for count in range(5):
        assert resume_event(run(start(job()), *HAPPY[:count]), "a") is None


def test_a_command_cut_short_by_a_restart_failed_unless_it_was_a_reboot() -> None:
    running = advance(start(job("command")), E.READY)
    assert resume_event(running, None) == (E.RESTARTED, "the agent restarted while the command ran")
    reboot = advance(start(job("command", command=Command(id="j-1", name="reboot"))), E.READY)
    assert resume_event(reboot, None) == (E.RAN, "the device restarted")


# --- rollback and command jobs --------------------------------------------------------------


def test_a_rollback_job_reports_rolled_back_once_the_old_slot_runs_committed() -> None:
    state = run(start(job("rollback")), E.READY, E.SWITCHED, E.RUNS_NEW, version="2.3.0")
    assert state.step is Step.COMMIT and not state.outbox
    state = advance(state, E.COMMITTED, version="2.3.0")
    assert state.outbox == (Report("rolled_back", reason=ROLLBACK_REASON, version="2.3.0"),)


def test_a_rollback_without_the_version_in_the_other_slot_is_unavailable() -> None:
    state = advance(start(job("rollback")), E.UNSUPPORTED, detail="slot b holds 2.4.1")
    assert state.outbox[-1].reason == "rollback_unavailable"


def test_a_rollback_whose_slot_does_not_boot_goes_back_and_fails() -> None:
    state = run(start(job("rollback")), E.READY, E.SWITCHED, E.RUNS_OLD, E.SWITCHED, E.RUNS_OLD)
    assert (state.outbox[-1].state, state.outbox[-1].reason) == ("failed", "rollback_unavailable")


def test_a_command_job_reports_succeeded_or_failed_with_command_failed() -> None:
    ok = run(start(job("command")), E.READY, E.RAN)
    assert reported(ok) == ["succeeded"]
    bad = run(start(job("command")), E.READY, E.FAILED)
    assert (bad.outbox[-1].state, bad.outbox[-1].reason) == ("failed", "command_failed")


# --- preconditions --------------------------------------------------------------------------

PRE = {"min_battery": 20, "or_on_power": True, "min_free_storage": 1000, "not_busy": True}


@pytest.mark.parametrize(
    ("readings", "problem"),
    [
        (Readings(battery=12, on_power=False), "battery at 12 % is below 20 %"),
        (Readings(battery=12, on_power=None), "not on power"),
        (Readings(free_storage=10), "10 bytes of storage free, 1000 required"),
        (Readings(busy=True), "busy"),
    ],
)
def test_an_unmet_precondition_is_named(readings: Readings, problem: str) -> None:
    problems = unmet_preconditions(PRE, readings)
    assert len(problems) == 1 and problem in problems[0]


@pytest.mark.parametrize(
    "readings",
    [
        Readings(),  # nothing measurable: everything counts as met
        Readings(battery=12, on_power=True),
        Readings(battery=20, on_power=False, free_storage=1000, busy=False),
    ],
)
def test_met_or_unmeasurable_preconditions_pass(readings: Readings) -> None:
    assert unmet_preconditions(PRE, readings) == []


def test_a_low_battery_on_power_fails_when_power_does_not_count() -> None:
    problems = unmet_preconditions({"min_battery": 20, "or_on_power": False}, Readings(10, True))
    assert problems == ["battery at 10 % is below 20 %"]


def test_storage_shortfall_names_what_is_missing() -> None:
    assert storage_shortfall(100, 250) == "the download needs 250 more bytes, 100 are free"
    assert storage_shortfall(None, 250) is None and storage_shortfall(300, 250) is None


def test_a_job_without_timeouts_gets_the_documented_defaults() -> None:
    assert timeout(job(), "verify") == 600 and timeout(job(timeouts={"verify": 5}), "verify") == 5
