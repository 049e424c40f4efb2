"""The fleet at a glance: how many devices a query selects, online, by state, model, firmware
and health flag, and how their battery, signal and storage are spread.

Everything is counted by the database with aggregate SQL (a handful of statements whatever the
fleet's size); no device is loaded into Python.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from fleetkeeper.query import online_expression
from fleetkeeper.services.selection import QueryScope, compile_for, offline_after
from fleetkeeper.store.db import dialect_of
from fleetkeeper.store.models import Device, DeviceHealth, DeviceModel, TelemetryLatest

DEFAULT_TOP = 10
_S = TypeVar("_S", bound=Select[*tuple[Any, ...]])


@dataclass(frozen=True)
class Distribution:
    """How a metric's latest values are binned: `edges` split the bins, ascending.

    The first bin takes every value below the first edge and the last every value from the
    last edge up; `low` and `high` are only what those ends are labelled (None: open).
    """

    metric: str
    unit: str
    edges: tuple[float, ...]
    low: float | None = None
    high: float | None = None


PERCENT_EDGES = tuple(float(e) for e in range(10, 100, 10))
DISTRIBUTIONS = (
    Distribution("battery", "%", PERCENT_EDGES, low=0.0, high=100.0),
    Distribution("rssi", "dBm", (-110.0, -100.0, -90.0, -80.0, -70.0, -60.0, -50.0)),
    Distribution("storage_used", "%", PERCENT_EDGES, low=0.0, high=100.0),
)


class Count(BaseModel):
    value: str | None
    count: int


class FirmwareCounts(BaseModel):
    top: list[Count] = Field(description="The most common versions (null: unknown), most first.")
    other: int = Field(description="Devices on the versions not in `top`.")
    versions: int = Field(description="How many versions there are (unknown counts as one).")


class Bin(BaseModel):
    low: float | None = Field(description="From (inclusive); null: no lower end.")
    high: float | None = Field(description="Up to (exclusive, the last bin inclusive); null: open.")
    count: int


class MetricSpread(BaseModel):
    unit: str
    devices: int = Field(description="Devices with a reading of this metric.")
    min: float | None
    median: float | None
    max: float | None
    bins: list[Bin]


class Overview(BaseModel):
    at: datetime = Field(description="The time the counts are for (online is relative to it).")
    total: int
    online: int
    offline: int
    flagged: int = Field(description="Devices carrying at least one health flag.")
    by_state: list[Count]
    by_model: list[Count]
    by_firmware: FirmwareCounts
    by_health: list[Count] = Field(description="Devices carrying each flag.")
    metrics: dict[str, MetricSpread] = Field(
        description="The spread of the latest battery, rssi and storage_used readings."
    )


async def overview(
    session: AsyncSession, scope: QueryScope, q: str | None, *, top: int = DEFAULT_TOP
) -> Overview:
    scope.principal.require("devices:read")
    where = await compile_for(session, scope, q)
    # Readings and flags of every device: no need to join them to the devices (the join is
    # most of the work, and SQLite would walk it in index order).
    selected = _Selected(None if _everything(scope, q) else where)
    grace = await offline_after(session)
    online = online_expression(scope.now, scope.online_window, grace)
    totals = await _device_counts(session, where, online)
    return Overview(
        at=scope.now,
        total=totals.total,
        online=totals.online,
        offline=totals.total - totals.online,
        flagged=await _flagged(session, selected),
        by_state=_ranked(totals.states),
        by_model=_ranked(await _model_names(session, totals.models)),
        by_firmware=await _firmware(session, where, top),
        by_health=await _health(session, selected),
        metrics=await _metrics(session, selected),
    )


def _everything(scope: QueryScope, q: str | None) -> bool:
    return scope.principal.tenant_id is None and not (q and q.strip())


@dataclass(frozen=True)
class _Selected:
    """Rows of a per-device table (readings, flags) that belong to the selected devices."""

    where: ColumnElement[bool] | None  # None: every device

    def of(self, stmt: _S, device_id: InstrumentedAttribute[str]) -> _S:
        if self.where is None:
            return stmt
        return stmt.join(Device, Device.id == device_id).where(self.where)


@dataclass
class _Totals:
    total: int
    online: int
    states: Counter[str | None]
    models: Counter[int]


async def _device_counts(
    session: AsyncSession, where: ColumnElement[bool], online: ColumnElement[bool]
) -> _Totals:
    """One pass over the selected devices, grouped by state, model and online."""
    rows = (
        select(
            Device.state.label("state"),
            Device.model_id.label("model_id"),
            # As 1/0, so both databases group and answer alike.
            case((online, 1), else_=0).label("online"),
        )
        .where(where)
        .subquery()
    )
    stmt = select(rows.c.state, rows.c.model_id, rows.c.online, func.count())
    stmt = stmt.group_by(rows.c.state, rows.c.model_id, rows.c.online)
    totals = _Totals(0, 0, Counter(), Counter())
    for state, model_id, is_online, n in await session.execute(stmt):
        totals.total += n
        totals.online += n if is_online else 0
        totals.states[state] += n
        totals.models[model_id] += n
    return totals


async def _model_names(session: AsyncSession, models: Counter[int]) -> Counter[str | None]:
    names = dict(
        (
            await session.execute(
                select(DeviceModel.id, DeviceModel.name).where(DeviceModel.id.in_(models))
            )
        ).all()
    )
    return Counter({names.get(model_id): n for model_id, n in models.items()})


def _ranked(counts: Counter[str | None]) -> list[Count]:
    """Most first; ties by value, so the order is the same on every database."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, item[0] or ""))
    return [Count(value=value, count=n) for value, n in ordered]


