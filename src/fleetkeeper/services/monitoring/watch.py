"""The health watch: runs the detectors over stored telemetry and keeps device_health current.

    watch = HealthWatch(db, clock, online_window=timedelta(minutes=5))
    report = await watch.tick()  # cheap until a round is due; call it every second or so

Work comes in rounds. Every `every` (a minute) a detection round judges each site: the active
devices of one tenant at one `attributes.site`, each model a peer group (devices without a
site are judged alone). A site costs three reads (its raw points of the last `lookback`, its
latest values, the flags it carries) and one write (the flags that changed and their
`monitor_events`), whatever its size; `flags.assess_site` decides in a worker thread. Every
`maintenance_every` (an hour) a maintenance round forecasts batteries and storage from hourly
history (`maintenance`). A tick handles sites until `max_devices` devices are judged and leaves
the rest of a round to the next ticks, so one call never holds the server for long, and a
round that took T seconds of work rests at least T·(1/duty - 1) before the next (`duty`, a
quarter by default: docs/monitoring.md has the costs).

Each finding changes a device's flags through `flags.reconcile`: a new flag is inserted
(`since` = now) with a `health_raised` event, a flag still seen gets fresh evidence and
`checked_at`, a flag no longer seen is deleted with a `health_cleared` event. Devices that
leave the `active` state lose their flags at the next round. The watch owns the flags of
`flags.CATALOGUE` and touches no other.

One watch per deployment: replicas running their own would race on the same rows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, Table, bindparam, cast, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.clock import Clock
from fleetkeeper.query import field_expression
from fleetkeeper.services.monitoring import maintenance
from fleetkeeper.services.monitoring.detectors import DEFAULT_RANGES, Range, Thresholds
from fleetkeeper.services.monitoring.flags import (
    DETECTION_FLAGS,
    MAINTENANCE_FLAGS,
    QUIET_FLAGS,
    Carried,
    Changes,
    Flag,
    Health,
    History,
    OutagePolicy,
    PeerGroup,
    assess_site,
    reconcile,
)
from fleetkeeper.services.monitoring.profile import DEFAULT_THRESHOLDS
from fleetkeeper.store.db import Database, dialect_of, epoch_seconds
from fleetkeeper.store.models import (
    Device,
    DeviceHealth,
    DeviceModel,
    MonitorEvent,
    TelemetryLatest,
    TelemetryPoint,
)

__all__ = ["HealthWatch", "Site", "WatchReport"]

log = logging.getLogger("fleetkeeper.monitoring")
OWNED = DETECTION_FLAGS | MAINTENANCE_FLAGS
RAISED, CLEARED = "health_raised", "health_cleared"
_CHUNK = 500  # device ids in one IN (...) list
_UNSITED = 500  # devices without a site, judged alone, batched this many to a read


@dataclass(frozen=True)
class WatchReport:
    """What one tick did. `ran` is False when nothing was due."""

    at: datetime
    ran: bool = False
    sites: int = 0  # sites the detectors judged
    devices: int = 0  # ...and their devices
    points: int = 0  # raw points read
    forecasts: int = 0  # devices whose battery or storage history was forecast
    raised: int = 0
    kept: int = 0
    cleared: int = 0
    pending: int = 0  # sites left for the next ticks of unfinished rounds


@dataclass(frozen=True)
class Site:
    """The devices judged together: one tenant's site (None: devices without a site)."""

    tenant: str
    name: str | None
    groups: tuple[PeerGroup, ...]

    @property
    def devices(self) -> list[str]:
        return [d for g in self.groups for d in g.devices]


@dataclass
class _Tally:
    sites: int = 0
    devices: int = 0
    points: int = 0
    forecasts: int = 0
    raised: int = 0
    kept: int = 0
    cleared: int = 0

    def add(self, changes: Changes) -> None:
        self.raised += len(changes.raised)
        self.kept += len(changes.kept)
        self.cleared += len(changes.cleared)


@dataclass
class _Round:
    sites: deque[Site] = field(default_factory=deque)
    due: datetime | None = None  # when the next round starts (None: at the first tick)
    spent: float = 0.0  # seconds of work the round took so far

    def start(self, sites: Sequence[Site], now: datetime, period: timedelta) -> None:
        self.sites, self.due, self.spent = deque(sites), now + period, 0.0

    def finish(self, now: datetime, duty: float) -> None:
        """A round that took T seconds is followed by T·(1/duty - 1) of rest at least."""
        rest = timedelta(seconds=self.spent * (1.0 / duty - 1.0))
        self.due = max(self.due or now, now + rest)


