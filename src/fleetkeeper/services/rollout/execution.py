"""One device's execution of a deployment: states, who may move it where, and why it failed.

    queued ─► notified ─► downloading ─► downloaded ─► installing ─► rebooting ─► verifying
       │          │            │              │             │             │            │
       │          └────────────┴──── canceled (the device agreed) ◄──────┘            ▼
       │                                                                          succeeded
       └─► skipped (incompatible, superseded)             any active ─► failed | timed_out
                                                      installing…verifying ─► rolled_back
    failed | timed_out ─► queued (a retry)            succeeded ─► rolling_back ─► rolled_back

The device reports its own progress and may skip intermediate steps (a package without a
reboot goes installing ─► succeeded), but never goes backwards. The server queues, notifies,
times out, retries, skips, cancels queued executions and asks for rollbacks. Failure reasons come
from a fixed taxonomy (the LwM2M firmware-update result codes plus ours), with free text beside.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    NOTIFIED = "notified"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    CANCELED = "canceled"
    SKIPPED = "skipped"


# In the order a device goes through them; a device may jump forward, never back.
PROGRESS = (
    State.NOTIFIED,
    State.DOWNLOADING,
    State.DOWNLOADED,
    State.INSTALLING,
    State.REBOOTING,
    State.VERIFYING,
)
# The device is working on it: counts against max_in_progress.
ACTIVE = frozenset(PROGRESS) | {State.ROLLING_BACK}
FINAL = frozenset(
    {
        State.SUCCEEDED,
        State.FAILED,
        State.TIMED_OUT,
        State.ROLLED_BACK,
        State.CANCELED,
        State.SKIPPED,
    }
)
UNSUCCESSFUL = frozenset({State.FAILED, State.TIMED_OUT, State.ROLLED_BACK})
# Until here a device can still drop the job without having touched its firmware.
CANCELABLE = frozenset({State.QUEUED, State.NOTIFIED, State.DOWNLOADING, State.DOWNLOADED})
# Past here the new firmware may be running: a failure may have changed the running slot.
TOUCHED = frozenset({State.INSTALLING, State.REBOOTING, State.VERIFYING})

_DEVICE_FINAL = {
    State.SUCCEEDED: frozenset({State.INSTALLING, State.REBOOTING, State.VERIFYING}),
    State.FAILED: frozenset(PROGRESS) | {State.ROLLING_BACK},
    State.ROLLED_BACK: TOUCHED | {State.ROLLING_BACK},
    State.CANCELED: frozenset(CANCELABLE - {State.QUEUED}),
}


def _device_moves() -> dict[State, frozenset[State]]:
    moves: dict[State, set[State]] = {s: set() for s in State}
    for i, state in enumerate(PROGRESS):
        moves[state].update(PROGRESS[i + 1 :])
    for final, sources in _DEVICE_FINAL.items():
        for source in sources:
            moves[source].add(final)
    # A package that needs no download or install step may say succeeded straight away.
    moves[State.NOTIFIED].add(State.SUCCEEDED)
    moves[State.DOWNLOADING].add(State.SUCCEEDED)
    moves[State.DOWNLOADED].add(State.SUCCEEDED)
    return {state: frozenset(targets) for state, targets in moves.items()}


# What a device may report, from each state.
DEVICE_TRANSITIONS: dict[State, frozenset[State]] = _device_moves()
# A device repeats the step it is in to report progress (`{"state": "downloading",
# "progress": 42}`) or to resend a report whose answer it lost: not a move, but not refused.
REPEATABLE = frozenset(PROGRESS) - {State.NOTIFIED}

# What the server itself does.
SERVER_TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.NOTIFIED, State.CANCELED, State.SKIPPED}),
    State.NOTIFIED: frozenset({State.TIMED_OUT, State.CANCELED}),
    State.DOWNLOADING: frozenset({State.TIMED_OUT}),
    State.DOWNLOADED: frozenset({State.TIMED_OUT}),
    State.INSTALLING: frozenset({State.TIMED_OUT}),
    State.REBOOTING: frozenset({State.TIMED_OUT}),
    State.VERIFYING: frozenset({State.TIMED_OUT}),
    State.SUCCEEDED: frozenset({State.ROLLING_BACK}),
    State.FAILED: frozenset({State.QUEUED}),
    State.TIMED_OUT: frozenset({State.QUEUED}),
    State.ROLLING_BACK: frozenset({State.TIMED_OUT}),
    State.ROLLED_BACK: frozenset(),
    State.CANCELED: frozenset(),
    State.SKIPPED: frozenset(),
}

# Which step's timeout applies while an execution sits in a state (policy.timeouts.<step>).
STEP_OF: dict[State, str] = {
    State.NOTIFIED: "notified",
    State.DOWNLOADING: "download",
    State.DOWNLOADED: "install",
    State.INSTALLING: "install",
    State.REBOOTING: "reboot",
    State.VERIFYING: "verify",
    State.ROLLING_BACK: "reboot",
}


class Reason(StrEnum):
    """Why an execution did not succeed. The first eight follow LwM2M's update results."""

    NOT_ENOUGH_STORAGE = "not_enough_storage"
    OUT_OF_MEMORY = "out_of_memory"
    CONNECTION_LOST = "connection_lost"
    INTEGRITY_CHECK_FAILURE = "integrity_check_failure"
    UNSUPPORTED_PACKAGE = "unsupported_package"
    INVALID_URI = "invalid_uri"
    UPDATE_FAILED = "update_failed"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    SIGNATURE_INVALID = "signature_invalid"
    HEALTH_CHECK_FAILED = "health_check_failed"
    PRECONDITION_FAILED = "precondition_failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    INCOMPATIBLE_MODEL = "incompatible_model"
    INCOMPATIBLE_HARDWARE = "incompatible_hardware"
    BASE_VERSION_MISMATCH = "base_version_mismatch"
    ALREADY_INSTALLED = "already_installed"
    SUPERSEDED = "superseded"
    DEVICE_RETIRED = "device_retired"
    DEVICE_INACTIVE = "device_inactive"
    ROLLBACK_UNAVAILABLE = "rollback_unavailable"
    ROLLBACK_REQUESTED = "rollback_requested"  # an operator's or an abort's rollback, done
    COMMAND_FAILED = "command_failed"