async def _firmware(session: AsyncSession, where: ColumnElement[bool], top: int) -> FirmwareCounts:
    version = Device.firmware_version
    counted = (
        select(version.label("version"), func.count().label("n"))
        .where(where)
        .group_by(version)
        .subquery()
    )
    ordered: ColumnElement[Any] = counted.c.version
    if dialect_of(session) == "postgresql":
        ordered = ordered.collate("C")  # byte order for ties, as SQLite sorts
    stmt = (
        select(counted.c.version, counted.c.n, func.count().over(), func.sum(counted.c.n).over())
        .order_by(counted.c.n.desc(), counted.c.version.is_(None), ordered)
        .limit(top)
    )
    rows = (await session.execute(stmt)).all()
    if not rows:
        return FirmwareCounts(top=[], other=0, versions=0)
    shown = [Count(value=value, count=n) for value, n, _, _ in rows]
    versions, total = int(rows[0][2]), int(rows[0][3])
    return FirmwareCounts(top=shown, other=total - sum(c.count for c in shown), versions=versions)


async def _flagged(session: AsyncSession, selected: _Selected) -> int:
    stmt = select(func.count(DeviceHealth.device_id.distinct()))
    return int(await session.scalar(selected.of(stmt, DeviceHealth.device_id)) or 0)


async def _health(session: AsyncSession, selected: _Selected) -> list[Count]:
    stmt = select(DeviceHealth.flag, func.count(DeviceHealth.device_id.distinct()))
    stmt = selected.of(stmt, DeviceHealth.device_id).group_by(DeviceHealth.flag)
    flags: Counter[str | None] = Counter()
    for flag, n in await session.execute(stmt):
        flags[flag] = n
    return _ranked(flags)


def _bin_of(distribution: Distribution) -> ColumnElement[Any]:
    value = TelemetryLatest.value
    return case(
        *((value < edge, literal(i)) for i, edge in enumerate(distribution.edges)),
        else_=literal(len(distribution.edges)),
    )


async def _metrics(session: AsyncSession, selected: _Selected) -> dict[str, MetricSpread]:
    names = [d.metric for d in DISTRIBUTIONS]
    bin_of = case(*((TelemetryLatest.metric == d.metric, _bin_of(d)) for d in DISTRIBUTIONS))
    readings = select(
        TelemetryLatest.metric.label("metric"),
        TelemetryLatest.value.label("value"),
        bin_of.label("bin"),
    )
    wanted = TelemetryLatest.metric.in_(names)
    if selected.where is None:
        readings = readings.where(wanted)
    else:
        # From the devices out (a LEFT JOIN keeps that order on SQLite too): the query picks
        # devices, each then finds its few readings by primary key. Devices without any
        # reading make a NULL row, dropped below.
        on = and_(TelemetryLatest.device_id == Device.id, wanted)
        readings = readings.select_from(Device).outerjoin(TelemetryLatest, on)
        readings = readings.where(selected.where)
    rows = readings.subquery()
    stmt = (
        select(
            rows.c.metric, rows.c.bin, func.count(), func.min(rows.c.value), func.max(rows.c.value)
        )
        .where(rows.c.metric.is_not(None))
        .group_by(rows.c.metric, rows.c.bin)
    )
    counts: dict[str, dict[int, int]] = {name: {} for name in names}
    lows: dict[str, list[float]] = {name: [] for name in names}
    highs: dict[str, list[float]] = {name: [] for name in names}
    for metric, index, n, low, high in await session.execute(stmt):
        counts[metric][int(index)] = n
        lows[metric].append(low)
        highs[metric].append(high)
    spreads: dict[str, MetricSpread] = {}
    for d in DISTRIBUTIONS:
        bounds = [d.low, *d.edges, d.high]
        spreads[d.metric] = MetricSpread(
            unit=d.unit,
            devices=sum(counts[d.metric].values()),
            min=min(lows[d.metric], default=None),
            median=await _median(session, selected, d, counts[d.metric]),
            max=max(highs[d.metric], default=None),
            bins=[
                Bin(low=bounds[i], high=bounds[i + 1], count=counts[d.metric].get(i, 0))
                for i in range(len(d.edges) + 1)
            ],
        )
    return spreads


async def _median(
    session: AsyncSession, selected: _Selected, distribution: Distribution, counts: dict[int, int]
) -> float | None:
    """The median latest value (the mean of the middle two for an even count).

    The histogram says which bin holds the middle, so only that bin's readings are read, in
    the order ix_telemetry_latest_metric_value keeps them: the same on both databases (SQLite
    has no percentile function) and a fraction of the work of sorting every reading.
    """
    n = sum(counts.values())
    if not n:
        return None
    first = (n - 1) // 2  # 0-based rank of the (first) middle reading
    before = 0
    for index in sorted(counts):
        if before + counts[index] > first:
            break
        before += counts[index]
    offset, wanted = first - before, 2 - n % 2
    edges = distribution.edges
    value = TelemetryLatest.value
    stmt = select(value).where(TelemetryLatest.metric == distribution.metric)
    if index > 0:
        stmt = stmt.where(value >= edges[index - 1])
    if index < len(edges) and offset + wanted <= counts[index]:
        stmt = stmt.where(value < edges[index])  # else the second lies in a later bin
    stmt = stmt.order_by(value).offset(offset).limit(wanted)
    middle = [float(v) for v in await session.scalars(selected.of(stmt, TelemetryLatest.device_id))]
    return sum(middle) / len(middle)
