"""Predictive maintenance: when a unit's battery will need replacing, when its storage will fill.

Each answer is a fitted trend carried on to a threshold, with a band around the date: the
times at which the threshold lies within Student's-t bounds of the trend (Fieller's method).
The band is finite only when the trend is significant, which is when a date is worth giving;
otherwise the forecast says why there is none (too short, flat, noisy). Pure functions over
`(timestamp seconds, percent)` histories: no I/O, no clock (`due_within` is handed `now`).

Battery health. A fuel gauge reports charge as a percentage of the battery's *present*
capacity, so a worn battery still charges to 100 %, but drains faster: at the same load the
percent lost per hour is inversely proportional to the capacity. Each discharge (a run of
falling readings between charges) therefore measures the capacity as its seconds per percent,
which falls linearly while the capacity fades linearly (as the simulator's batteries do, and
real cells do through most of their life). A least-squares line through those measurements is
carried on to the threshold. Health is the measure as a percentage of a new battery's
(`rated_drain_per_hour`), or, without one, of the fitted value at the first discharge seen.
Gauges that report percent of the *design* capacity show the fade in how high each charge gets
instead: `CapacityProxy.PEAK` fits the level each discharge starts from. Assumed: the load is
about the same from one discharge to the next (its spread is the fit's noise), and the history
starts with the battery now fitted (after a replacement, pass only the readings since).

Storage. What is written stays until it is deleted, so the percentage used since the last
cleanup (a fall of `cleanup_drop` points between two readings) is a random walk with drift:
each stretch of time adds its own writes. The drift and the walk's variance come from the steps
between readings sampled at `bins` equal stretches of time, and the band covers both the
drift's error and the walk still to come. (A least-squares line through such a walk claims far
more than it knows: in the simulator its 90 % band held the real date about one time in six.)
A unit seen to clean up twice from about the same level rotates its logs (`rotates_at`), and
`due_within` trusts it to do so again before it fills.

Rates are per day of the history's own clock; a simulator running faster than real time
needs `horizon_days` and `due_within`'s `days` scaled the same way.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import replace as _replace
from datetime import UTC, datetime
from enum import StrEnum

from fleetkeeper.services.rollout.health import student_t_two_sided

__all__ = [
    "DAY",
    "BatteryForecast",
    "CapacityProxy",
    "Discharge",
    "Due",
    "Forecast",
    "ForecastStatus",
    "History",
    "Maintenance",
    "StorageForecast",
    "battery_forecast",
    "discharges",
    "due_within",
    "storage_forecast",
    "t_quantile",
]

DAY = 86400.0
History = Sequence[tuple[float, float]]  # (timestamp seconds, percent), oldest first
ROTATION_SPREAD = 3.0  # points: cleanups starting within this of each other are a rotation


class ForecastStatus(StrEnum):
    OK = "ok"  # a significant trend, a date and its band
    REACHED = "reached"  # at or past the threshold already
    TOO_SHORT = "too_short"  # too few discharges or readings to fit a line
    FLAT = "flat"  # no trend, and none the data allow would reach the threshold in the horizon
    NOISY = "noisy"  # too scattered to tell a trend from none


class CapacityProxy(StrEnum):
    DISCHARGE = "discharge"  # seconds per percent of each discharge (% of present capacity)
    PEAK = "peak"  # the level each discharge starts from (gauges in % of design capacity)


class Maintenance(StrEnum):
    REPLACE_BATTERY = "replace_battery"
    FREE_STORAGE = "free_storage"


@dataclass(frozen=True)
class Discharge:
    """One run of falling battery readings, without the plateau at full or the floor at empty."""

    start: float
    end: float
    start_level: float
    end_level: float
    peak: float  # the level the run fell from (the charge the cycle reached)
    peak_at: float  # the first reading at that level

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2

    @property
    def seconds_per_percent(self) -> float:
        return (self.end - self.start) / (self.start_level - self.end_level)


@dataclass(frozen=True)
class BatteryForecast:
    status: ForecastStatus
    reason: str
    threshold: float  # health (%) at which the battery is due for replacement
    confidence: float  # of the band
    points_used: int  # discharges fitted
    health_percent: float | None = None  # fitted, at the last discharge
    fade_per_day: float | None = None  # health points lost per day (negative: gaining)
    replace_at: float | None = None  # timestamps: the fitted date and its band
    replace_earliest: float | None = None
    replace_latest: float | None = None
    r2: float | None = None
    relative: bool = False  # health is relative to the first discharge, not a new battery


@dataclass(frozen=True)
class StorageForecast:
    status: ForecastStatus
    reason: str
    threshold: float  # % used that counts as full
    confidence: float
    points_used: int  # steps between the sampled readings
    since: float | None = None  # start of the fitted stretch (after the last cleanup)
    used_percent: float | None = None  # the last reading
    fill_per_day: float | None = None  # points per day
    fill_error_per_day: float | None = None  # its standard error
    full_at: float | None = None
    full_earliest: float | None = None
    full_latest: float | None = None
    cleanup_levels: tuple[float, ...] = ()  # the level each cleanup started from, oldest first

    @property
    def rotates_at(self) -> float | None:
        """The level at which the unit frees space by itself: its last two cleanups started
        there. One cleanup may have been a technician's; two alike are a habit."""
        last = self.cleanup_levels[-2:]
        if len(last) < 2 or abs(last[0] - last[1]) > ROTATION_SPREAD:
            return None
        return statistics.fmean(last)


