"""A simulated A/B firmware update: a transition table and plain functions, no I/O.

The device has two firmware slots. It runs from the active one and writes a new release into
the other, so a bad release never leaves it without working firmware:

    downloading ─downloaded─► verifying ─verified─► installing ─installed─► rebooting
         │                       │                      │                      │ booted
         └ download_failed       └ checksum_mismatch    └ install_failed       ▼
                    ▼                    ▼                    ▼            health_check
                 failed               failed               failed        │healthy  │unhealthy
                                                                          ▼         ▼
                                                                     committed  rolling_back
                                                                                    │ booted
                                                                                    ▼
                                                                               rolled_back

`failed` keeps the old firmware active (nothing was switched); `rolled_back` means the device
booted the new release, found it unhealthy and its bootloader fell back to the old slot. Which
event happens in a phase is decided by the device's defects (`update_download_corrupt`,
`update_install_fail`, `update_health_fail`): see `next_event`.

Today an `update` command drives this (docs/simulator.md); deployments will drive the same
machine once the server has them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Phase(StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    HEALTH_CHECK = "health_check"
    ROLLING_BACK = "rolling_back"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class Event(StrEnum):
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download_failed"
    VERIFIED = "verified"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    INSTALLED = "installed"
    INSTALL_FAILED = "install_failed"
    BOOTED = "booted"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.DOWNLOADING, Event.DOWNLOADED): Phase.VERIFYING,
    (Phase.DOWNLOADING, Event.DOWNLOAD_FAILED): Phase.FAILED,
    (Phase.VERIFYING, Event.VERIFIED): Phase.INSTALLING,
    (Phase.VERIFYING, Event.CHECKSUM_MISMATCH): Phase.FAILED,
    (Phase.INSTALLING, Event.INSTALLED): Phase.REBOOTING,
    (Phase.INSTALLING, Event.INSTALL_FAILED): Phase.FAILED,
    (Phase.REBOOTING, Event.BOOTED): Phase.HEALTH_CHECK,
    (Phase.HEALTH_CHECK, Event.HEALTHY): Phase.COMMITTED,
    (Phase.HEALTH_CHECK, Event.UNHEALTHY): Phase.ROLLING_BACK,
    (Phase.ROLLING_BACK, Event.BOOTED): Phase.ROLLED_BACK,
}
FINAL = frozenset({Phase.COMMITTED, Phase.FAILED, Phase.ROLLED_BACK})
OFFLINE = frozenset({Phase.REBOOTING, Phase.ROLLING_BACK})  # the device is down meanwhile
SLOTS = ("a", "b")


class UpdateError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Firmware:
    """The two slots: what each holds, which one boots, and whether it is still on trial."""

    a: str | None
    b: str | None
    active: str = "a"
    trial: bool = False  # booted a new release that has not passed its health check yet

    @property
    def inactive(self) -> str:
        return "b" if self.active == "a" else "a"

    @property
    def version(self) -> str:
        running = self.slot(self.active)
        assert running is not None
        return running

    def slot(self, name: str) -> str | None:
        return self.a if name == "a" else self.b

    def with_slot(self, name: str, version: str | None) -> Firmware:
        return replace(self, a=version) if name == "a" else replace(self, b=version)


@dataclass(frozen=True, slots=True)
class UpdateJob:
    command_id: str | None
    version: str
    previous: str
    expected_sha256: str
    phase: Phase = Phase.DOWNLOADING
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.phase in FINAL


def start(
    firmware: Firmware, version: str, expected_sha256: str, command_id: str | None = None
) -> UpdateJob:
    if firmware.trial:
        raise UpdateError("the device is still checking its last update")
    return UpdateJob(command_id, version, firmware.version, expected_sha256)


def next_event(job: UpdateJob, defects: frozenset[str], downloaded_sha256: str) -> Event:
    """What happens in the job's phase on a device with these defects."""
    phase = job.phase
    if phase is Phase.DOWNLOADING:
        return Event.DOWNLOADED
    if phase is Phase.VERIFYING:
        corrupt = "update_download_corrupt" in defects
        match = downloaded_sha256 == job.expected_sha256 and not corrupt
        return Event.VERIFIED if match else Event.CHECKSUM_MISMATCH
    if phase is Phase.INSTALLING:
        return Event.INSTALL_FAILED if "update_install_fail" in defects else Event.INSTALLED
    if phase is Phase.HEALTH_CHECK:
        return Event.UNHEALTHY if "update_health_fail" in defects else Event.HEALTHY
    if phase in (Phase.REBOOTING, Phase.ROLLING_BACK):
        return Event.BOOTED
    raise UpdateError(f"the update is over ({phase})")


def step(job: UpdateJob, firmware: Firmware, event: Event) -> tuple[UpdateJob, Firmware]:
    """Apply `event`: the job's next phase and the slots as they are after it."""
    target = TRANSITIONS.get((job.phase, event))
    if target is None:
        raise UpdateError(f"no transition from {job.phase} on {event}")
    if event is Event.INSTALLED:
        firmware = firmware.with_slot(firmware.inactive, job.version)
    elif event is Event.INSTALL_FAILED:
        firmware = firmware.with_slot(firmware.inactive, None)  # a half-written slot
    elif event is Event.BOOTED and job.phase is Phase.REBOOTING:
        firmware = replace(firmware, active=firmware.inactive, trial=True)
    elif event is Event.HEALTHY:
        firmware = replace(firmware, trial=False)
    elif event is Event.UNHEALTHY:
        # The bootloader falls back to the slot that last booted well; the bad one stays put.
        firmware = replace(firmware, active=firmware.inactive, trial=False)
    error = _ERRORS.get(event, job.error)
    return replace(job, phase=target, error=error), firmware


def result(job: UpdateJob, firmware: Firmware) -> tuple[str, dict[str, object]]:
    """The command's (state, result) once the job is over."""
    if job.phase is Phase.COMMITTED:
        return "succeeded", {
            "version": firmware.version,
            "previous": job.previous,
            "slot": firmware.active,
        }
    if not job.done:
        raise UpdateError(f"the update is still {job.phase}")
    out: dict[str, object] = {
        "error": job.error or "update_failed",
        "version": firmware.version,
        "attempted": job.version,
        "rolled_back": job.phase is Phase.ROLLED_BACK,
    }
    return "failed", out


_ERRORS: dict[Event, str] = {
    Event.DOWNLOAD_FAILED: "download_failed",
    Event.CHECKSUM_MISMATCH: "checksum_mismatch",
    Event.INSTALL_FAILED: "install_failed",
    Event.UNHEALTHY: "health_check_failed",
}
