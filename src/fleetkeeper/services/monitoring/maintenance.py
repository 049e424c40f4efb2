"""Predictive maintenance over stored history: which units need a visit, when, and why.

The watch reads each unit's battery and storage history (hourly: the 1-hour roll-ups where the
ingestion wrote them, else raw points averaged per hour), hands it to `forecast`, and flags the
units whose fitted date falls within its horizon: `battery_degraded` (metric `battery`) and
`storage_filling` (metric `storage_used`), the forecast as evidence. `due_list` reads those
flags back for `GET /api/v1/fleet/maintenance`: the visits, most urgent first, ready to become
work orders.

Evidence times are Unix seconds, as in every detector's evidence; the API turns the dates of
the due list into ISO 8601.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import BadRequest, Invalid
from fleetkeeper.query import field_expression
from fleetkeeper.services.monitoring.flags import Flag, Health
from fleetkeeper.services.monitoring.forecast import (
    BatteryForecast,
    Forecast,
    Maintenance,
    StorageForecast,
    battery_forecast,
    due_within,
    storage_forecast,
)
from fleetkeeper.services.rollout.policy import parse_duration
from fleetkeeper.services.selection import QueryScope, compile_for
from fleetkeeper.store.db import dialect_of, epoch_seconds
from fleetkeeper.store.models import (
    Device,
    DeviceHealth,
    DeviceModel,
    TelemetryHour,
    TelemetryPoint,
)

__all__ = [
    "BATTERY",
    "HISTORY",
    "HORIZON",
    "METRICS",
    "STORAGE",
    "Visit",
    "assess",
    "due_list",
    "evidence",
    "forecasts",
    "load_history",
    "parse_within",
]

BATTERY = "battery"
STORAGE = "storage_used"
METRICS = (BATTERY, STORAGE)
HORIZON = timedelta(days=90)  # how far ahead the watch flags, and the due list reaches
HISTORY = timedelta(days=30)  # the history a forecast reads
MIN_SPAN = timedelta(days=3)  # a forecast weeks ahead needs days behind it
URGENT = timedelta(days=7)  # due sooner (or overdue): critical rather than warning
HOUR = 3600.0
_CHUNK = 500  # device ids in one IN (...) list

FLAG_OF = {
    Maintenance.REPLACE_BATTERY: Flag.BATTERY_DEGRADED,
    Maintenance.FREE_STORAGE: Flag.STORAGE_FILLING,
}
METRIC_OF = {Maintenance.REPLACE_BATTERY: BATTERY, Maintenance.FREE_STORAGE: STORAGE}
History = Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]  # device -> metric -> points


# --- reading the history ----------------------------------------------------------------------


async def load_history(
    session: AsyncSession, devices: Sequence[str], since: datetime, until: datetime
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Hourly battery and storage readings per device, oldest first: the 1-hour roll-ups where
    they exist for a device and metric, else its raw points averaged per hour."""
    found: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for chunk in _chunks(devices):
        rows = await session.execute(
            select(
                TelemetryHour.device_id,
                TelemetryHour.metric,
                TelemetryHour.bucket,
                TelemetryHour.sum_value,
                TelemetryHour.count,
            )
            .where(
                TelemetryHour.device_id.in_(chunk),
                TelemetryHour.metric.in_(METRICS),
                TelemetryHour.bucket >= since,
                TelemetryHour.bucket < until,
            )
            .order_by(TelemetryHour.device_id, TelemetryHour.metric, TelemetryHour.bucket)
        )
        for device, metric, bucket, total, count in rows:
            if count:
                points = found.setdefault(device, {}).setdefault(metric, [])
                points.append((bucket.timestamp() + HOUR / 2, total / count))
        missing = [(d, m) for d in chunk for m in METRICS if m not in found.get(d, {})]
        if missing:
            await _raw_hours(session, missing, since, until, found)
    return found


