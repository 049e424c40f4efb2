"""What the running server holds: settings, database, clock. One per app, on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fleetkeeper.clock import Clock
from fleetkeeper.settings import Settings
from fleetkeeper.store.db import Database


@dataclass
class AppState:
    settings: Settings
    db: Database
    clock: Clock

    @property
    def online_window(self) -> timedelta:
        return timedelta(seconds=self.settings.online_window_seconds)
