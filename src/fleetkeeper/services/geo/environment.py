"""A site's environment: each device's latest temperature and humidity there, against the site.

A site is the devices whose `attributes.site` names it. For each metric the site's median,
minimum and maximum come from its fresh readings (newer than `max_age`), and each device's
fresh reading shows its deviation from that median: a device far off what its neighbours
measure is either somewhere else in the building or has a sensor to check. Readings older
than `max_age` are listed, marked stale, and judge nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Invalid
from fleetkeeper.services.geo.positions import online_check
from fleetkeeper.services.monitoring.profile import median
from fleetkeeper.services.rollout.policy import parse_duration
from fleetkeeper.services.selection import QueryScope, compile_for
from fleetkeeper.store.models import Device, TelemetryLatest

DEFAULT_METRICS = ("temperature", "humidity")
DEFAULT_MAX_AGE = timedelta(days=1)
MAX_DEVICES = 5000
MAX_METRICS = 20
_METRIC = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CHUNK = 1000


@dataclass(frozen=True)
class Reading:
    value: float
    ts: datetime
    stale: bool
    deviation: float | None  # value minus the site median; None when stale


@dataclass(frozen=True)
class MetricStats:
    count: int  # fresh readings behind the figures
    median: float
    min: float
    max: float


Latest = Mapping[str, Mapping[str, tuple[float, datetime]]]  # device -> metric -> (value, ts)


def summarize(
    latest: Latest, metrics: Sequence[str], now: datetime, max_age: timedelta
) -> tuple[dict[str, MetricStats | None], dict[str, dict[str, Reading]]]:
    """Site figures per metric (None without a fresh reading) and each device's readings."""
    horizon = now - max_age
    stats: dict[str, MetricStats | None] = {}
    for metric in metrics:
        fresh = [
            values[metric][0]
            for values in latest.values()
            if metric in values and values[metric][1] >= horizon
        ]
        stats[metric] = (
            MetricStats(len(fresh), median(fresh), min(fresh), max(fresh)) if fresh else None
        )
    readings: dict[str, dict[str, Reading]] = {}
    for device_id, values in latest.items():
        readings[device_id] = {}
        for metric in metrics:
            if metric not in values:
                continue
            value, ts = values[metric]
            site = stats[metric]
            stale = ts < horizon
            deviation = None if stale or site is None else value - site.median
            readings[device_id][metric] = Reading(value, ts, stale, deviation)
    return stats, readings


def parse_metrics(given: Sequence[str] | None) -> tuple[str, ...]:
    """The metrics asked for (each once, in order), or the default pair."""
    if not given:
        return DEFAULT_METRICS
    metrics = tuple(dict.fromkeys(given))
    if len(metrics) > MAX_METRICS:
        raise Invalid(f"at most {MAX_METRICS} metrics", field="metric")
    for metric in metrics:
        if not _METRIC.match(metric):
            raise Invalid(f"metric {metric[:70]!r}: 1-64 letters, digits, _ . -", field="metric")
    return metrics


def parse_max_age(text: str) -> timedelta:
    """A duration such as 30m, 6h or 2d, above zero and at most a year."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = None
    if not isinstance(seconds, float) or not 0 < seconds <= 366 * 86400:
        raise Invalid(
            f"max_age {text!r} is not a duration like 30m, 6h or 2d (at most 366d)",
            field="max_age",
        )
    return timedelta(seconds=seconds)


def site_query(site: str) -> str:
    """The fleet query for the devices at `site`, its value quoted and escaped literally."""
    if not site or any(ord(c) < 32 for c in site):
        raise Invalid("a site is a non-empty name without control characters", field="site")
    escaped = "".join("\\" + c if c in '\\"*?' else c for c in site)
    return f'attributes.site = "{escaped}"'


@dataclass(frozen=True)
class SiteDevice:
    device: Device
    online: bool
    readings: dict[str, Reading]


@dataclass(frozen=True)
class SiteEnvironment:
    site: str
    metrics: dict[str, MetricStats | None]
    devices: list[SiteDevice]
    truncated: bool


async def site_environment(
    session: AsyncSession,
    scope: QueryScope,
    site: str,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    max_age: timedelta = DEFAULT_MAX_AGE,
    tenant: str | None = None,
) -> SiteEnvironment:
    scope.principal.require("devices:read")
    where = await compile_for(session, scope, site_query(site), tenant_id=tenant)
    devices = list(
        (
            await session.scalars(
                select(Device).where(where).order_by(Device.id).limit(MAX_DEVICES + 1)
            )
        ).all()
    )
    truncated = len(devices) > MAX_DEVICES
    devices = devices[:MAX_DEVICES]
    latest: dict[str, dict[str, tuple[float, datetime]]] = {device.id: {} for device in devices}
    ids = [device.id for device in devices]
    for start in range(0, len(ids), _CHUNK):
        rows = await session.execute(
            select(
                TelemetryLatest.device_id,
                TelemetryLatest.metric,
                TelemetryLatest.value,
                TelemetryLatest.ts,
            ).where(
                TelemetryLatest.device_id.in_(ids[start : start + _CHUNK]),
                TelemetryLatest.metric.in_(list(metrics)),
            )
        )
        for device_id, metric, value, ts in rows:
            latest[device_id][metric] = (value, ts)
    stats, readings = summarize(latest, metrics, scope.now, max_age)
    online = await online_check(session, scope)
    shown = [SiteDevice(d, online(d), readings[d.id]) for d in devices]
    return SiteEnvironment(site, stats, shown, truncated)
