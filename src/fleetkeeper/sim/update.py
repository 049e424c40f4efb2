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

An `update` command and a deployment's `update` job both drive this machine
(`sim.firmware`). A rollback the server asks for later is no update: the device boots its
other slot again when that slot still holds the release it ran before (`switch_back`).
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
UNTOUCHED = frozenset({Phase.DOWNLOADING, Phase.VERIFYING})  # no slot written: it may be dropped
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
class Update:
    """One A/B update under way; `command_id`: the `update` command that asked for it."""

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
) -> Update:
    if firmware.trial:
        raise UpdateError("the device is still checking its last update")
    return Update(command_id, version, firmware.version, expected_sha256)


def switch_back(firmware: Firmware, version: str) -> Firmware:
    """Boot the other slot, which must hold `version` (a rollback the server asked for)."""
    if firmware.trial:
        raise UpdateError("the device is still checking its last update")
    if firmware.slot(firmware.inactive) != version:
        held = firmware.slot(firmware.inactive) or "nothing"
        raise UpdateError(f"the other slot holds {held}, not {version}")
    return replace(firmware, active=firmware.inactive)


def next_event(update: Update, defects: frozenset[str], downloaded_sha256: str) -> Event:
    """What happens in the update's phase on a device with these defects."""
    phase = update.phase
    if phase is Phase.DOWNLOADING:
        return Event.DOWNLOADED
    if phase is Phase.VERIFYING:
        corrupt = "update_download_corrupt" in defects
        match = downloaded_sha256 == update.expected_sha256 and not corrupt
        return Event.VERIFIED if match else Event.CHECKSUM_MISMATCH
    if phase is Phase.INSTALLING:
        return Event.INSTALL_FAILED if "update_install_fail" in defects else Event.INSTALLED
    if phase is Phase.HEALTH_CHECK:
        return Event.UNHEALTHY if "update_health_fail" in defects else Event.HEALTHY
    if phase in (Phase.REBOOTING, Phase.ROLLING_BACK):
        return Event.BOOTED
    raise UpdateError(f"the update is over ({phase})")


def step(update: Update, firmware: Firmware, event: Event) -> tuple[Update, Firmware]:
    """Apply `event`: the update's next phase and the slots as they are after it."""
    target = TRANSITIONS.get((update.phase, event))
    if target is None:
        raise UpdateError(f"no transition from {update.phase} on {event}")
    if event is Event.INSTALLED:
        firmware = firmware.with_slot(firmware.inactive, update.version)
    elif event is Event.INSTALL_FAILED:
        firmware = firmware.with_slot(firmware.inactive, None)  # a half-written slot
    elif event is Event.BOOTED and update.phase is Phase.REBOOTING:
        firmware = replace(firmware, active=firmware.inactive, trial=True)
    elif event is Event.HEALTHY:
        firmware = replace(firmware, trial=False)
    elif event is Event.UNHEALTHY:
        # The bootloader falls back to the slot that last booted well; the bad one stays put.
        firmware = replace(firmware, active=firmware.inactive, trial=False)
    error = _ERRORS.get(event, update.error)
    return replace(update, phase=target, error=error), firmware


def result(update: Update, firmware: Firmware) -> tuple[str, dict[str, object]]:
    """The command's (state, result) once the update is over."""
    if update.phase is Phase.COMMITTED:
        return "succeeded", {
            "version": firmware.version,
            "previous": update.previous,
            "slot": firmware.active,
        }
    if not update.done:
        raise UpdateError(f"the update is still {update.phase}")
    out: dict[str, object] = {
        "error": update.error or "update_failed",
        "version": firmware.version,
        "attempted": update.version,
        "rolled_back": update.phase is Phase.ROLLED_BACK,
    }
    return "failed", out


_ERRORS: dict[Event, str] = {
    Event.DOWNLOAD_FAILED: "download_failed",
    Event.CHECKSUM_MISMATCH: "checksum_mismatch",
    Event.INSTALL_FAILED: "install_failed",
    Event.UNHEALTHY: "health_check_failed",
}