Forecast = BatteryForecast | StorageForecast


@dataclass(frozen=True)
class Due:
    """A unit that needs a visit, ready to become a work order."""

    device: str
    maintenance: Maintenance
    due_at: float  # the band's earliest date: plan the visit before it
    expected_at: float  # the fitted date
    latest_at: float
    reason: str


# --- battery ---------------------------------------------------------------------------------


def battery_forecast(
    history: History,
    *,
    threshold: float = 60.0,
    proxy: CapacityProxy = CapacityProxy.DISCHARGE,
    rated_drain_per_hour: float | None = None,
    confidence: float = 0.9,
    horizon_days: float = 365.0,
    min_cycles: int = 5,
    min_drop: float = 0.1,
) -> BatteryForecast:
    """Battery health and the date it falls to `threshold` %, from the unit's battery readings.

    `rated_drain_per_hour`: the % per hour a new battery of the model loses on a typical
    discharge; without it health is relative to the first discharge (`relative=True`).
    """
    _check(threshold, confidence, min_cycles)
    if rated_drain_per_hour is not None and not rated_drain_per_hour > 0:
        raise ValueError(f"a rated drain is a positive % per hour, not {rated_drain_per_hour}")
    cycles = discharges(history, min_drop=min_drop)
    base = BatteryForecast(ForecastStatus.TOO_SHORT, "", threshold, confidence, points_used=0)
    scale: float | None = 100.0  # a new battery's measure; None: unknown, use the first fitted
    if proxy is CapacityProxy.PEAK:
        # A history that starts while discharging shows no peak in its first run.
        opening = min((t for t, _ in history), default=0.0)
        points = [(c.start, c.peak) for c in cycles if c.peak_at > opening]
    else:
        points = [(c.middle, c.seconds_per_percent) for c in cycles]
        scale = 3600.0 / rated_drain_per_hour if rated_drain_per_hour is not None else None
    base = _replace(base, points_used=len(points))
    line = _line(points) if len(points) >= min_cycles else None
    if line is None:
        return _replace(base, reason=f"{len(points)} measurable discharges, need {min_cycles}")
    first, last = points[0][0], points[-1][0]
    full = scale if scale is not None else line.at(first)  # the value that means 100 %
    if full <= 0:
        return _replace(base, status=ForecastStatus.NOISY, reason="no positive baseline to fit")
    ratio = threshold / 100.0
    level = line.at(last)
    health, fade = 100.0 * level / full, -100.0 * line.slope * DAY / full
    fitted = _replace(
        base, health_percent=health, fade_per_day=fade, r2=line.r2, relative=scale is None
    )
    q = t_quantile(confidence, line.n - 2)
    status = _judge(line, q, level, ratio * full, falling=True, horizon=horizon_days * DAY)
    if status is ForecastStatus.OK:
        if scale is None:  # ŷ(x) = r·ŷ(first), with both ends of the ratio uncertain
            bounds = _crossing(line, q, 1.0 - ratio, 0.0, ratio * (first - line.x_mean))
        else:
            bounds = _crossing(line, q, 1.0, ratio * scale, 0.0)
        at, earliest, latest = bounds
        return _replace(
            fitted,
            status=status,
            replace_at=at,
            replace_earliest=earliest,
            replace_latest=latest,
            reason=f"battery health {health:.0f} % fading {fade:.2f} points/day "
            f"(r²={line.r2:.2f}): {threshold:g} % {_between(at, earliest, latest)}",
        )
    if status is ForecastStatus.REACHED:
        return _replace(
            fitted,
            status=status,
            replace_at=last,
            replace_earliest=last,
            replace_latest=last,
            reason=f"battery health {health:.0f} % is at or below {threshold:g} %",
        )
    spread = q * line.slope_se * DAY * 100.0 / full
    return _replace(
        fitted,
        status=status,
        reason=_no_trend(
            status,
            "fade",
            f"{fade:.3g} ± {spread:.2g} points/day, r²={line.r2:.2f}",
            f"{threshold:g} % within {horizon_days:g} days",
        ),
    )


