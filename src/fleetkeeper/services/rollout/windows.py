"""Maintenance windows: a cron expression opens one, a duration closes it, in a time zone.

A list of windows is a set of alternatives (any open one will do); an empty list is always
open. A deployment's windows and a device's own window (from a group or a device attribute)
are two lists that must both allow a start.

Cron times are read in the window's time zone (croniter works on the zone-aware local time, so
`0 2 * * *` in Europe/Berlin opens at 02:00 Berlin time all year). Durations are elapsed
seconds: a two-hour window is open for two real hours even across a DST change. On the night
clocks go forward a time that does not exist opens the window at the first one that does
(`30 2 * * *` opens at 03:00); on the night they go back, a time that happens twice opens it
twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import ValidationError

from fleetkeeper.services.rollout.policy import Window

_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_MICROSECOND = timedelta(microseconds=1)
_EXAMPLE = "'0 2 * * *;2h;Europe/Berlin'"


class WindowError(ValueError):
    pass


def parse_window(value: object) -> Window:
    """A window from JSON data: `{cron, duration, timezone}` or `"cron;duration[;timezone]"`."""
    if isinstance(value, Window):
        return validate(value)
    data: Mapping[str, object]
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(";")]
        if len(parts) not in (2, 3) or not all(parts):
            raise WindowError(
                f"{value!r} is not a window 'cron;duration[;timezone]', e.g. {_EXAMPLE}"
            )
        data = dict(zip(("cron", "duration", "timezone"), parts, strict=False))
    elif isinstance(value, Mapping):
        data = dict(value)
    else:
        raise WindowError(
            f"a window is an object {{cron, duration, timezone}} or a string, not {value!r}"
        )
    try:
        window = Window.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise WindowError(f"window {value!r}: {where + ': ' if where else ''}{message}") from None
    return validate(window)


def validate(window: Window) -> Window:
    """Check the cron expression and time zone; WindowError naming what is wrong."""
    check_cron(window.cron)
    zone(window.timezone)
    if window.duration <= 0:
        raise WindowError(f"window {window.cron!r} lasts {window.duration:g} s: it never opens")
    return window


def check_cron(cron: str) -> None:
    """A five-field cron expression (minute hour day month weekday) or a macro like `@daily`."""
    fields = cron.split()
    if len(fields) == 1 and fields[0] in _MACROS:
        return
    if len(fields) != 5:
        raise WindowError(
            f"cron {cron!r} needs five fields (minute hour day-of-month month day-of-week)"
        )
    if not croniter.is_valid(cron):
        raise WindowError(f"cron {cron!r} is not a valid cron expression")
    try:
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise WindowError(f"cron {cron!r} never fires") from None


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; WindowError when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowError(f"unknown time zone {name!r}") from None


def open_until(window: Window, now: datetime) -> datetime | None:
    """The end of the occurrence of `window` that contains `now`, or None when closed.

    The occurrence is the latest cron time at or before `now`; when occurrences overlap (a
    duration longer than the cron period) the latest one also ends last.
    """
    _aware(now)
    start = _occurrence(window, now + _MICROSECOND, forward=False)
    if start is None:
        return None
    end = start.astimezone(UTC) + timedelta(seconds=window.duration)
    return end.astimezone(now.tzinfo) if now < end else None


def can_start(windows: Sequence[Window], now: datetime, needed: float) -> bool:
    """True when some window is open now and stays open `needed` more seconds (or none given)."""
    if not windows:
        return True
    return any(_long_enough(window, now, needed) for window in windows)


def next_start(windows: Sequence[Window], now: datetime, needed: float) -> datetime | None:
    """The first moment at or after `now` when `can_start` holds; None for an empty list.

    None too when no window ever qualifies (each lasts less than `needed`, or its cron never
    fires). No search: a window that qualifies does so from the start of its next occurrence.
    """
    starts = [_next_start(window, now, needed) for window in windows]
    return min((start for start in starts if start is not None), default=None)


def _next_start(window: Window, now: datetime, needed: float) -> datetime | None:
    if _long_enough(window, now, needed):
        return now
    if window.duration < needed:
        return None
    start = _occurrence(window, now, forward=True)
    return None if start is None else start.astimezone(now.tzinfo)


def _long_enough(window: Window, now: datetime, needed: float) -> bool:
    until = open_until(window, now)
    return until is not None and (until - now).total_seconds() >= needed


def _occurrence(window: Window, base: datetime, *, forward: bool) -> datetime | None:
    """The cron time strictly after (forward) or before `base`, zone-aware; None: never."""
    local = base.astimezone(zone(window.timezone))
    try:
        schedule = croniter(window.cron, local)
        found = schedule.get_next(datetime) if forward else schedule.get_prev(datetime)
    except CroniterBadDateError:
        return None
    assert isinstance(found, datetime)
    return found


def _aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now!r} has no time zone: window times are absolute")
