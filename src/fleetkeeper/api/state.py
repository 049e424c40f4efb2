"""What the running server holds: settings, database, clock, keys, and per-process helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from fleetkeeper.clock import Clock
from fleetkeeper.services.device_cache import DeviceCache
from fleetkeeper.services.identity import ServerKeys
from fleetkeeper.services.notify import Notifier
from fleetkeeper.services.pending import PendingIndex
from fleetkeeper.services.presence import Presence
from fleetkeeper.services.ratelimit import RateLimiter
from fleetkeeper.settings import Settings
from fleetkeeper.store.db import Database


@dataclass
class AppState:
    settings: Settings
    db: Database
    clock: Clock
    keys: ServerKeys
    limiter: RateLimiter
    notifier: Notifier = field(default_factory=Notifier)
    presence: Presence = field(default_factory=Presence)
    device_cache: DeviceCache = field(default_factory=DeviceCache)
    pending: PendingIndex = field(init=False)

    def __post_init__(self) -> None:
        self.pending = PendingIndex(self.notifier)

    @property
    def online_window(self) -> timedelta:
        return timedelta(seconds=self.settings.online_window_seconds)
