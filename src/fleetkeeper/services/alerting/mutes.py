"""What mutes alerts, read in one go: operators' silences, the automatic ones, inhibit rules
and the channels' rate limits, per tenant.

Two kinds of silence are made here rather than by operators, rebuilt at every refresh and
lasting a little longer than the refresh interval (`hold`):

- `deployment:ID`: the `offline` alerts (label `kind=offline`) of devices whose execution of
  that deployment is downloading, installing, rebooting, verifying or rolling back; a device
  rebooting for an update is not offline;
- `maintenance:state`: every alert of devices in the `maintenance` lifecycle state;
- `window:GROUP`: the `offline` alerts of the devices of a group whose maintenance window is
  open now (`groups.maintenance_windows`, the windows rollouts honour), until it closes. Only
  devices that have an open alert are looked up, so a dynamic group of 100,000 devices costs
  a query over those few.

Unreadable rows (a matcher that no longer parses) are logged and skipped: one bad silence
must not stop alerting.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import FleetkeeperError
from fleetkeeper.services.alerting.channels import rate_limit_of
from fleetkeeper.services.alerting.inhibit import InhibitRule
from fleetkeeper.services.alerting.model import Matcher
from fleetkeeper.services.alerting.ratelimit import RateLimit
from fleetkeeper.services.alerting.silences import Silence, SilenceKind, maintenance_silence
from fleetkeeper.services.context import SYSTEM
from fleetkeeper.services.rollout.execution import ACTIVE as ACTIVE_EXECUTION
from fleetkeeper.services.rollout.execution import State as ExecutionState
from fleetkeeper.services.rollout.windows import open_until, parse_window
from fleetkeeper.services.selection import QueryScope, compile_for
from fleetkeeper.store.models import (
    AlertChannel,
    AlertInhibitRule,
    AlertSilence,
    Device,
    Execution,
    Group,
    GroupMember,
)

__all__ = ["UPDATING", "Mutes", "load_mutes"]

log = logging.getLogger("fleetkeeper.alerting")
# Executions in which a device may be off or rebooting by design (not merely notified).
UPDATING = sorted(ACTIVE_EXECUTION - {ExecutionState.NOTIFIED})
_CHUNK = 500


@dataclass
class Mutes:
    """Per tenant id: silences, inhibit rules, and rate limits by channel id."""

    silences: dict[str, list[Silence]] = field(default_factory=dict)
    inhibit: dict[str, list[InhibitRule]] = field(default_factory=dict)
    limits: dict[str, dict[str, RateLimit]] = field(default_factory=dict)


async def load_mutes(
    session: AsyncSession, now: datetime, hold: timedelta, alerting: Iterable[str] = ()
) -> Mutes:
    """Everything that mutes, per tenant; `alerting` names the devices with an open alert
    (the only ones a maintenance window's silence needs to cover)."""
    until = now + hold
    silences: dict[str, list[Silence]] = defaultdict(list)
    for row in await session.scalars(select(AlertSilence).where(AlertSilence.ends_at > now)):
        try:
            silences[row.tenant_id].append(
                Silence(
                    id=row.id,
                    matchers=tuple(Matcher.parse(m) for m in row.matchers),
                    starts_at=row.starts_at,
                    ends_at=row.ends_at,
                    author=row.author,
                    comment=row.comment,
                )
            )
        except ValueError:
            log.warning("silence %s is unreadable; ignored", row.id)
    updating: dict[tuple[str, str], list[str]] = defaultdict(list)
    for tenant_id, deployment_id, device_id in await session.execute(
        select(Device.tenant_id, Execution.deployment_id, Execution.device_id)
        .join(Device, Device.id == Execution.device_id)
        .where(Execution.state.in_(UPDATING))
    ):
        updating[(tenant_id, deployment_id)].append(device_id)
    for (tenant_id, deployment_id), devices in updating.items():
        silences[tenant_id].append(
            maintenance_silence(
                f"deployment:{deployment_id}",
                devices,
                now,
                until,
                source=f"deployment {deployment_id}",
                kind=SilenceKind.DEPLOYMENT,
                extra=(Matcher("kind", "=", "offline"),),
            )
        )
    resting: dict[str, list[str]] = defaultdict(list)
    for tenant_id, device_id in await session.execute(
        select(Device.tenant_id, Device.id).where(Device.state == "maintenance")
    ):
        resting[tenant_id].append(device_id)
    for tenant_id, devices in resting.items():
        silences[tenant_id].append(
            maintenance_silence("maintenance:state", devices, now, until, source="device state")
        )
    inhibit: dict[str, list[InhibitRule]] = defaultdict(list)
    for rule in await session.scalars(select(AlertInhibitRule)):
        try:
            inhibit[rule.tenant_id].append(
                InhibitRule.parse(rule.source, rule.target, rule.equal, name=rule.name)
            )
        except ValueError:
            log.warning("inhibit rule %s is unreadable; ignored", rule.id)
    limits: dict[str, dict[str, RateLimit]] = defaultdict(dict)
    for tenant_id, channel_id, settings in await session.execute(
        select(AlertChannel.tenant_id, AlertChannel.id, AlertChannel.settings)
    ):
        try:
            limit = rate_limit_of(settings or {})
        except (KeyError, TypeError, ValueError):
            log.warning("channel %s: unreadable rate limit; ignored", channel_id)
            continue
        if limit is not None:
            limits[tenant_id][channel_id] = limit
    for tenant_id, silence in await _window_silences(session, now, set(alerting)):
        silences[tenant_id].append(silence)
    return Mutes(dict(silences), dict(inhibit), dict(limits))


async def _window_silences(
    session: AsyncSession, now: datetime, alerting: set[str]
) -> list[tuple[str, Silence]]:
    if not alerting:
        return []
    found = []
    groups = await session.scalars(select(Group).where(Group.maintenance_windows.is_not(None)))
    for group in groups:
        try:
            windows = [parse_window(w) for w in group.maintenance_windows or ()]
        except ValueError:
            log.warning("group %s: unreadable maintenance window; ignored", group.name)
            continue
        ends = [end for w in windows if (end := open_until(w, now)) is not None]
        if not ends:
            continue
        members = await _members(session, group, sorted(alerting), now)
        if members:
            silence = maintenance_silence(
                f"window:{group.name}",
                members,
                now,
                max(ends),
                source=f"maintenance window of group {group.name}",
                extra=(Matcher("kind", "=", "offline"),),
            )
            found.append((group.tenant_id, silence))
    return found


async def _members(
    session: AsyncSession, group: Group, candidates: list[str], now: datetime
) -> list[str]:
    """Which of `candidates` (device ids) are in the group."""
    members: list[str] = []
    for start in range(0, len(candidates), _CHUNK):
        chunk = candidates[start : start + _CHUNK]
        if group.query is None:
            stmt = select(GroupMember.device_id).where(
                GroupMember.group_id == group.id, GroupMember.device_id.in_(chunk)
            )
        else:
            scope = QueryScope(principal=SYSTEM, now=now, online_window=timedelta(minutes=5))
            try:
                where = await compile_for(session, scope, group.query, tenant_id=group.tenant_id)
            except FleetkeeperError:
                log.warning("group %s: its query does not compile; window ignored", group.name)
                return []
            stmt = select(Device.id).where(where, Device.id.in_(chunk))
        members.extend(await session.scalars(stmt))
    return members
