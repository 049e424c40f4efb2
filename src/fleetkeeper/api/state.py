"""What the running server holds: settings, database, clock, keys, and per-process helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from fleetkeeper.clock import Clock
from fleetkeeper.services.alerting.delivery import Deliverer
from fleetkeeper.services.alerting.engine import AlertEngine
from fleetkeeper.services.device_cache import DeviceCache
from fleetkeeper.services.identity import ServerKeys
from fleetkeeper.services.ingest import Ingestor, Upkeep
from fleetkeeper.services.monitoring.watch import HealthWatch
from fleetkeeper.services.notify import Notifier
from fleetkeeper.services.pending import PendingIndex
from fleetkeeper.services.presence import Presence
from fleetkeeper.services.ratelimit import RateLimiter
from fleetkeeper.services.release_keys import ServerReleaseKey
from fleetkeeper.services.scheduler import Scheduler
from fleetkeeper.settings import Settings
from fleetkeeper.store.artifacts import ArtifactStore
from fleetkeeper.store.db import Database
from fleetkeeper.store.timeseries import Retention


@dataclass
class AppState:
    settings: Settings
    db: Database
    clock: Clock
    keys: ServerKeys
    limiter: RateLimiter
    artifacts: ArtifactStore
    release_key: ServerReleaseKey
    notifier: Notifier = field(default_factory=Notifier)
    presence: Presence = field(default_factory=Presence)
    device_cache: DeviceCache = field(default_factory=DeviceCache)
    pending: PendingIndex = field(init=False)
    scheduler: Scheduler = field(init=False)
    ingestor: Ingestor = field(init=False)
    telemetry_upkeep: Upkeep = field(init=False)
    health_watch: HealthWatch = field(init=False)
    alert_engine: AlertEngine = field(init=False)
    deliverer: Deliverer = field(init=False)
    scheduler_kicked: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.pending = PendingIndex(self.notifier)
        self.scheduler = Scheduler(
            self.db,
            self.clock,
            wake=self._wake,
            online_window=timedelta(seconds=self.settings.online_window_seconds),
        )
        self.ingestor = Ingestor(self.db)
        self.telemetry_upkeep = Upkeep(self.ingestor.series, self.retention)
        self.health_watch = HealthWatch(self.db, self.clock, online_window=self.online_window)
        self.alert_engine = AlertEngine(
            self.db,
            self.clock,
            online_window=self.online_window,
            every=self.settings.alert_evaluation_seconds,
            wake=self._wake,
        )
        self.deliverer = Deliverer(self.db, self.clock)

    def _wake(self, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            self.pending.add(device_id)

    def kick_scheduler(self) -> None:
        """Look at due deployments now rather than at the next interval."""
        self.scheduler_kicked.set()

    @property
    def retention(self) -> Retention:
        days = self.settings
        return Retention(
            raw=timedelta(days=days.telemetry_raw_retention_days),
            minute=timedelta(days=days.telemetry_minute_retention_days),
            hour=timedelta(days=days.telemetry_hour_retention_days),
        )

    @property
    def online_window(self) -> timedelta:
        return timedelta(seconds=self.settings.online_window_seconds)
