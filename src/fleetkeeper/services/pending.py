"""Which devices have commands or jobs waiting, known in memory so check-ins need no query.

A check-in looks here instead of in the database; only a device listed here costs a write to
hand its commands out. The set is refreshed from the database every `refresh` seconds by one
query for the whole fleet (so work created by another replica shows up within that time), and
at once for commands created by this replica. Long-polls wait on the notifier, which both the
local path and the refresh wake.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from fleetkeeper.services.executions import devices_with_jobs
from fleetkeeper.services.notify import Notifier
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Command


class PendingIndex:
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._devices: set[str] = set()

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def add(self, device_id: str) -> None:
        self._devices.add(device_id)
        self.notifier.notify(device_id)

    def discard(self, device_id: str) -> None:
        self._devices.discard(device_id)

    async def refresh(self, db: Database, now: datetime) -> None:
        async with db.read() as session:
            found = set(
                await session.scalars(
                    select(Command.device_id)
                    .where(Command.state == "pending", Command.expires_at > now)
                    .distinct()
                )
            )
            found |= await devices_with_jobs(session, now)
        for device_id in found - self._devices:
            self.notifier.notify(device_id)
        self._devices = found
