"""Telemetry in and out: validate each point on its own, read series back at any range.

A batch with bad points is accepted in part: every rejected point is named with its reason,
and nothing already accepted is lost. Resending a batch is harmless: a point is keyed by
device, metric and time, and a repeat is ignored. Points are stored by `services/ingest.py`
(group commit) into `store/timeseries.py` (raw points, roll-ups, latest values).

A point carries its device's time; late and out-of-order points are welcome up to the raw
retention (`late_window`) in the past, and up to `MAX_FUTURE` ahead of the server's clock.

Reading picks the cheapest table that answers: raw points for a raw series or an odd step,
the 1-minute roll-ups for steps in whole minutes, the 1-hour roll-ups for whole hours.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Invalid
from fleetkeeper.services.rollout.policy import parse_duration
from fleetkeeper.store.db import epoch_seconds
from fleetkeeper.store.models import TelemetryHour, TelemetryMinute, TelemetryPoint
from fleetkeeper.store.timeseries import Point

MAX_POINTS = 1000
MAX_FUTURE = timedelta(minutes=5)
DEFAULT_LATE_WINDOW = timedelta(days=30)
_METRIC = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


@dataclass(frozen=True)
class Rejected:
    index: int
    reason: str


def _timestamp(raw: Any) -> datetime:
    if isinstance(raw, bool):
        raise ValueError("ts must be an ISO 8601 time or Unix seconds")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise ValueError("ts is not a finite number")
        try:
            return datetime.fromtimestamp(raw, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("ts is out of range") from None
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"ts {raw[:40]!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValueError("ts needs a time zone (e.g. Z)")
        return parsed.astimezone(UTC)
    raise ValueError("ts must be an ISO 8601 time or Unix seconds")


def validate(
    points: list[Any], now: datetime, late_window: timedelta = DEFAULT_LATE_WINDOW
) -> tuple[list[tuple[str, datetime, float]], list[Rejected]]:
    """Split a batch into (metric, ts, value) rows to store and rejections with reasons (pure
    function). A metric repeated at one time keeps its last value."""
    good: dict[tuple[str, datetime], tuple[str, datetime, float]] = {}
    rejected: list[Rejected] = []
    for i, point in enumerate(points):
        try:
            if not isinstance(point, dict):
                raise ValueError("a point is an object with metric, value and ts")
            unknown = set(point) - {"metric", "value", "ts"}
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
            metric = point.get("metric")
            if not isinstance(metric, str) or not _METRIC.match(metric):
                raise ValueError("metric must be 1-64 letters, digits, _ . -")
            value = point.get("value")
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ValueError("value must be a finite number")
            ts = _timestamp(point.get("ts"))
            if ts > now + MAX_FUTURE:
                raise ValueError(f"ts is {_span(ts - now)} in the future")
            if ts < now - late_window:
                raise ValueError(f"ts is older than the late window of {_span(late_window)}")
        except ValueError as exc:
            rejected.append(Rejected(i, str(exc)))
            continue
        good[(metric, ts)] = (metric, ts, float(value))
    return list(good.values()), rejected


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


def points_of(device_id: str, rows: list[tuple[str, datetime, float]]) -> list[Point]:
    """Validated rows of one device as the store's points."""
    return [(device_id, metric, ts, value) for metric, ts, value in rows]


# --- reading it back -------------------------------------------------------------------------

MAX_RAW = 10_000  # raw points in one answer at most
AUTO_RAW_SPAN = timedelta(hours=6)  # without a step, ranges up to this come back raw
AUTO_BUCKETS = 500  # ...and longer ones in about this many buckets


