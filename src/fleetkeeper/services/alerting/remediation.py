"""Automatic failure recovery: a rule's remediation policy worked through on a device.

The alerting engine hands every device alert of a rule with a `Remediation` policy to the
`Remediator` when it fires and when it resolves, and calls `advance` on every round. Each
automatic action is one row of `remediation_actions`, and those rows are all the state there
is: a restarted engine (or another replica) carries on from them, and `held` tells it which
alerts still have their notification held back.

A ladder (`on: firing`) is the policy's steps, one command each, one at a time:

    firing ──► step 1 sent ──wait, still firing──► step 1 failed, step 2 sent ──► ...
                   │                                                   last step, still
                   └──── the alert resolved ──► succeeded              firing ──► escalate

Only the latest action of a ladder is ever `sent`; it ends as `succeeded` (the alert
resolved while it waited) or `failed` (it did not within the step's `wait`, the rule lost its
policy, or the device stopped taking commands). `on: resolved` sends the first step once when
the alert resolves (a device back from offline gets a health check); that action ends with the
command's own outcome and never escalates.

Two brakes, checked before a ladder (or a one-off) starts, never between its steps:

- the cooldown: a device remediated by the same rule (any action but `skipped`) within
  `cooldown` seconds is not remediated again; the alert is notified instead;
- the budget, a circuit breaker: the devices the rule remediated within `period` must stay
  below `budget(scope)`; when they do not, nothing is sent and the alert is notified, marked.

A refusal is recorded too, as a `skipped` action whose detail says why (`cooldown`, or
`budget` with what was used of it), so a remediation storm held back shows as such.

Every command goes through `services.commands.create` as the rule itself (actor
`rule:NAME`, with the step, rule and alert in the reason), so the device's command list and
the audit trail say which rule sent it; each step is also audited as `alert.remediation`.
Time comes from the injected clock (`advance` takes the time judged); nothing here sleeps.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.clock import Clock
from fleetkeeper.errors import Conflict, NotFound
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit, commands
from fleetkeeper.services.alerting.rules import AlertRule, Remediation, RemediationStep
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.store.db import dialect_of
from fleetkeeper.store.models import AlertRecord, Command, Device, RemediationAction

__all__ = ["MIN_TIMEOUT", "Escalation", "Outcome", "Remediator"]

SENT, SUCCEEDED, FAILED, SKIPPED = "sent", "succeeded", "failed", "skipped"
MIN_TIMEOUT = 60  # seconds a command stays open at least, whatever its step's wait
# Devices in these states take no commands (`commands.create` refuses them): not remediated.
NO_COMMANDS = frozenset({"retired", "pending"})
On = Literal["firing", "resolved"]


class Outcome(StrEnum):
    STARTED = "started"  # a ladder began: the engine holds the alert's notification
    COOLDOWN = "cooldown"  # remediated this device for this rule within cooldown: notify instead
    CIRCUIT_OPEN = "circuit_open"  # budget spent: notify a human instead, marked
    SENT = "sent"  # on: resolved — the one-off step went out
    NONE = "none"  # no policy, not a device alert, or the device takes no commands


@dataclass(frozen=True)
class Escalation:
    """A ladder that gave up: the alert is to be notified (and marked escalated)."""

    alert_id: str
    rule_id: str
    device_id: str
    reason: str  # reads after "failed after N step(s): "
    steps_taken: int


@dataclass(frozen=True)
class _Cause:
    """Which rule remediates which alert on which device."""

    rule_id: str
    rule_name: str
    tenant_id: str
    alert_id: str
    device_id: str


class _At:
    """A clock stopped at the time judged, so every record of one decision carries it."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


