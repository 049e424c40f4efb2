"""A job's life on the device as a pure state machine: steps, events and transition tables.

The driver (driver.py) performs the action of the current step, turns what happened into an
`Event`, and asks `advance` for the next step; `advance` also queues the reports the server
must hear on the way (docs/ota.md, "Reporting progress"). Nothing here does I/O, so every path
can be tested without a server, a disk or a clock.

An `update` job:

    check ─ready─► download ─downloaded─► verify ─verified─► downloaded ─go─► install
                                                  (report downloaded)  (report installing)
    install ─installed─► switch ─switched─► boot ─runs_new─► health ─healthy─► commit
      (report rebooting)       (trial slot)       (report verifying)             │ committed
                                                  │ runs_old      │ unhealthy    ▼
                                                  ▼               ▼          succeeded
                                          rollback ─switched─► boot_back ─runs_old─► rolled_back

Any step before `install` ends in `failed` when its check fails, or in `canceled` when the
server asks; from `install` on a cancel is refused (the next report says so). A `rollback` job
switches to the other slot when it holds `rollback_to` and commits once it booted; a `command`
job runs one command. The server closing the job (`closed`) ends the work silently, and once the
boot pointer has moved it also returns to the committed slot: an update the server no longer
follows is not kept.

Every step is persisted before its action runs, so each action must be safe to repeat: after a
restart the driver redoes the step it was in, except where `resume_event` says what the restart
itself means (a boot of the trial slot, or a command cut short).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from fleetkeeper.protocol.messages import Job


class Step(StrEnum):
    CHECK = "check"  # preconditions, trust, room: nothing touched yet
    DOWNLOAD = "download"
    VERIFY = "verify"  # size, sha256 and signature of the download
    DOWNLOADED = "downloaded"  # the gate before installing: a cancel, the window's end
    INSTALL = "install"  # into the inactive slot; the committed one still boots
    SWITCH = "switch"  # boot pointer to the new slot, on trial
    BOOT = "boot"  # waiting for the (re)boot into the new slot
    HEALTH = "health"
    COMMIT = "commit"
    ROLLBACK = "rollback"  # boot pointer back to the committed slot
    BOOT_BACK = "boot_back"  # waiting for the committed slot to run again
    RUN = "run"  # a command job's command
    DONE = "done"  # the final report is queued


class Event(StrEnum):
    READY = "ready"
    BLOCKED = "blocked"  # a precondition is not met
    NO_SPACE = "no_space"
    UNTRUSTED = "untrusted"  # unsigned, unknown key or a signature that does not verify
    UNSUPPORTED = "unsupported"  # nothing here can carry out this job
    ALREADY = "already"  # a rollback to the version already running
    DOWNLOADED = "downloaded"
    CORRUPT = "corrupt"
    VERIFIED = "verified"
    GO = "go"
    EXPIRED = "expired"  # the maintenance window ended before installing
    INSTALLED = "installed"
    SWITCHED = "switched"
    RUNS_NEW = "runs_new"  # the slot switched to is the one running
    RUNS_OLD = "runs_old"  # the committed slot runs (the bootloader fell back)
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    COMMITTED = "committed"
    RAN = "ran"
    RESTARTED = "restarted"  # the agent restarted while a command ran
    FAILED = "failed"  # the step's action failed; the event says why
    CANCEL = "cancel"
    CLOSED = "closed"  # 409 job_closed or 404 unknown_job: the server ended the job


FINAL_STATES = frozenset({"succeeded", "failed", "rolled_back", "canceled"})
NEEDS_REASON = frozenset({"failed", "rolled_back"})
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "download": 1800.0,
    "install": 1800.0,
    "reboot": 600.0,
    "verify": 600.0,
}
PROGRESS_STEP = 10  # percent between two progress reports
# A restart in the middle of these commands is what they were for.
RESTARTING_COMMANDS = frozenset({"reboot"})
# The reason a device gives for a rollback the server asked for (an aborted deployment).
ROLLBACK_REASON = "rollback_requested"


@dataclass(frozen=True)
class Report:
    """One `POST /device/v1/jobs/{id}` body."""

    state: str
    progress: int | None = None
    reason: str | None = None
    detail: str | None = None
    version: str | None = None
    cancel_refused: bool = False

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class UpdateState:
    """Everything a restart needs to carry on with a job; persisted at every step."""

    job: Job
    step: Step = Step.CHECK
    from_slot: str | None = None  # the committed slot when the job started
    from_version: str | None = None
    target: str | None = None  # the slot installed into / switched to
    progress: int | None = None  # the last download progress reported (%)
    reason: str | None = None  # why a rollback is under way, for its final report
    detail: str | None = None
    cancel_refused: bool = False  # the next report tells the server a cancel was refused
    closed: bool = False  # the server ended the job: it hears nothing more
    outbox: tuple[Report, ...] = ()  # reports not yet taken by the server, oldest first
    result: str | None = None  # the final state, once done

    @property
    def done(self) -> bool:
        return self.step is Step.DONE


@dataclass(frozen=True)
class Move:
    to: Step
    report: str | None = None  # the job state to report on the way
    reason: str | None = None  # default reason (the event's own, then a remembered one, win)
    remember: bool = False  # keep the reason and detail for the final report
    refuse_cancel: bool = False
    close: bool = False


class UndefinedMove(Exception):
    """The driver produced an event its step does not know: a bug, not a device condition."""


Table = dict[tuple[Step, Event], Move]
S, E = Step, Event
_HEALTH = "health_check_failed"
_UNAVAILABLE = "rollback_unavailable"

_UPDATE: Table = {
    (S.CHECK, E.READY): Move(S.DOWNLOAD, "downloading"),
    (S.CHECK, E.BLOCKED): Move(S.DONE, "failed", "precondition_failed"),
    (S.CHECK, E.NO_SPACE): Move(S.DONE, "failed", "not_enough_storage"),
    (S.CHECK, E.UNTRUSTED): Move(S.DONE, "failed", "signature_invalid"),
    (S.CHECK, E.UNSUPPORTED): Move(S.DONE, "failed", "unsupported_package"),
    (S.CHECK, E.FAILED): Move(S.DONE, "failed", "update_failed"),
    (S.DOWNLOAD, E.DOWNLOADED): Move(S.VERIFY),
    (S.DOWNLOAD, E.FAILED): Move(S.DONE, "failed", "connection_lost"),
    (S.VERIFY, E.VERIFIED): Move(S.DOWNLOADED, "downloaded"),
    (S.VERIFY, E.CORRUPT): Move(S.DONE, "failed", "integrity_check_failure"),
    (S.VERIFY, E.UNTRUSTED): Move(S.DONE, "failed", "signature_invalid"),
    (S.VERIFY, E.FAILED): Move(S.DONE, "failed", "update_failed"),
    (S.DOWNLOADED, E.GO): Move(S.INSTALL, "installing"),
    (S.DOWNLOADED, E.EXPIRED): Move(S.DONE, "failed", "timed_out"),
    (S.DOWNLOADED, E.FAILED): Move(S.DONE, "failed", "update_failed"),
    (S.INSTALL, E.INSTALLED): Move(S.SWITCH, "rebooting"),
    (S.INSTALL, E.FAILED): Move(S.DONE, "failed", "update_failed"),
    (S.SWITCH, E.SWITCHED): Move(S.BOOT),
    (S.SWITCH, E.FAILED): Move(S.DONE, "failed", "update_failed"),
    (S.BOOT, E.RUNS_NEW): Move(S.HEALTH, "verifying"),
    (S.BOOT, E.RUNS_OLD): Move(S.ROLLBACK, reason=_HEALTH, remember=True),
    (S.BOOT, E.FAILED): Move(S.DONE, "failed", "update_failed"),
    (S.HEALTH, E.HEALTHY): Move(S.COMMIT),
    (S.HEALTH, E.UNHEALTHY): Move(S.ROLLBACK, reason=_HEALTH, remember=True),
    (S.HEALTH, E.RUNS_NEW): Move(S.HEALTH),  # the agent (not the machine) restarted: check again
    (S.HEALTH, E.RUNS_OLD): Move(S.ROLLBACK, reason=_HEALTH, remember=True),
    (S.HEALTH, E.FAILED): Move(S.ROLLBACK, reason=_HEALTH, remember=True),
    (S.COMMIT, E.COMMITTED): Move(S.DONE, "succeeded"),
    (S.COMMIT, E.RUNS_NEW): Move(S.COMMIT),
    (S.COMMIT, E.RUNS_OLD): Move(S.ROLLBACK, reason=_HEALTH, remember=True),
    (S.COMMIT, E.FAILED): Move(S.ROLLBACK, reason="update_failed", remember=True),
    (S.ROLLBACK, E.SWITCHED): Move(S.BOOT_BACK),
    (S.ROLLBACK, E.FAILED): Move(S.DONE, "failed", "update_failed"),
    (S.BOOT_BACK, E.RUNS_OLD): Move(S.DONE, "rolled_back", _HEALTH),
    (S.BOOT_BACK, E.RUNS_NEW): Move(S.DONE, "failed", _HEALTH),  # the way back did not work
    (S.BOOT_BACK, E.FAILED): Move(S.DONE, "failed", _HEALTH),
}

_ROLLBACK: Table = {
    (S.CHECK, E.READY): Move(S.SWITCH),
    (S.CHECK, E.ALREADY): Move(S.DONE, "rolled_back", ROLLBACK_REASON),
    (S.CHECK, E.UNSUPPORTED): Move(S.DONE, "failed", _UNAVAILABLE),
    (S.CHECK, E.FAILED): Move(S.DONE, "failed", _UNAVAILABLE),
    (S.SWITCH, E.SWITCHED): Move(S.BOOT),
    (S.SWITCH, E.FAILED): Move(S.DONE, "failed", _UNAVAILABLE),
    (S.BOOT, E.RUNS_NEW): Move(S.COMMIT),
    (S.BOOT, E.RUNS_OLD): Move(S.ROLLBACK, reason=_UNAVAILABLE, remember=True),
    (S.BOOT, E.FAILED): Move(S.DONE, "failed", _UNAVAILABLE),
    (S.COMMIT, E.COMMITTED): Move(S.DONE, "rolled_back", ROLLBACK_REASON),
    (S.COMMIT, E.RUNS_NEW): Move(S.COMMIT),
    (S.COMMIT, E.RUNS_OLD): Move(S.ROLLBACK, reason=_UNAVAILABLE, remember=True),
    (S.COMMIT, E.FAILED): Move(S.ROLLBACK, reason=_UNAVAILABLE, remember=True),
    (S.ROLLBACK, E.SWITCHED): Move(S.BOOT_BACK),
    (S.ROLLBACK, E.FAILED): Move(S.DONE, "failed", _UNAVAILABLE),
    (S.BOOT_BACK, E.RUNS_OLD): Move(S.DONE, "failed", _UNAVAILABLE),
    (S.BOOT_BACK, E.RUNS_NEW): Move(S.DONE, "failed", _UNAVAILABLE),
    (S.BOOT_BACK, E.FAILED): Move(S.DONE, "failed", _UNAVAILABLE),
}

_COMMAND: Table = {
    (S.CHECK, E.READY): Move(S.RUN),
    (S.CHECK, E.BLOCKED): Move(S.DONE, "failed", "precondition_failed"),
    (S.CHECK, E.UNSUPPORTED): Move(S.DONE, "failed", "command_failed"),
    (S.RUN, E.RAN): Move(S.DONE, "succeeded"),
    (S.RUN, E.FAILED): Move(S.DONE, "failed", "command_failed"),
    (S.RUN, E.RESTARTED): Move(S.DONE, "failed", "command_failed"),
}

# Where the boot pointer may point at the new slot: closing the job there means going back.
_SWITCHED = frozenset({S.SWITCH, S.BOOT, S.HEALTH, S.COMMIT})
_RETURNING = frozenset({S.ROLLBACK, S.BOOT_BACK})


def _complete(table: Table, cancelable: Iterable[Step]) -> Table:
    """`table` plus what every step does on a cancel request and on the server closing it."""
    out = dict(table)
    can_cancel = frozenset(cancelable)
    for step in {step for step, _ in table}:
        if step in can_cancel:
            out[(step, E.CANCEL)] = Move(S.DONE, "canceled")
        else:
            out[(step, E.CANCEL)] = Move(step, refuse_cancel=True)
        if step in _SWITCHED:
            out[(step, E.CLOSED)] = Move(S.ROLLBACK, close=True)
        elif step in _RETURNING:
            out[(step, E.CLOSED)] = Move(step, close=True)
        else:
            out[(step, E.CLOSED)] = Move(S.DONE, close=True)
    out[(S.DONE, E.CANCEL)] = Move(S.DONE)
    out[(S.DONE, E.CLOSED)] = Move(S.DONE, close=True)
    return out


TABLES: Mapping[str, Table] = {
    "update": _complete(_UPDATE, (S.CHECK, S.DOWNLOAD, S.VERIFY, S.DOWNLOADED)),
    # The server cannot cancel a rollback: it is what an abort asks for.
    "rollback": _complete(_ROLLBACK, ()),
    "command": _complete(_COMMAND, (S.CHECK,)),
}


def start(job: Job) -> UpdateState:
    """A job just taken from a check-in. One that arrives with `cancel` ends before it starts."""
    return UpdateState(job=job)


def move_for(state: UpdateState, event: Event) -> Move:
    table = TABLES.get(state.job.kind, TABLES["update"])  # an unknown kind fails at `check`
    move = table.get((state.step, event))
    if move is None:
        raise UndefinedMove(f"a {state.job.kind} job in step {state.step} has no move on {event}")
    return move


def advance(
    state: UpdateState,
    event: Event,
    *,
    reason: str | None = None,
    detail: str | None = None,
    version: str | None = None,
) -> UpdateState:
    """The state after `event`, with any report it calls for queued in the outbox.

    `reason` and `detail` describe the event; `version` is what the device runs now, sent with
    a final report.
    """
    move = move_for(state, event)
    if move.close:
        return replace(state, step=move.to, closed=True, outbox=(), cancel_refused=False)
    if move.refuse_cancel:
        return replace(state, cancel_refused=True)
    new = replace(state, step=move.to)
    if move.remember:
        new = replace(new, reason=reason or move.reason, detail=detail or state.detail)
    if move.report is None:
        return new
    final = move.report in FINAL_STATES
    report = Report(
        state=move.report,
        progress=0 if move.report == "downloading" else None,
        reason=(reason or state.reason or move.reason) if move.report in NEEDS_REASON else None,
        detail=(detail or state.detail) if final else detail,
        version=version if final else None,
        cancel_refused=state.cancel_refused,
    )
    return replace(
        new,
        outbox=state.outbox if state.closed else queue(state.outbox, report),
        cancel_refused=False,
        progress=0 if move.report == "downloading" else state.progress,
        result=move.report if final else None,
    )


def queue(outbox: tuple[Report, ...], report: Report) -> tuple[Report, ...]:
    """`outbox` with `report` at the end, keeping it short: an unsent report of the same state
    is replaced, and a final report replaces every unsent step before it (steps may be skipped).
    A refused cancel is never forgotten on the way."""
    if report.final:
        dropped = [r for r in outbox if not r.final]
        kept = tuple(r for r in outbox if r.final)
        refused = report.cancel_refused or any(r.cancel_refused for r in dropped)
        return (*kept, replace(report, cancel_refused=refused))
    if outbox and outbox[-1].state == report.state:
        last = outbox[-1]
        merged = replace(report, cancel_refused=report.cancel_refused or last.cancel_refused)
        return (*outbox[:-1], merged)
    return (*outbox, report)


def sent(state: UpdateState) -> UpdateState:
    """The state once the server took the oldest report."""
    return replace(state, outbox=state.outbox[1:])


def progress(state: UpdateState, received: int, total: int) -> UpdateState:
    """Queue a progress report when the download moved `PROGRESS_STEP` % since the last one."""
    if total <= 0 or state.step is not Step.DOWNLOAD or state.closed:
        return state
    percent = min(99, received * 100 // total)  # 100 % is what `downloaded` says
    if percent < (state.progress or 0) + PROGRESS_STEP:
        return state
    report = Report("downloading", progress=percent, cancel_refused=state.cancel_refused)
    return replace(
        state, progress=percent, outbox=queue(state.outbox, report), cancel_refused=False
    )


def resume_event(state: UpdateState, running: str | None) -> tuple[Event, str] | None:
    """What a restart of the agent means for a job in `state`, given the slot that runs now,
    with a sentence for the report; None when the step simply runs again.

    From `boot` to `commit` the restart is a boot: either the slot switched to runs (it booted;
    a second boot without a commit is the bootloader's to refuse), or another one does (the
    bootloader fell back). A command cut short by a restart is over; for a reboot command the
    restart is its success.
    """
    if state.step in (Step.BOOT, Step.HEALTH, Step.COMMIT):
        if running is not None and running == state.target:
            return Event.RUNS_NEW, f"slot {running} booted"
        if state.step is Step.BOOT:
            detail = f"slot {state.target} did not boot: the device runs slot {running}"
        else:
            detail = (
                f"the device restarted before slot {state.target} was committed: "
                f"it runs slot {running}"
            )
        return Event.RUNS_OLD, detail
    if state.step is Step.RUN:
        command = state.job.command
        if command is not None and command.name in RESTARTING_COMMANDS:
            return Event.RAN, "the device restarted"
        return Event.RESTARTED, "the agent restarted while the command ran"
    return None


def timeout(job: Job, step: str) -> float:
    """Seconds the job allows for `step` (download, install, reboot, verify)."""
    value = job.timeouts.get(step)
    return value if value and value > 0 else DEFAULT_TIMEOUTS[step]


# --- preconditions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Readings:
    """What the device measured for the preconditions; None where it cannot measure."""

    battery: float | None = None  # percent
    on_power: bool | None = None
    free_storage: int | None = None  # bytes, where downloads go
    busy: bool | None = None


def _limit(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def unmet_preconditions(preconditions: Mapping[str, Any], readings: Readings) -> list[str]:
    """Why the job may not start now, one sentence each; empty when it may.

    A precondition this machine cannot measure counts as met. A low battery is fine on power
    when `or_on_power` allows it, but only when the machine says it is on power.
    """
    problems = []
    min_battery = _limit(preconditions.get("min_battery"))
    if min_battery is not None and readings.battery is not None:
        or_on_power = preconditions.get("or_on_power", True) is not False
        if readings.battery < min_battery and not (or_on_power and readings.on_power):
            power = " and the device is not on power" if or_on_power else ""
            problems.append(f"battery at {readings.battery:g} % is below {min_battery:g} %{power}")
    min_free = _limit(preconditions.get("min_free_storage"))
    free = readings.free_storage
    if min_free is not None and free is not None and free < min_free:
        problems.append(f"{free} bytes of storage free, {int(min_free)} required")
    if preconditions.get("not_busy", False) is True and readings.busy:
        problems.append("the device is busy running a command")
    return problems


def storage_shortfall(free: int | None, needed: int) -> str | None:
    """Why the rest of a download will not fit, or None when it will (or nobody knows)."""
    if free is None or needed <= 0 or free >= needed:
        return None
    return f"the download needs {needed} more bytes, {free} are free"