class HealthWatch:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        online_window: timedelta,
        every: timedelta = timedelta(seconds=60),
        lookback: timedelta = timedelta(hours=1),
        maintenance_every: timedelta = timedelta(hours=1),
        history: timedelta = maintenance.HISTORY,
        horizon: timedelta = maintenance.HORIZON,
        max_devices: int = 2000,
        duty: float = 0.25,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        outage: OutagePolicy | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`online_window`: a device may count as quiet only after this long without a report
        (a model's `offline_after_seconds` replaces it); `lookback`: the raw points a detection
        round reads; `history` and `horizon`: the history a forecast reads and how far ahead
        units are flagged for maintenance; `max_devices`: the devices one tick judges; `duty`:
        the share of the time the watch may work (a round that took T seconds rests
        T·(1/duty - 1) before the next, however short `every`; `timer` measures T)."""
        periods = (every, lookback, maintenance_every, history)
        if max_devices < 1 or min(periods) <= timedelta(0) or not 0 < duty <= 1:
            raise ValueError("the watch needs positive periods, max_devices >= 1, 0 < duty <= 1")
        self.db = db
        self.clock = clock
        self.online_window = online_window
        self.every = every
        self.lookback = lookback
        self.maintenance_every = maintenance_every
        self.history = history
        self.horizon = horizon
        self.max_devices = max_devices
        self.duty = duty
        self.timer = timer
        self.thresholds = thresholds
        self.outage = outage or OutagePolicy()
        self._detection = _Round()
        self._maintenance = _Round()

    async def tick(self, *, force: bool = False, now: datetime | None = None) -> WatchReport:
        """Move the rounds on: start the ones that are due, judge sites up to `max_devices`.

        `force` starts both rounds afresh and finishes them in this call (tests, a command)."""
        now = now or self.clock.now()
        rounds = ((self._detection, self.every), (self._maintenance, self.maintenance_every))
        for work, period in rounds:
            if force or (not work.sites and (work.due is None or now >= work.due)):
                work.start(await self._plan(now, clear=work is self._detection), now, period)
        if not (self._detection.sites or self._maintenance.sites):
            return WatchReport(at=now)
        tally = _Tally()
        budget = math.inf if force else float(self.max_devices)
        for work, judge in ((self._detection, self._detect), (self._maintenance, self._forecast)):
            if budget <= 0 or not work.sites:
                continue
            started = self.timer()
            while budget > 0 and work.sites:
                site = work.sites.popleft()
                budget -= len(site.devices)
                await judge(site, now, tally)
            work.spent += self.timer() - started
            if not work.sites:
                work.finish(now, self.duty)
        pending = len(self._detection.sites) + len(self._maintenance.sites)
        if tally.raised or tally.cleared:
            log.info(
                "health watch: %d flags raised, %d cleared over %d devices",
                tally.raised,
                tally.cleared,
                tally.devices,
            )
        return WatchReport(
            at=now,
            ran=True,
            sites=tally.sites,
            devices=tally.devices,
            points=tally.points,
            forecasts=tally.forecasts,
            raised=tally.raised,
            kept=tally.kept,
            cleared=tally.cleared,
            pending=pending,
        )

    # --- planning a round -------------------------------------------------------------------

    async def _plan(self, now: datetime, *, clear: bool) -> list[Site]:
        """The sites of the active fleet; with `clear`, flags of inactive devices go first."""
        if clear:
            await self._clear_inactive(now)
        async with self.db.read() as session:
            site_of = field_expression("attributes.site", dialect_of(session))
            models = {
                row.id: row
                for row in await session.execute(
                    select(
                        DeviceModel.id,
                        DeviceModel.name,
                        DeviceModel.metric_ranges,
                        DeviceModel.offline_after_seconds,
                    )
                )
            }
            devices = await session.execute(
                select(Device.id, Device.tenant_id, Device.model_id, site_of)
                .where(Device.state == "active")
                .order_by(Device.tenant_id, Device.id)
            )
            by_site: dict[tuple[str, str | None], dict[int, list[str]]] = {}
            for device_id, tenant, model_id, site in devices:
                by_site.setdefault((tenant, site), {}).setdefault(model_id, []).append(device_id)
        grace = self.online_window.total_seconds()
        sites = []
        for (tenant, name), models_here in sorted(by_site.items(), key=_site_order):
            groups = []
            for model_id, members in sorted(models_here.items()):
                model = models[model_id]
                ranges = _ranges(model.metric_ranges)
                wait = float(model.offline_after_seconds or grace)
                if name is None:  # no site, no peers: each device is judged alone
                    groups += [PeerGroup(model.name, (d,), ranges, wait) for d in members]
                else:
                    groups.append(PeerGroup(model.name, tuple(members), ranges, wait))
            if name is None:
                for start in range(0, len(groups), _UNSITED):
                    sites.append(Site(tenant, None, tuple(groups[start : start + _UNSITED])))
            else:
                sites.append(Site(tenant, name, tuple(groups)))
        return sites

    async def _clear_inactive(self, now: datetime) -> None:
        """Devices out of service (maintenance, quarantine, retired) carry no flag."""
        stmt = (
            select(DeviceHealth, Device.state)
            .join(Device, Device.id == DeviceHealth.device_id)
            .where(Device.state != "active", DeviceHealth.flag.in_(OWNED))
        )
        async with self.db.read() as session:
            if not (await session.execute(stmt.limit(1))).first():
                return  # the usual case: no write lock taken
        async with self.db.write() as session:
            gone = [(_carried(row), state) for row, state in await session.execute(stmt)]
            await _delete(session, [carried for carried, _ in gone])
            session.add_all(
                _event(carried.health, CLEARED, now, reason=f"device is {state}")
                for carried, state in gone
            )

    # --- detection --------------------------------------------------------------------------

    async def _detect(self, site: Site, now: datetime, tally: _Tally) -> None:
        devices = site.devices
        async with self.db.read() as session:
            points, count = await _points(session, devices, now - self.lookback, now)
            latest = await _latest(session, devices)
            carried = await _carried_flags(session, devices, DETECTION_FLAGS)
        found = await asyncio.to_thread(
            assess_site,
            site.groups,
            points,
            now=now.timestamp(),
            site=site.name,
            history=_history(latest, carried),
            thresholds=self.thresholds,
            outage=self.outage,
        )
        await self._apply(devices, DETECTION_FLAGS, found, now, tally)
        tally.sites += 1
        tally.devices += len(devices)
        tally.points += count

    # --- maintenance ------------------------------------------------------------------------

    async def _forecast(self, site: Site, now: datetime, tally: _Tally) -> None:
        devices = site.devices
        async with self.db.read() as session:
            history = await maintenance.load_history(session, devices, now - self.history, now)
        found = await asyncio.to_thread(
            maintenance.assess, history, now=now.timestamp(), horizon=self.horizon
        )
        await self._apply(devices, MAINTENANCE_FLAGS, found, now, tally)
        tally.forecasts += len(history)

    # --- writing the flags ------------------------------------------------------------------

    async def _apply(
        self,
        devices: Sequence[str],
        owned: frozenset[Flag],
        found: Iterable[Health],
        now: datetime,
        tally: _Tally,
    ) -> None:
        """Reconcile the devices' flags of `owned` with `found`, in one transaction."""
        async with self.db.write() as session:
            # Read again inside the write: the flags are what this transaction changes.
            carried = await _carried_flags(session, devices, owned)
            changes = reconcile(carried, found)
            session.add_all(_row(h, now) for h in changes.raised)
            session.add_all(_event(h, RAISED, now) for h in changes.raised)
            await _refresh(session, changes.kept, now)
            await _delete(session, changes.cleared)
            session.add_all(_event(c.health, CLEARED, now, since=c.since) for c in changes.cleared)
        tally.add(changes)


# --- reads ------------------------------------------------------------------------------------


async def _points(
    session: AsyncSession, devices: Sequence[str], since: datetime, until: datetime
) -> tuple[dict[str, dict[str, list[tuple[float, float]]]], int]:
    """Raw points of the devices in (since, until], per device and metric, oldest first.

    The hot read of the watch: Core rows with the time as Unix seconds computed by the
    database (to the millisecond on SQLite), no datetime objects on the way."""
    found: dict[str, dict[str, list[tuple[float, float]]]] = {}
    count = 0
    table = TelemetryPoint.__table__
    assert isinstance(table, Table)
    c = table.c
    epoch = cast(epoch_seconds(session, c.ts), Float)
    for chunk in _chunks(devices):
        rows = await session.execute(
            select(c.device_id, c.metric, epoch, c.value)
            .where(c.device_id.in_(chunk), c.ts > since, c.ts <= until)
            .order_by(c.device_id, c.metric, c.ts)
        )
        device = metric = None
        series: list[tuple[float, float]] = []
        for row_device, row_metric, ts, value in rows:
            if row_device != device or row_metric != metric:
                device, metric = row_device, row_metric
                series = found.setdefault(device, {}).setdefault(metric, [])
            series.append((ts, value))
            count += 1
    return found, count


async def _latest(session: AsyncSession, devices: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each device's metrics in the latest-values table, with the time of the newest point."""
    found: dict[str, dict[str, float]] = {}
    for chunk in _chunks(devices):
        rows = await session.execute(
            select(TelemetryLatest.device_id, TelemetryLatest.metric, TelemetryLatest.ts).where(
                TelemetryLatest.device_id.in_(chunk)
            )
        )
        for device, metric, ts in rows:
            found.setdefault(device, {})[metric] = ts.timestamp()
    return found


async def _carried_flags(
    session: AsyncSession, devices: Sequence[str], owned: frozenset[Flag]
) -> list[Carried]:
    carried = []
    for chunk in _chunks(devices):
        rows = await session.scalars(
            select(DeviceHealth).where(
                DeviceHealth.device_id.in_(chunk), DeviceHealth.flag.in_(owned)
            )
        )
        carried += [_carried(row) for row in rows]
    return carried


def _history(
    latest: Mapping[str, Mapping[str, float]], carried: Sequence[Carried]
) -> dict[str, History]:
    """What each device reported before: silence is judged only for that."""
    lasts: dict[str, float] = {d: max(m.values()) for d, m in latest.items() if m}
    quiet: set[str] = set()
    quiet_metrics: dict[str, set[str]] = {}
    for c in carried:
        h = c.health
        if h.flag in QUIET_FLAGS:
            quiet.add(h.device)
            last = h.evidence.get("last_point")
            if isinstance(last, int | float):
                lasts[h.device] = max(lasts.get(h.device, last), float(last))
        elif h.flag == Flag.FAULTY_SENSOR and h.detector == "silent":
            quiet_metrics.setdefault(h.device, set()).add(h.metric)
    devices = set(latest) | quiet | set(quiet_metrics)
    return {
        d: History(
            metrics=frozenset(latest.get(d, ())),
            last=lasts.get(d),
            quiet=d in quiet,
            quiet_metrics=frozenset(quiet_metrics.get(d, ())),
        )
        for d in devices
    }


# --- writes -----------------------------------------------------------------------------------


def _row(health: Health, now: datetime) -> DeviceHealth:
    return DeviceHealth(
        device_id=health.device,
        flag=health.flag,
        metric=health.metric,
        detector=health.detector,
        severity=health.severity,
        evidence=health.evidence,
        since=now,
        checked_at=now,
    )


def _carried(row: DeviceHealth) -> Carried:
    health = Health(row.device_id, row.flag, row.metric, row.detector, row.severity, row.evidence)
    return Carried(health, row.since)


def _event(
    health: Health,
    kind: str,
    now: datetime,
    *,
    since: datetime | None = None,
    reason: str | None = None,
) -> MonitorEvent:
    detail: dict[str, Any] = {
        "flag": health.flag,
        "metric": health.metric,
        "detector": health.detector,
        "severity": health.severity,
        "evidence": health.evidence,
    }
    if since is not None:
        detail["since"] = since.isoformat()
    if reason is not None:
        detail["reason"] = reason
    return MonitorEvent(device_id=health.device, at=now, kind=kind, detail=detail)


async def _refresh(session: AsyncSession, kept: Sequence[Carried], now: datetime) -> None:
    if not kept:
        return
    table = DeviceHealth.__table__
    assert isinstance(table, Table)
    stmt = (
        update(table)
        .where(
            table.c.device_id == bindparam("b_device"),
            table.c.flag == bindparam("b_flag"),
            table.c.metric == bindparam("b_metric"),
        )
        .values(
            detector=bindparam("b_detector"),
            severity=bindparam("b_severity"),
            evidence=bindparam("b_evidence", type_=table.c.evidence.type),
            checked_at=bindparam("b_checked", type_=table.c.checked_at.type),
        )
    )
    await session.execute(
        stmt,
        [
            {
                "b_device": c.health.device,
                "b_flag": c.health.flag,
                "b_metric": c.health.metric,
                "b_detector": c.health.detector,
                "b_severity": c.health.severity,
                "b_evidence": c.health.evidence,
                "b_checked": now,
            }
            for c in kept
        ],
    )


async def _delete(session: AsyncSession, cleared: Sequence[Carried]) -> None:
    keys = [c.health.key for c in cleared]
    for start in range(0, len(keys), _CHUNK):
        await session.execute(
            delete(DeviceHealth).where(
                tuple_(DeviceHealth.device_id, DeviceHealth.flag, DeviceHealth.metric).in_(
                    keys[start : start + _CHUNK]
                )
            )
        )


# --- helpers ----------------------------------------------------------------------------------


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _site_order(item: tuple[tuple[str, str | None], Any]) -> tuple[str, bool, str]:
    (tenant, name), _ = item
    return (tenant, name is None, name or "")


def _ranges(declared: Mapping[str, Any] | None) -> Mapping[str, Range]:
    """The model's physical ranges over the defaults; malformed entries are ignored."""
    ranges = dict(DEFAULT_RANGES)
    for metric, bounds in (declared or {}).items():
        if (
            isinstance(bounds, list | tuple)
            and len(bounds) == 2
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            and bounds[0] < bounds[1]
        ):
            ranges[str(metric)] = (float(bounds[0]), float(bounds[1]))
    return ranges