def discharges(history: History, *, min_drop: float = 0.1) -> list[Discharge]:
    """The runs of falling readings, each from its first reading below the level it fell from
    to its first reading at its lowest (so neither the plateau at full nor the floor at empty
    counts), that fall at least `min_drop` points.

    A rise ends a run (charging), and so does a gap over ten times the usual spacing of the
    readings (the battery may have charged unseen). `min_drop` only screens out runs the
    gauge's resolution cannot measure: keep it well below a typical discharge, since worn
    batteries fall further in the same time and a high bar would keep more of their runs."""
    points = sorted(history)
    spacings = [b[0] - a[0] for a, b in itertools.pairwise(points) if b[0] > a[0]]
    gap = 10.0 * statistics.median(spacings) if spacings else math.inf
    runs: list[Discharge] = []
    begin = 0
    for i in range(1, len(points) + 1):
        if i < len(points):
            (t0, v0), (t1, v1) = points[i - 1], points[i]
            if v1 <= v0 and t1 - t0 <= gap:
                continue
        run = points[begin:i]
        begin = i
        peak = run[0][1]
        falling = next((j for j, (_, v) in enumerate(run) if v < peak), None)
        if falling is None:
            continue
        low = min(v for _, v in run)
        bottom = next(j for j, (_, v) in enumerate(run) if v == low)
        (start, level), (end, _) = run[falling], run[bottom]
        if level - low >= min_drop and end > start:
            runs.append(Discharge(start, end, level, low, peak, run[0][0]))
    return runs


# --- storage ---------------------------------------------------------------------------------


def storage_forecast(
    history: History,
    *,
    threshold: float = 95.0,
    confidence: float = 0.9,
    horizon_days: float = 365.0,
    cleanup_drop: float = 5.0,
    bins: int = 24,
    min_points: int = 5,
) -> StorageForecast:
    """The date the storage reaches `threshold` % used, fitted since the last cleanup."""
    _check(threshold, confidence, min_points)
    if bins < min_points:
        raise ValueError(f"{bins} bins can never give {min_points} steps")
    points = sorted(history)
    falls = [i for i in range(1, len(points)) if points[i - 1][1] - points[i][1] >= cleanup_drop]
    levels = tuple(points[i - 1][1] for i in falls)
    segment = points[falls[-1] :] if falls else points
    base = StorageForecast(
        ForecastStatus.TOO_SHORT, "", threshold, confidence, 0, cleanup_levels=levels
    )
    if not segment:
        return _replace(base, reason="no readings")
    since, used = segment[0][0], segment[-1][1]
    base = _replace(base, since=since, used_percent=used)
    if used >= threshold:
        above = len(segment)
        while above > 0 and segment[above - 1][1] >= threshold:
            above -= 1
        reached = segment[above][0]
        return _replace(
            base,
            status=ForecastStatus.REACHED,
            full_at=reached,
            full_earliest=reached,
            full_latest=reached,
            reason=f"storage {used:.1f} % used, at or above {threshold:g} % since {_date(reached)}",
        )
    samples = _sampled(segment, bins)
    drift = _drift(samples) if len(samples) > min_points else None
    if drift is None:
        after = f" since the cleanup on {_date(since)}" if falls else ""
        return _replace(
            base,
            points_used=max(0, len(samples) - 1),
            reason=f"{len(samples)} sampled readings{after}, need {min_points + 1}",
        )
    fill, error = drift.rate * DAY, drift.rate_se * DAY
    fitted = _replace(base, points_used=drift.steps, fill_per_day=fill, fill_error_per_day=error)
    q = t_quantile(confidence, drift.steps - 1)
    if drift.rate <= q * drift.rate_se:
        horizon = horizon_days * DAY
        flat = drift.level + drift.rate * horizon + q * drift.spread(horizon) < threshold
        status = ForecastStatus.FLAT if flat else ForecastStatus.NOISY
        return _replace(
            fitted,
            status=status,
            reason=_no_trend(
                status,
                "fill",
                f"{fill:.3g} ± {q * error:.2g} points/day",
                f"{threshold:g} % within {horizon_days:g} days",
            ),
        )
    at, earliest, latest = _drift_crossing(drift, q, threshold)
    return _replace(
        fitted,
        status=ForecastStatus.OK,
        full_at=at,
        full_earliest=earliest,
        full_latest=latest,
        reason=f"storage {used:.1f} % used, filling {fill:.2f} ± {q * error:.2g} points/day: "
        f"{threshold:g} % {_between(at, earliest, latest)}",
    )