async def _raw_hours(
    session: AsyncSession,
    missing: Sequence[tuple[str, str]],
    since: datetime,
    until: datetime,
    found: dict[str, dict[str, list[tuple[float, float]]]],
) -> None:
    # A millisecond on top: SQLite's julianday arithmetic can land a reading on the hour a
    # hair before it, in the hour before.
    epoch = epoch_seconds(session, TelemetryPoint.ts) + 0.001
    hour = func.floor(epoch / HOUR).label("hour")
    rows = await session.execute(
        select(
            TelemetryPoint.device_id, TelemetryPoint.metric, hour, func.avg(TelemetryPoint.value)
        )
        .where(
            tuple_(TelemetryPoint.device_id, TelemetryPoint.metric).in_(missing),
            TelemetryPoint.ts >= since,
            TelemetryPoint.ts < until,
        )
        .group_by(TelemetryPoint.device_id, TelemetryPoint.metric, hour)
        .order_by(TelemetryPoint.device_id, TelemetryPoint.metric, hour)
    )
    for device, metric, index, mean in rows:
        points = found.setdefault(device, {}).setdefault(metric, [])
        points.append((float(index) * HOUR + HOUR / 2, float(mean)))


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


# --- forecasting ------------------------------------------------------------------------------


def forecasts(
    history: History, *, min_span: float = MIN_SPAN.total_seconds()
) -> list[tuple[str, Forecast]]:
    """Each device's battery and storage forecasts, for histories spanning `min_span` seconds."""
    out: list[tuple[str, Forecast]] = []
    for device, metrics in history.items():
        battery = metrics.get(BATTERY, ())
        if _span(battery) >= min_span:
            out.append((device, battery_forecast(battery)))
        storage = metrics.get(STORAGE, ())
        if _span(storage) >= min_span:
            out.append((device, storage_forecast(storage)))
    return out


def assess(history: History, *, now: float, horizon: timedelta = HORIZON) -> list[Health]:
    """The maintenance flags the devices of `history` should carry now: the units whose fitted
    date falls within `horizon` (overdue ones included).

    The fitted date, not the band's earliest (which the due list plans visits by): a trend
    barely significant at the band's 90 % is flat about one time in twenty, and its band
    reaches far back; across a fleet that would flag healthy units by the dozen."""
    pairs = forecasts(history)
    by_key = {(device, _kind(f)): f for device, f in pairs}
    found = []
    days = horizon / timedelta(days=1)
    for due in due_within(pairs, now, days):
        if due.expected_at > now + horizon.total_seconds():
            continue
        forecast = by_key[(due.device, due.maintenance)]
        urgent = due.due_at <= now + URGENT.total_seconds()
        found.append(
            Health(
                due.device,
                FLAG_OF[due.maintenance],
                METRIC_OF[due.maintenance],
                "battery_forecast" if isinstance(forecast, BatteryForecast) else "storage_forecast",
                "critical" if urgent else "warning",
                evidence(forecast, due.maintenance),
            )
        )
    return found


def evidence(forecast: Forecast, maintenance: Maintenance) -> dict[str, Any]:
    """A forecast as plain JSON: the band (Unix seconds), the reason, and what it rests on."""
    common: dict[str, Any] = {
        "maintenance": maintenance.value,
        "status": forecast.status.value,
        "reason": forecast.reason,
        "threshold": forecast.threshold,
        "confidence": forecast.confidence,
        "points_used": forecast.points_used,
    }
    if isinstance(forecast, BatteryForecast):
        return {
            **common,
            "due_at": forecast.replace_earliest,
            "expected_at": forecast.replace_at,
            "latest_at": forecast.replace_latest,
            "health_percent": _round(forecast.health_percent),
            "fade_per_day": _round(forecast.fade_per_day),
            "r2": _round(forecast.r2),
            "relative": forecast.relative,
        }
    return {
        **common,
        "due_at": forecast.full_earliest,
        "expected_at": forecast.full_at,
        "latest_at": forecast.full_latest,
        "used_percent": _round(forecast.used_percent),
        "fill_per_day": _round(forecast.fill_per_day),
        "fill_error_per_day": _round(forecast.fill_error_per_day),
        "since": forecast.since,
        "cleanup_levels": list(forecast.cleanup_levels),
    }