class Remediator:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._scopes: dict[str, int] = {}  # rule id → scope size it last fired with
        self._sent_to: set[str] = set()

    def take_sent(self) -> set[str]:
        """Devices sent a command since the last call: wake them (`PendingIndex.add`) once the
        transaction has committed; otherwise they hear of it at the next refresh."""
        sent, self._sent_to = self._sent_to, set()
        return sent

    # --- the engine's calls ------------------------------------------------------------------

    async def on_firing(
        self,
        session: AsyncSession,
        *,
        rule_id: str,
        rule_name: str,
        tenant_id: str,
        rule: AlertRule,
        alert: AlertRecord,
        scope_size: int,
    ) -> Outcome:
        """The alert fired: start the ladder of an `on: firing` policy, if the brakes allow."""
        self._scopes[rule_id] = scope_size
        policy = rule.remediation
        if policy is None or policy.on != "firing" or alert.device_id is None:
            return Outcome.NONE
        cause = _Cause(rule_id, rule_name, tenant_id, alert.id, alert.device_id)
        earlier = await self._latest(session, alert.id, "firing")
        if earlier is not None:  # told twice (a restarted engine): the record stands
            return _outcome_of(earlier)
        return await self._begin(session, cause, policy, scope_size, "firing")

    async def on_resolved(
        self,
        session: AsyncSession,
        *,
        rule_id: str,
        rule_name: str,
        tenant_id: str,
        rule: AlertRule,
        alert: AlertRecord,
        scope_size: int | None = None,
    ) -> Outcome:
        """The alert resolved: a ladder under way succeeded; an `on: resolved` policy sends
        its first step once. Without `scope_size` the budget counts with the scope the rule
        last fired with, else with `min_devices` alone (the careful side)."""
        now = self.clock.now()
        ladder = await self._latest(session, alert.id, "firing")
        if ladder is not None and ladder.state == SENT:
            _close(ladder, SUCCEEDED, now, "the alert resolved")
        policy = rule.remediation
        if policy is None or policy.on != "resolved" or alert.device_id is None:
            return Outcome.NONE
        earlier = await self._latest(session, alert.id, "resolved")
        if earlier is not None:
            return _outcome_of(earlier)
        size = scope_size if scope_size is not None else self._scopes.get(rule_id, 0)
        cause = _Cause(rule_id, rule_name, tenant_id, alert.id, alert.device_id)
        return await self._begin(session, cause, policy, size, "resolved")

    async def advance(
        self, session: AsyncSession, rules: Mapping[str, AlertRule], now: datetime
    ) -> list[Escalation]:
        """Move every ladder whose step has waited long enough; `rules` by rule id (a rule
        missing from it was deleted or disabled). Returns the ladders that gave up."""
        open_actions = list(
            (
                await session.scalars(
                    select(RemediationAction)
                    .where(RemediationAction.state == SENT)
                    .order_by(RemediationAction.at, RemediationAction.id)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        if not open_actions:
            return []
        alerts = await _alert_states(session, {a.alert_id for a in open_actions})
        sent = await _commands(session, [a.command_id for a in open_actions if a.command_id])
        escalations = []
        for action in open_actions:
            command = sent.get(action.command_id) if action.command_id else None
            command_state = commands.effective_state(command, now) if command else None
            if _on(action) == "resolved":  # it ends as its command does (or expires)
                if command_state is None or command_state in commands.FINAL:
                    ok = command_state == "succeeded"
                    _close(action, SUCCEEDED if ok else FAILED, now, None, command_state)
                continue
            escalation = await self._step(
                session,
                action,
                rules.get(action.rule_id),
                alerts.get(action.alert_id),
                now,
                command_state,
            )
            if escalation is not None:
                escalations.append(escalation)
        return escalations

    async def held(self, session: AsyncSession) -> set[str]:
        """Alert ids with a ladder in progress: their notification is held back."""
        rows = await session.execute(
            select(RemediationAction.alert_id, RemediationAction.detail).where(
                RemediationAction.state == SENT
            )
        )
        return {alert_id for alert_id, detail in rows if _on_of(detail) == "firing"}

    # --- starting ----------------------------------------------------------------------------

    async def _begin(
        self,
        session: AsyncSession,
        cause: _Cause,
        policy: Remediation,
        scope_size: int,
        on: On,
    ) -> Outcome:
        now = self.clock.now()
        device = await session.get(Device, cause.device_id)
        if device is None or device.tenant_id != cause.tenant_id or device.state in NO_COMMANDS:
            return Outcome.NONE
        if dialect_of(session) == "postgresql":
            # One decision per rule at a time, so two transactions cannot both take the last
            # unit of the budget; held until commit.
            await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key(cause)})
        first = policy.steps[0]
        refusal = await self._refusal(session, cause, policy, scope_size, now)
        if refusal is not None:
            reason, detail = refusal
            session.add(_action(cause, 1, first, now, SKIPPED, {"on": on, **detail}, now))
            return Outcome.COOLDOWN if reason == "cooldown" else Outcome.CIRCUIT_OPEN
        action = await self._send(session, cause, policy, 1, now, on)
        if action is None:
            return Outcome.NONE
        return Outcome.STARTED if on == "firing" else Outcome.SENT

    async def _refusal(
        self,
        session: AsyncSession,
        cause: _Cause,
        policy: Remediation,
        scope_size: int,
        now: datetime,
    ) -> tuple[str, dict[str, Any]] | None:
        """Why the brakes hold (cooldown, then budget) with the detail to record; None: go."""
        counted = (
            RemediationAction.rule_id == cause.rule_id,
            RemediationAction.state != SKIPPED,
        )
        if policy.cooldown > 0:
            last = await session.scalar(
                select(func.max(RemediationAction.at)).where(
                    RemediationAction.device_id == cause.device_id,
                    *counted,
                    RemediationAction.at > now - timedelta(seconds=policy.cooldown),
                )
            )
            if last is not None:
                until = last + timedelta(seconds=policy.cooldown)
                return "cooldown", {"reason": "cooldown", "last": _iso(last), "until": _iso(until)}
        budget = policy.budget(scope_size)
        # This device remediated already within the period costs nothing more.
        used = await session.scalar(
            select(func.count(func.distinct(RemediationAction.device_id))).where(
                *counted,
                RemediationAction.at > now - timedelta(seconds=policy.period),
                RemediationAction.device_id != cause.device_id,
            )
        )
        if (used or 0) >= budget:
            return "budget", {
                "reason": "budget",
                "used": int(used or 0),
                "budget": budget,
                "scope": scope_size,
            }
        return None

    async def _send(
        self,
        session: AsyncSession,
        cause: _Cause,
        policy: Remediation,
        n: int,
        now: datetime,
        on: On,
    ) -> RemediationAction | None:
        """Send step `n` (1-based) as the rule; None when the device takes no commands."""
        step = policy.steps[n - 1]
        principal = Principal(
            actor=f"rule:{cause.rule_name}", role="admin", tenant_id=cause.tenant_id
        )
        reason = f"remediation step {n} of rule {cause.rule_name!r} for alert {cause.alert_id}"
        change = Change(principal, reason=reason, clock=_At(now))
        try:
            cmd = await commands.create(
                session,
                change,
                cause.device_id,
                name=step.action,
                args=dict(step.args),
                timeout_s=max(MIN_TIMEOUT, math.ceil(step.wait)),
            )
        except (Conflict, NotFound):
            return None  # retired, pending or gone since the alert fired
        detail = {"on": on, "wait": step.wait, "of": len(policy.steps)}
        action = _action(cause, n, step, now, SENT, detail, None, command_id=cmd.id)
        session.add(action)
        await audit.append(
            session,
            change,
            action="alert.remediation",
            target=f"alert:{cause.alert_id}",
            tenant_id=cause.tenant_id,
            after={
                "rule": cause.rule_name,
                "rule_id": cause.rule_id,
                "alert": cause.alert_id,
                "device": cause.device_id,
                "on": on,
                "step": n,
                "of": len(policy.steps),
                "action": step.action,
                "args": step.args,
                "command": cmd.id,
            },
        )
        self._sent_to.add(cause.device_id)
        return action

    # --- advancing ---------------------------------------------------------------------------

    async def _step(
        self,
        session: AsyncSession,
        action: RemediationAction,
        rule: AlertRule | None,
        alert_state: str | None,
        now: datetime,
        command_state: str | None,
    ) -> Escalation | None:
        """One ladder's due work: close its step, send the next one or give up."""
        if alert_state is None:
            _close(action, FAILED, now, "the alert is gone", command_state)
            return None  # nothing left to notify
        if alert_state != "firing":
            _close(action, SUCCEEDED, now, "the alert resolved", command_state)
            return None
        if now < _due(action):
            return None
        name = rule.name if rule is not None else ""
        cause = _Cause(action.rule_id, name, action.tenant_id, action.alert_id, action.device_id)
        policy = rule.remediation if rule is not None else None
        if policy is None or policy.on != "firing":
            why = (
                "the rule was deleted or disabled"
                if rule is None
                else "the rule no longer has a remediation policy"
            )
            _close(action, FAILED, now, why, command_state)
            return _escalation(cause, action.step, why)
        _close(action, FAILED, now, "the alert still fires", command_state)
        if action.step >= len(policy.steps):
            why = f"the alert still fires after the last step ({action.action})"
            return _escalation(cause, action.step, why)
        if await self._send(session, cause, policy, action.step + 1, now, "firing") is None:
            return _escalation(cause, action.step, "the device takes no commands any more")
        return None

    async def _latest(
        self, session: AsyncSession, alert_id: str, on: On
    ) -> RemediationAction | None:
        """The alert's latest action of the kind (`on`), if any."""
        rows = (
            await session.scalars(
                select(RemediationAction)
                .where(RemediationAction.alert_id == alert_id)
                .order_by(RemediationAction.at.desc(), RemediationAction.step.desc())
            )
        ).all()
        return next((row for row in rows if _on(row) == on), None)


# --- plumbing ------------------------------------------------------------------------------------


def _action(
    cause: _Cause,
    n: int,
    step: RemediationStep,
    now: datetime,
    state: str,
    detail: dict[str, Any],
    finished_at: datetime | None,
    *,
    command_id: str | None = None,
) -> RemediationAction:
    return RemediationAction(
        id=uuid7(now),
        tenant_id=cause.tenant_id,
        rule_id=cause.rule_id,
        alert_id=cause.alert_id,
        device_id=cause.device_id,
        step=n,
        action=step.action,
        args=dict(step.args),
        command_id=command_id,
        state=state,
        detail=detail,
        at=now,
        finished_at=finished_at,
    )


def _close(
    action: RemediationAction,
    state: str,
    now: datetime,
    outcome: str | None,
    command_state: str | None = None,
) -> None:
    detail = dict(action.detail)  # a new dict: the JSON column sees the change
    if outcome is not None:
        detail["outcome"] = outcome
    if command_state is not None:
        detail["command_state"] = command_state
    action.state = state
    action.detail = detail
    action.finished_at = now


def _escalation(cause: _Cause, steps: int, reason: str) -> Escalation:
    return Escalation(cause.alert_id, cause.rule_id, cause.device_id, reason, steps)


def _outcome_of(action: RemediationAction) -> Outcome:
    """What an action already recorded for the alert meant."""
    if action.state == SKIPPED:
        reason = action.detail.get("reason")
        return Outcome.COOLDOWN if reason == "cooldown" else Outcome.CIRCUIT_OPEN
    if _on(action) == "resolved":
        return Outcome.SENT
    # A ladder under way holds the alert; one that ended has been dealt with.
    return Outcome.STARTED if action.state == SENT else Outcome.NONE


def _on(action: RemediationAction) -> On:
    return _on_of(action.detail)


def _on_of(detail: Mapping[str, Any] | None) -> On:
    return "resolved" if (detail or {}).get("on") == "resolved" else "firing"


def _due(action: RemediationAction) -> datetime:
    wait = float(action.detail.get("wait", 300))
    return action.at + timedelta(seconds=wait)


def _iso(at: datetime) -> str:
    return at.isoformat()


def _key(cause: _Cause) -> int:
    digest = hashlib.sha256(f"remediation:{cause.rule_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _alert_states(session: AsyncSession, ids: Iterable[str]) -> dict[str, str]:
    rows = await session.execute(
        select(AlertRecord.id, AlertRecord.state).where(AlertRecord.id.in_(sorted(ids)))
    )
    return {alert_id: state for alert_id, state in rows}


async def _commands(session: AsyncSession, ids: list[str]) -> dict[str, Command]:
    if not ids:
        return {}
    rows = await session.scalars(select(Command).where(Command.id.in_(sorted(set(ids)))))
    return {cmd.id: cmd for cmd in rows}