def _sampled(points: Sequence[tuple[float, float]], bins: int) -> list[tuple[float, float]]:
    """The first reading and the last of each of `bins` equal stretches of time after it."""
    first, span = points[0][0], points[-1][0] - points[0][0]
    last: dict[int, tuple[float, float]] = {}
    for t, v in points:
        if t == first:
            continue  # a step needs time to be a step
        last[min(bins - 1, int((t - first) / span * bins)) if span > 0 else 0] = (t, v)
    return [points[0], *(last[k] for k in sorted(last))]


# --- the due list ----------------------------------------------------------------------------


def due_within(forecasts: Iterable[tuple[str, Forecast]], now: float, days: float) -> list[Due]:
    """The units that need a visit within `days` of `now` (overdue ones included), most urgent
    first, from `(device, forecast)` pairs (a device may come with both kinds).

    A unit is due when the *earliest* date of its band falls in the window, not the fitted
    date: at the default 90 % confidence the threshold comes before the band's lower end one
    time in twenty, but before the fitted date about one time in two. A visit a little early
    costs less than a dead unit or a device that stops logging, and the band narrows as the
    history grows, so an early listing tightens by itself. Overdue units (dates already
    passed, or thresholds reached) come first. A unit that rotates its logs below the
    threshold is left out of storage work: it is expected to free the space by itself."""
    horizon = now + days * DAY
    due: list[Due] = []
    for device, forecast in forecasts:
        if isinstance(forecast, BatteryForecast):
            kind = Maintenance.REPLACE_BATTERY
            dates = forecast.replace_earliest, forecast.replace_at, forecast.replace_latest
        else:
            kind = Maintenance.FREE_STORAGE
            dates = forecast.full_earliest, forecast.full_at, forecast.full_latest
            rotates = forecast.rotates_at
            if (
                forecast.status is ForecastStatus.OK
                and rotates is not None
                and rotates < forecast.threshold
            ):
                continue
        earliest, at, latest = dates
        if earliest is None or at is None or latest is None or earliest > horizon:
            continue
        due.append(Due(device, kind, earliest, at, latest, forecast.reason))
    return sorted(due, key=lambda d: (d.due_at, d.expected_at, d.device, d.maintenance))


# --- the line and its crossing ---------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    """y = y_mean + slope·(x - x_mean); `variance` is the residuals' (n - 2 degrees of freedom)."""

    n: int
    x_mean: float
    y_mean: float
    slope: float
    sxx: float
    variance: float
    r2: float

    def at(self, x: float) -> float:
        return self.y_mean + self.slope * (x - self.x_mean)

    @property
    def slope_se(self) -> float:
        return math.sqrt(self.variance / self.sxx)