def parse_time(text: str, now: datetime, field: str) -> datetime:
    """An ISO 8601 time (with a zone), Unix seconds, or a time relative to now (`-1h`)."""
    raw = text.strip()
    if raw.startswith("-"):
        try:
            seconds = parse_duration(raw[1:])
        except ValueError:
            seconds = None
        if not isinstance(seconds, float):
            raise Invalid(f"{text!r} is not a time like -15m, -2h or -7d", field=field)
        return now - timedelta(seconds=seconds)
    try:
        return _timestamp(float(raw) if _NUMBER.match(raw) else raw)
    except ValueError as exc:
        raise Invalid(f"{field}: {exc}", field=field) from None


def pick_step(start: datetime, end: datetime, step: float | None) -> float | None:
    """The bucket width for a range: as asked, raw for short ranges, else ~500 buckets."""
    if step is not None:
        return step or None
    span = end - start
    if span <= AUTO_RAW_SPAN:
        return None
    for width in (60, 300, 900, 3600, 6 * 3600, 86400):
        if span.total_seconds() / width <= AUTO_BUCKETS:
            return float(width)
    return 86400.0


async def series(
    session: AsyncSession,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    step: float | None,
    *,
    rollups: bool = True,
) -> list[dict[str, Any]]:
    """Raw points `{t, v}`, or with a step one bucket per step `{t, v, min, max, avg, count}`
    (from the roll-ups when the step is whole minutes or hours, unless `rollups` is False)."""
    where = (
        TelemetryPoint.device_id == device_id,
        TelemetryPoint.metric == metric,
        TelemetryPoint.ts >= start,
        TelemetryPoint.ts < end,
    )
    if step is None:
        rows = await session.execute(
            select(TelemetryPoint.ts, TelemetryPoint.value)
            .where(*where)
            .order_by(TelemetryPoint.ts)
            .limit(MAX_RAW)
        )
        return [{"t": ts, "v": value} for ts, value in rows]
    rollup = _rollup_for(step) if rollups else None
    if rollup is not None:
        return await _from_rollup(session, rollup, device_id, metric, start, end, step)
    epoch = epoch_seconds(session, TelemetryPoint.ts)
    bucket = func.floor(epoch / step).label("bucket")
    buckets = await session.execute(
        select(
            bucket,
            func.min(TelemetryPoint.value),
            func.max(TelemetryPoint.value),
            func.sum(TelemetryPoint.value),
            func.count(),
        )
        .where(*where)
        .group_by(bucket)
        .order_by(bucket)
    )
    return _buckets(buckets, step)


Rollup = type[TelemetryMinute] | type[TelemetryHour]


def _rollup_for(step: float) -> Rollup | None:
    """The roll-up table whose buckets tile a step exactly, the coarser the better."""
    for table, width in ((TelemetryHour, 3600), (TelemetryMinute, 60)):
        if step >= width and step % width == 0:
            return table
    return None


async def _from_rollup(
    session: AsyncSession,
    table: Rollup,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    step: float,
) -> list[dict[str, Any]]:
    # A roll-up bucket belongs to the range when it starts in it: ranges snap to its width.
    epoch = epoch_seconds(session, table.bucket)
    bucket = func.floor(epoch / step).label("bucket")
    rows = await session.execute(
        select(
            bucket,
            func.min(table.min_value),
            func.max(table.max_value),
            func.sum(table.sum_value),
            func.sum(table.count),
        )
        .where(
            table.device_id == device_id,
            table.metric == metric,
            table.bucket >= _floor(start, 3600 if table is TelemetryHour else 60),
            table.bucket < end,
        )
        .group_by(bucket)
        .order_by(bucket)
    )
    return _buckets(rows, step)


def _floor(when: datetime, width: int) -> datetime:
    return datetime.fromtimestamp(when.timestamp() // width * width, tz=UTC)


def _buckets(rows: Any, step: float) -> list[dict[str, Any]]:
    out = []
    for index, low, high, total, count in rows:
        t = datetime.fromtimestamp(int(index) * step, tz=UTC)
        avg = float(total) / int(count)
        out.append({"t": t, "v": avg, "min": low, "max": high, "avg": avg, "count": int(count)})
    return out
