"""Maintenance windows: a cron expression opens one, a duration closes it, in a time zone.

A list of windows is a set of alternatives (any open one will do); an empty list is always
open. A deployment's windows and a device's own window (from a group or a device attribute)
are two lists that must both allow a start.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fleetkeeper.services.rollout.policy import Window


class WindowError(ValueError):
    pass


def parse_window(value: object) -> Window:
    """A window from JSON data: `{cron, duration, timezone}` or `"cron;duration[;timezone]"`."""
    raise NotImplementedError


def validate(window: Window) -> Window:
    """Check the cron expression and time zone; WindowError naming what is wrong."""
    raise NotImplementedError


def open_until(window: Window, now: datetime) -> datetime | None:
    """The end of the occurrence of `window` that contains `now`, or None when closed."""
    raise NotImplementedError


def can_start(windows: Sequence[Window], now: datetime, needed: float) -> bool:
    """True when some window is open now and stays open `needed` more seconds (or none given)."""
    raise NotImplementedError


def next_start(windows: Sequence[Window], now: datetime, needed: float) -> datetime | None:
    """The first moment at or after `now` when `can_start` holds; None for an empty list."""
    raise NotImplementedError