def _line(points: Sequence[tuple[float, float]]) -> _Line | None:
    """The least-squares line, or None with fewer than three points or all at one time."""
    n = len(points)
    if n < 3:
        return None
    x_mean = math.fsum(x for x, _ in points) / n
    y_mean = math.fsum(y for _, y in points) / n
    sxx = math.fsum((x - x_mean) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    sxy = math.fsum((x - x_mean) * (y - y_mean) for x, y in points)
    syy = math.fsum((y - y_mean) ** 2 for _, y in points)
    slope = sxy / sxx
    residual = max(0.0, syy - slope * sxy)
    r2 = 1.0 - residual / syy if syy > 0 else 1.0
    return _Line(n, x_mean, y_mean, slope, sxx, residual / (n - 2), r2)


def _judge(
    line: _Line, q: float, level: float, target: float, *, falling: bool, horizon: float
) -> ForecastStatus:
    """OK for a slope significantly towards `target`; otherwise REACHED, FLAT or NOISY."""
    sign = -1.0 if falling else 1.0
    towards, margin = sign * line.slope, q * line.slope_se
    if towards > margin:
        return ForecastStatus.OK
    distance = sign * (target - level)
    if distance <= 0:
        return ForecastStatus.REACHED
    fastest = towards + margin  # the steepest approach the band allows
    if fastest <= 0 or distance / fastest > horizon:
        return ForecastStatus.FLAT
    return ForecastStatus.NOISY


def _crossing(
    line: _Line, q: float, weight: float, target: float, shift: float
) -> tuple[float, float, float]:
    """Where weight·y_mean + slope·u = target, u = x - x_mean - shift, and Fieller's band for it.

    The fitted mean and slope are independent with variances σ²/n and σ²/sxx, so the left
    side's variance is σ²(weight²/n + u²/sxx); the band is the u where the equation holds
    within q of that standard error, a quadratic inequality, bounded when the slope is
    significant (slope² > q²·se²)."""
    m = weight * line.y_mean - target
    beta, se2 = line.slope, line.variance / line.sxx
    spread = line.variance * weight**2 / line.n
    a = beta**2 - q**2 * se2
    root = q * math.sqrt(max(0.0, spread * a + se2 * m**2))
    centre = line.x_mean + shift
    at = centre - m / beta
    one, other = centre + (-m * beta - root) / a, centre + (-m * beta + root) / a
    return at, min(one, other, at), max(one, other, at)


@dataclass(frozen=True)
class _Drift:
    """A random walk with drift: level(end + τ) = level + rate·τ + a walk of variance·τ."""

    steps: int
    start: float
    end: float
    level: float
    rate: float
    variance: float  # per second

    @property
    def rate_se(self) -> float:
        return math.sqrt(self.variance / (self.end - self.start))

    def spread(self, ahead: float) -> float:
        """The standard error of the level `ahead` seconds on: the rate's error and the walk's."""
        return math.sqrt(self.variance * (ahead**2 / (self.end - self.start) + ahead))


def _drift(samples: Sequence[tuple[float, float]]) -> _Drift | None:
    """The drift (mean step per second) and the walk's variance, by maximum likelihood."""
    (start, first), (end, level) = samples[0], samples[-1]
    if end <= start or len(samples) < 3:
        return None
    rate = (level - first) / (end - start)
    squares = math.fsum(
        (b - a - rate * (u - t)) ** 2 / (u - t) for (t, a), (u, b) in itertools.pairwise(samples)
    )
    steps = len(samples) - 1
    return _Drift(steps, start, end, level, rate, squares / (steps - 1))


def _drift_crossing(drift: _Drift, q: float, target: float) -> tuple[float, float, float]:
    """When the walk reaches `target`, and the band of times at which the target lies within
    q standard errors (`spread`) of the projected level: a quadratic inequality in τ."""
    m, rate, variance = drift.level - target, drift.rate, drift.variance
    a = rate**2 - q**2 * variance / (drift.end - drift.start)
    b = 2 * rate * m - q**2 * variance
    root = math.sqrt(max(0.0, b**2 - 4 * a * m**2))
    at = drift.end - m / rate
    one, other = drift.end + (-b - root) / (2 * a), drift.end + (-b + root) / (2 * a)
    return at, min(one, other, at), max(one, other, at)


@functools.cache
def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = `confidence` for Student's t with `df` degrees of freedom."""
    alpha = 1.0 - confidence
    low, high = 0.0, 1.0
    while student_t_two_sided(high, df) > alpha:
        high *= 2.0
    for _ in range(100):
        mid = (low + high) / 2
        if student_t_two_sided(mid, df) > alpha:
            low = mid
        else:
            high = mid
    return (low + high) / 2


# --- small helpers ---------------------------------------------------------------------------


def _check(threshold: float, confidence: float, minimum: int) -> None:
    if not 0 < threshold <= 100 or not 0 < confidence < 1 or minimum < 3:
        raise ValueError(
            "a forecast needs 0 < threshold <= 100, 0 < confidence < 1 and at least 3 points, "
            f"not {threshold}, {confidence}, {minimum}"
        )


def _no_trend(status: ForecastStatus, what: str, measured: str, reach: str) -> str:
    if status is ForecastStatus.FLAT:
        return f"no {what} beyond noise ({measured}): not {reach} even at the fastest"
    return f"too noisy to tell ({measured}): could reach {reach}, or never"


def _between(at: float, earliest: float, latest: float) -> str:
    return f"between {_date(earliest)} and {_date(latest)}, most likely {_date(at)}"


def _date(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return f"t={ts:.0f}"
