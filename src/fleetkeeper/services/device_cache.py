"""Device rows for the device API, kept in memory until they change.

Every device request needs its device's state and credential generation. Reading them from
the database on every check-in made that the cost of a check-in, so they are kept here.
Changes made through this replica forget the device at once; once a second every replica asks
the database which devices changed since it last asked (one indexed query on `updated_at`
for the whole fleet) and forgets those, so a change made elsewhere (a retirement, say) takes
effect here within about a second. Every change that matters to the device API (state,
credentials, tenant) moves `updated_at`. `ttl` bounds how long a row is trusted regardless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select

from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Device

# Replicas stamp `updated_at` with their own clocks: look back further than they may disagree.
CLOCK_SKEW = timedelta(seconds=10)


class DeviceCache:
    def __init__(
        self,
        ttl: float = 300.0,
        max_size: int = 200_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._monotonic = monotonic
        self._rows: dict[str, tuple[float, Device]] = {}
        self._checked: datetime | None = None

    async def get(self, db: Database, device_id: str) -> Device | None:
        now = self._monotonic()
        hit = self._rows.get(device_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with db.read() as session:
            device = await session.get(Device, device_id)
        if device is None:
            self._rows.pop(device_id, None)
            return None
        if len(self._rows) >= self.max_size:
            self._rows.clear()
        self._rows[device_id] = (now + self.ttl, device)
        return device

    def forget(self, device_id: str) -> None:
        self._rows.pop(device_id, None)

    async def forget_changed(self, db: Database, now: datetime) -> int:
        """Forget the devices changed (through any replica) since the last call."""
        since, self._checked = self._checked, now
        if since is None:
            self._rows.clear()
            return 0
        async with db.read() as session:
            changed = list(
                await session.scalars(
                    select(Device.id).where(Device.updated_at >= since - CLOCK_SKEW)
                )
            )
        for device_id in changed:
            self._rows.pop(device_id, None)
        return len(changed)
