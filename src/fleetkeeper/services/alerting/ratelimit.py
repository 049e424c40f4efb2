"""Per-channel rate limits: at most `max` notifications per `period`, the rest as one digest.

A sliding window per channel: a notification goes out when fewer than `max` went out in the
last `period`; otherwise it is held, and everything held for the channel (later ones too,
so nothing overtakes the queue) goes out as one digest as soon as a slot frees up. A digest
takes one slot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RateLimit:
    max: int
    period: timedelta

    def __post_init__(self) -> None:
        if self.max < 1:
            raise ValueError("rate limit: max must be at least 1")
        if self.period <= timedelta(0):
            raise ValueError("rate limit: period must be positive")


@dataclass
class _Channel(Generic[T]):
    limit: RateLimit
    sent: deque[datetime] = field(default_factory=deque)
    held: list[T] = field(default_factory=list)

    def _forget(self, now: datetime) -> None:
        while self.sent and self.sent[0] <= now - self.limit.period:
            self.sent.popleft()

    def free_at(self) -> datetime:
        """When the next slot frees (meaningful once the window is full)."""
        return self.sent[0] + self.limit.period if self.sent else datetime.min


class Limiter(Generic[T]):
    def __init__(self, limits: Mapping[str, RateLimit], default: RateLimit | None = None):
        self._limits = dict(limits)
        self._default = default
        self._channels: dict[str, _Channel[T]] = {}

    def set_limits(self, limits: Mapping[str, RateLimit]) -> None:
        """New limits; a channel's sliding window and held items carry over."""
        self._limits = dict(limits)
        for name in list(self._channels):
            limit = self._limits.get(name, self._default)
            if limit is None:
                if not self._channels[name].held:
                    del self._channels[name]
            else:
                self._channels[name].limit = limit

    def offer(self, channel: str, item: T, now: datetime) -> bool:
        """True: send `item` now (and it is counted). False: it is held for a digest."""
        state = self._channel(channel)
        if state is None:
            return True
        state._forget(now)
        if state.held or len(state.sent) >= state.limit.max:
            state.held.append(item)
            return False
        state.sent.append(now)
        return True

    def release(self, now: datetime) -> list[tuple[str, list[T]]]:
        """The digests due at `now`: each channel's held items, oldest first."""
        released = []
        for name in sorted(self._channels):
            state = self._channels[name]
            state._forget(now)
            if state.held and len(state.sent) < state.limit.max:
                released.append((name, state.held))
                state.held = []
                state.sent.append(now)
        return released

    def next_wakeup(self) -> datetime | None:
        return min(
            (state.free_at() for state in self._channels.values() if state.held), default=None
        )

    def _channel(self, name: str) -> _Channel[T] | None:
        if name not in self._channels:
            limit = self._limits.get(name, self._default)
            if limit is None:
                return None
            self._channels[name] = _Channel(limit)
        return self._channels[name]
