"""What the rules are judged on: devices as observations, read in bulk from the database.

A rule's round asks two questions, each one query whatever the fleet's size:

- `holding`: the devices of the scope on which the condition holds. The condition is pushed
  into SQL (`value < 15` on `telemetry_latest`, `last_seen` before the offline cut-off, a flag
  in `device_health`, the latest finished execution failed), so a healthy fleet of 100,000
  devices costs an index range, not 100,000 judgements. Rate rules cannot be pushed down:
  every device of the scope with readings in the window comes back.
- `of_devices`: named devices (those with an open alert), whatever their state, so that
  alerts can clear, stay in the hysteresis band, or wait when data is missing.

A device's subject labels are `device` (its id), `serial`, `model`, `site` and `gateway` (from
`attributes.site` and `attributes.gateway`, when set) and `kind`, the condition's kind
(`metric`, `offline`, `health`, `update`, `rate`): what grouping, inhibition and silences match.
Only devices in service are judged: `active`, `maintenance` and `quarantined` (the engine
silences the first of those), not devices being registered or retired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.services.alerting.rules import (
    UPDATE_FAILURES,
    AlertRule,
    Condition,
    HealthFlag,
    Observation,
    Offline,
    RateOfChange,
    Reading,
    Threshold,
    UpdateFailed,
)
from fleetkeeper.store.models import (
    Device,
    DeviceHealth,
    DeviceModel,
    Execution,
    TelemetryLatest,
    TelemetryMinute,
)

__all__ = ["IN_SERVICE", "Observed", "Reader", "kind_of"]

IN_SERVICE = ("active", "maintenance", "quarantined")
_CHUNK = 500  # ids in one IN (...) list
_FINISHED = ("succeeded", *sorted(UPDATE_FAILURES))

Observed = dict[str, tuple[dict[str, str], Observation]]  # device id → (subject, observation)


def kind_of(condition: Condition) -> str:
    kinds: dict[type[Any], str] = {
        Threshold: "metric",
        Offline: "offline",
        HealthFlag: "health",
        UpdateFailed: "update",
        RateOfChange: "rate",
    }
    return kinds[type(condition)]


def _metrics(rule: AlertRule) -> set[str]:
    return {
        c.metric for c in (rule.condition, rule.clear) if isinstance(c, Threshold | RateOfChange)
    }


def _compare(column: SQLColumnExpression[float], op: str, value: float) -> ColumnElement[bool]:
    comparisons = {
        "<": column < value,
        "<=": column <= value,
        ">": column > value,
        ">=": column >= value,
        "=": column == value,
        "!=": column != value,
    }
    return comparisons[op]


@dataclass
class Reader:
    """Reads observations for one rule at `now` (a round's reads share one instance)."""

    now: datetime
    online_window: timedelta
    grace: Mapping[int, timedelta]  # the models' own offline grace, by model id

    def _base(self, where: ColumnElement[bool]) -> Select[Any]:
        return (
            select(
                Device.id,
                Device.serial,
                DeviceModel.name,
                Device.attributes["site"].as_string(),
                Device.attributes["gateway"].as_string(),
                Device.model_id,
                Device.last_seen,
                Device.attributes["role"].as_string(),
            )
            .join(DeviceModel, DeviceModel.id == Device.model_id)
            .where(where, Device.state.in_(IN_SERVICE))
        )

    def _subject(self, row: Any, kind: str) -> dict[str, str]:
        device_id, serial, model, site, gateway = row[:5]
        role = row[7]
        labels = {"device": device_id, "serial": serial, "model": model, "kind": kind}
        if site:
            labels["site"] = site
        if role:
            labels["role"] = role
        if role == "gateway" and not gateway:
            gateway = serial  # a gateway is its own: `equal: [gateway]` pairs it with its devices
        if gateway:
            labels["gateway"] = gateway
        return labels

    def _online(self, model_id: int, last_seen: datetime | None) -> bool:
        if last_seen is None:
            return False
        return last_seen >= self.now - self.grace.get(model_id, self.online_window)

    async def holding(
        self, session: AsyncSession, rule: AlertRule, scope: ColumnElement[bool]
    ) -> Observed:
        """The devices of the scope on which the rule's condition holds (rate rules: every
        device with readings in the window)."""
        return await self._read(session, rule, scope, pushdown=True)

    async def of_devices(
        self, session: AsyncSession, rule: AlertRule, scope: ColumnElement[bool], ids: Sequence[str]
    ) -> Observed:
        """The named devices, as far as they are still in the scope and in service."""
        found: Observed = {}
        ordered = sorted(set(ids))
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start : start + _CHUNK]
            found.update(
                await self._read(session, rule, and_(scope, Device.id.in_(chunk)), pushdown=False)
            )
        return found

    async def _read(
        self, session: AsyncSession, rule: AlertRule, where: ColumnElement[bool], *, pushdown: bool
    ) -> Observed:
        condition = rule.condition
        kind = kind_of(condition)
        if isinstance(condition, Threshold):
            return await self._latest(session, rule, where, kind, pushdown=pushdown)
        if isinstance(condition, Offline):
            if pushdown:
                where = and_(
                    where, Device.last_seen <= self.now - timedelta(seconds=condition.after)
                )
            return {
                row[0]: (self._subject(row, kind), self._observation(row))
                for row in await session.execute(self._base(where))
            }
        if isinstance(condition, HealthFlag):
            return await self._health(session, condition, where, kind, pushdown=pushdown)
        if isinstance(condition, UpdateFailed):
            return await self._update(session, where, kind, pushdown=pushdown)
        return await self._rates(session, rule, where, kind, pushdown=pushdown)

    def _observation(self, row: Any, **data: Any) -> Observation:
        model_id, last_seen = row[5], row[6]
        return Observation(
            at=self.now, last_seen=last_seen, online=self._online(model_id, last_seen), **data
        )

    async def _latest(
        self,
        session: AsyncSession,
        rule: AlertRule,
        where: ColumnElement[bool],
        kind: str,
        *,
        pushdown: bool,
    ) -> Observed:
        condition = rule.condition
        assert isinstance(condition, Threshold)
        metrics = sorted(_metrics(rule))
        latest = TelemetryLatest
        stmt = self._base(where).add_columns(latest.metric, latest.ts, latest.value)
        if pushdown:
            # Only the condition's metric can make it hold; the clear is judged on open alerts.
            stmt = stmt.join(
                latest,
                and_(latest.device_id == Device.id, latest.metric == condition.metric),
            ).where(_compare(latest.value, condition.op, condition.value))
        else:
            stmt = stmt.outerjoin(
                latest, and_(latest.device_id == Device.id, latest.metric.in_(metrics))
            )
        rows: dict[str, tuple[Any, dict[str, list[Reading]]]] = {}
        for row in await session.execute(stmt):
            _, readings = rows.setdefault(row[0], (row, {}))
            if row[8] is not None:
                readings[row[8]] = [Reading(row[9], row[10])]
        return {
            device_id: (self._subject(row, kind), self._observation(row, metrics=readings))
            for device_id, (row, readings) in rows.items()
        }

    async def _health(
        self,
        session: AsyncSession,
        condition: HealthFlag,
        where: ColumnElement[bool],
        kind: str,
        *,
        pushdown: bool,
    ) -> Observed:
        flagged = select(DeviceHealth.device_id).where(DeviceHealth.flag == condition.flag)
        if pushdown:
            where = and_(where, Device.id.in_(flagged))
        stmt = self._base(where).add_columns(Device.id.in_(flagged))
        return {
            row[0]: (
                self._subject(row, kind),
                # The watch keeps device_health current: no row is a known "not flagged".
                self._observation(
                    row, flags=frozenset({condition.flag}) if row[8] else frozenset()
                ),
            )
            for row in await session.execute(stmt)
        }

    async def _update(
        self, session: AsyncSession, where: ColumnElement[bool], kind: str, *, pushdown: bool
    ) -> Observed:
        finished = Execution.finished_at.is_not(None) & Execution.state.in_(_FINISHED)
        last = (
            select(Execution.device_id, func.max(Execution.finished_at).label("at"))
            .where(finished)
            .group_by(Execution.device_id)
            .subquery()
        )
        outcome = (
            select(Execution.device_id, func.max(Execution.state).label("state"))
            .join(
                last,
                and_(last.c.device_id == Execution.device_id, last.c.at == Execution.finished_at),
            )
            .where(finished)
            .group_by(Execution.device_id)
            .subquery()
        )
        stmt = self._base(where).add_columns(outcome.c.state)
        if pushdown:
            stmt = stmt.join(outcome, outcome.c.device_id == Device.id).where(
                outcome.c.state.in_(sorted(UPDATE_FAILURES))
            )
        else:
            stmt = stmt.outerjoin(outcome, outcome.c.device_id == Device.id)
        return {
            row[0]: (self._subject(row, kind), self._observation(row, update=row[8]))
            for row in await session.execute(stmt)
        }

    async def _rates(
        self,
        session: AsyncSession,
        rule: AlertRule,
        where: ColumnElement[bool],
        kind: str,
        *,
        pushdown: bool,
    ) -> Observed:
        """A rate needs only the first and the last 1-minute mean of its window: index seeks
        per device (the roll-up's key is device, metric, bucket) for those two buckets and
        their means, never the buckets in between, in one query."""
        minute = TelemetryMinute
        windows = sorted(
            {
                (c.metric, c.over)
                for c in (rule.condition, rule.clear)
                if isinstance(c, RateOfChange)
            }
        )
        longest = {m: max(o for n, o in windows if n == m) for m, _ in windows}
        edges = [(m, over, True) for m, over in windows]  # the first bucket of each window
        edges += [(m, over, False) for m, over in longest.items()]  # the last one

        def seek(metric: str, over: float, first: bool, column: Any) -> Any:
            order = minute.bucket.asc() if first else minute.bucket.desc()
            return (
                select(column)
                .where(
                    minute.device_id == Device.id,
                    minute.metric == metric,
                    minute.bucket >= self.now - timedelta(seconds=over),
                )
                .order_by(order)
                .limit(1)
                .scalar_subquery()
            )

        columns = []
        for metric, over, first in edges:
            columns.append(seek(metric, over, first, minute.bucket))
            columns.append(seek(metric, over, first, minute.sum_value / minute.count))
        stmt = self._base(where).add_columns(*columns)
        if pushdown:  # only devices with readings in the window can hold
            stmt = stmt.where(columns[0].is_not(None))
        half = timedelta(seconds=30)  # a minute's mean stands for its middle
        found: Observed = {}
        for row in await session.execute(stmt):
            points: dict[str, dict[datetime, float]] = {}
            for i, (metric, _, _) in enumerate(edges):
                bucket, mean = row[8 + 2 * i], row[9 + 2 * i]
                if bucket is not None and mean is not None:
                    points.setdefault(metric, {})[bucket] = float(mean)
            readings = {
                metric: [Reading(bucket + half, mean) for bucket, mean in sorted(by_bucket.items())]
                for metric, by_bucket in points.items()
            }
            found[row[0]] = (self._subject(row, kind), self._observation(row, metrics=readings))
        return found