DOWNLOAD_REASONS = frozenset({Reason.CONNECTION_LOST, Reason.INVALID_URI})


def failure_kind(state: State, reason: str | None, last_active: State | None) -> str:
    """The retry category of an unsuccessful execution (policy.retries[].on)."""
    if state == State.TIMED_OUT:
        return "timed_out"
    if reason == Reason.PRECONDITION_FAILED:
        return "precondition"
    if reason in DOWNLOAD_REASONS:
        return "download_failed"
    # Without a reason that says otherwise, failing before the download finished is one.
    unexplained = reason is None or reason == Reason.UPDATE_FAILED
    if unexplained and last_active in (State.NOTIFIED, State.DOWNLOADING):
        return "download_failed"
    return "failed"


class TransitionError(ValueError):
    def __init__(self, current: str, wanted: str) -> None:
        super().__init__(f"an execution that is {current} cannot become {wanted}")
        self.current = current
        self.wanted = wanted


def device_may(current: State, wanted: State) -> bool:
    return wanted in DEVICE_TRANSITIONS[current] or (wanted == current and current in REPEATABLE)


def check_device_move(current: str, wanted: str) -> State:
    """The state a device report moves to, or TransitionError for an impossible one."""
    try:
        src, dst = State(current), State(wanted)
    except ValueError:
        raise TransitionError(current, wanted) from None
    if not device_may(src, dst):
        raise TransitionError(current, wanted)
    return dst


def check_server_move(current: str, wanted: State) -> State:
    try:
        src = State(current)
    except ValueError:
        raise TransitionError(current, wanted) from None
    if wanted not in SERVER_TRANSITIONS[src]:
        raise TransitionError(current, wanted)
    return wanted
