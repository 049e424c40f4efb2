"""The simulated A/B firmware update, phase by phase, with each update fault."""

from __future__ import annotations

import pytest

from fleetkeeper.sim.catalogue import image_sha256
from fleetkeeper.sim.update import (
    FINAL,
    TRANSITIONS,
    UNTOUCHED,
    Event,
    Firmware,
    Phase,
    Update,
    UpdateError,
    next_event,
    result,
    start,
    step,
    switch_back,
)

GOOD = image_sha256("thermo-v2", "2.4.0")


def run(
    defects: frozenset[str] = frozenset(), downloaded: str = GOOD
) -> tuple[Update, Firmware, list[Phase]]:
    firmware = Firmware(a="2.3.0", b=None)
    job = start(firmware, "2.4.0", GOOD, "cmd-1")
    phases = [job.phase]
    while not job.done:
        job, firmware = step(job, firmware, next_event(job, defects, downloaded))
        phases.append(job.phase)
    return job, firmware, phases


def test_a_healthy_update_lands_in_the_other_slot_and_commits() -> None:
    job, firmware, phases = run()
    assert phases == [
        Phase.DOWNLOADING,
        Phase.VERIFYING,
        Phase.INSTALLING,
        Phase.REBOOTING,
        Phase.HEALTH_CHECK,
        Phase.COMMITTED,
    ]
    assert (firmware.active, firmware.version, firmware.a, firmware.trial) == (
        "b",
        "2.4.0",
        "2.3.0",
        False,
    )
    assert result(job, firmware) == (
        "succeeded",
        {"version": "2.4.0", "previous": "2.3.0", "slot": "b"},
    )


def test_a_corrupt_download_fails_verification_and_changes_nothing() -> None:
    job, firmware, phases = run(frozenset({"update_download_corrupt"}))
    assert phases[-1] is Phase.FAILED
    assert Phase.INSTALLING not in phases
    assert firmware == Firmware(a="2.3.0", b=None)
    state, outcome = result(job, firmware)
    assert state == "failed"
    assert outcome["error"] == "checksum_mismatch"
    assert outcome["rolled_back"] is False
    assert outcome["version"] == "2.3.0"


def test_a_checksum_the_operator_got_wrong_fails_the_same_way() -> None:
    job, _, phases = run(downloaded="0" * 64)
    assert phases[-1] is Phase.FAILED
    assert job.error == "checksum_mismatch"


def test_a_failed_install_keeps_the_running_slot() -> None:
    job, firmware, phases = run(frozenset({"update_install_fail"}))
    assert phases[-1] is Phase.FAILED
    assert Phase.REBOOTING not in phases
    assert (firmware.active, firmware.version, firmware.b) == ("a", "2.3.0", None)
    assert result(job, firmware)[1]["error"] == "install_failed"


def test_a_failed_health_check_falls_back_to_the_old_slot() -> None:
    job, firmware, phases = run(frozenset({"update_health_fail"}))
    assert phases[-3:] == [Phase.HEALTH_CHECK, Phase.ROLLING_BACK, Phase.ROLLED_BACK]
    assert (firmware.active, firmware.version, firmware.trial) == ("a", "2.3.0", False)
    assert firmware.b == "2.4.0"  # the bad release stays in the inactive slot
    state, outcome = result(job, firmware)
    assert state == "failed"
    assert outcome == {
        "error": "health_check_failed",
        "version": "2.3.0",
        "attempted": "2.4.0",
        "rolled_back": True,
    }


def test_the_next_update_goes_into_the_slot_not_running() -> None:
    _, firmware, _ = run()
    job = start(firmware, "2.5.0", "x")
    assert job.previous == "2.4.0"
    job = Update(None, "2.5.0", "2.4.0", "x", Phase.INSTALLING)
    _, after = step(job, firmware, Event.INSTALLED)
    assert (after.a, after.b, after.active) == ("2.5.0", "2.4.0", "b")


def test_a_device_on_trial_takes_no_new_update() -> None:
    with pytest.raises(UpdateError, match="checking its last update"):
        start(Firmware(a="1", b="2", active="b", trial=True), "3", "x")


def test_an_event_that_does_not_fit_the_phase_is_refused() -> None:
    job = start(Firmware(a="1", b=None), "2", "x")
    with pytest.raises(UpdateError, match="no transition from downloading on healthy"):
        step(job, Firmware(a="1", b=None), Event.HEALTHY)


def test_every_phase_is_reachable_and_final_phases_lead_nowhere() -> None:
    reached = {Phase.DOWNLOADING, *TRANSITIONS.values()}
    assert reached == set(Phase)
    assert not any(phase in FINAL for phase, _ in TRANSITIONS)


def test_a_result_before_the_end_is_an_error() -> None:
    firmware = Firmware(a="1", b=None)
    with pytest.raises(UpdateError, match="still downloading"):
        result(start(firmware, "2", "x"), firmware)


def test_a_rollback_boots_the_other_slot_when_it_holds_the_release() -> None:
    _, firmware, _ = run()
    back = switch_back(firmware, "2.3.0")
    assert (back.active, back.version, back.b) == ("a", "2.3.0", "2.4.0")


def test_a_rollback_to_a_release_the_other_slot_does_not_hold_is_refused() -> None:
    with pytest.raises(UpdateError, match=r"holds nothing, not 2\.2\.0"):
        switch_back(Firmware(a="2.3.0", b=None), "2.2.0")


def test_only_downloading_and_verifying_leave_the_slots_untouched() -> None:
    firmware = Firmware(a="2.3.0", b=None)
    job = start(firmware, "2.4.0", GOOD)
    while job.phase in UNTOUCHED:
        job, after = step(job, firmware, next_event(job, frozenset(), GOOD))
        assert after == firmware
    assert job.phase is Phase.INSTALLING