def _kind(forecast: Forecast) -> Maintenance:
    if isinstance(forecast, StorageForecast):
        return Maintenance.FREE_STORAGE
    return Maintenance.REPLACE_BATTERY


def _span(points: Sequence[tuple[float, float]]) -> float:
    return points[-1][0] - points[0][0] if len(points) > 1 else 0.0


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


# --- the due list -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """A unit due for a visit: one line of the due list, ready to become a work order."""

    device_id: str
    serial: str
    name: str
    model: str
    site: str | None
    maintenance: str
    flag: str
    severity: str
    due_at: datetime  # the band's earliest date: plan the visit before it
    expected_at: datetime
    latest_at: datetime
    overdue: bool
    reason: str
    forecast: dict[str, Any]
    since: datetime  # when the watch first flagged it
    checked_at: datetime


def parse_within(text: str) -> timedelta:
    """`within=30d` (s, m, h, d; bare numbers are days) up to the watch's horizon."""
    raw = text.strip()
    try:
        seconds = parse_duration(raw if not raw.replace(".", "", 1).isdigit() else f"{raw}d")
    except ValueError:
        seconds = None
    if not isinstance(seconds, float) or not seconds > 0:
        raise Invalid(f"within: {text!r} is not a duration like 7d, 30d or 12h", field="within")
    if seconds > HORIZON.total_seconds():
        raise Invalid(
            f"within: the watch forecasts {HORIZON.days} days ahead at most, not {text}",
            field="within",
        )
    return timedelta(seconds=seconds)


async def due_list(
    session: AsyncSession,
    scope: QueryScope,
    q: str | None,
    *,
    within: timedelta,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[Visit], str | None]:
    """The units of the selection due within `within` of now, most urgent first."""
    scope.principal.require("devices:read")
    where = await compile_for(session, scope, q)
    site = field_expression("attributes.site", dialect_of(session))
    rows = await session.execute(
        select(
            DeviceHealth,
            Device.serial,
            Device.name,
            DeviceModel.name,
            site,
        )
        .join(Device, Device.id == DeviceHealth.device_id)
        .join(DeviceModel, DeviceModel.id == Device.model_id)
        .where(where, DeviceHealth.flag.in_([f.value for f in FLAG_OF.values()]))
    )
    horizon = (scope.now + within).timestamp()
    now = scope.now.timestamp()
    visits = []
    for row, serial, name, model, site_name in rows:
        dates = [row.evidence.get(k) for k in ("due_at", "expected_at", "latest_at")]
        if not all(isinstance(d, int | float) for d in dates) or dates[0] > horizon:
            continue
        due, expected, latest = (datetime.fromtimestamp(d, UTC) for d in dates)
        visits.append(
            Visit(
                device_id=row.device_id,
                serial=serial,
                name=name,
                model=model,
                site=site_name,
                maintenance=str(row.evidence.get("maintenance", "")),
                flag=row.flag,
                severity=row.severity,
                due_at=due,
                expected_at=expected,
                latest_at=latest,
                overdue=dates[1] <= now,
                reason=str(row.evidence.get("reason", "")),
                forecast=dict(row.evidence),
                since=row.since,
                checked_at=row.checked_at,
            )
        )
    visits.sort(key=_order)
    if cursor is not None:
        after = _decode(cursor)
        visits = [v for v in visits if _order(v) > after]
    page = visits[:limit]
    more = len(visits) > limit and page
    return page, _encode(_order(page[-1])) if more else None


def _order(visit: Visit) -> tuple[float, str, str]:
    return (visit.due_at.timestamp(), visit.device_id, visit.flag)


def _encode(key: tuple[float, str, str]) -> str:
    text = f"{key[0]!r}|{key[1]}|{key[2]}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[float, str, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        due, device, flag = text.split("|")
        return (float(due), device, flag)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise BadRequest(
            "invalid cursor: pass back the next_cursor of a previous page", field="cursor"
        ) from None
