"""Device rows for the device API, kept briefly in memory.

Every device request needs its device's state and credential generation. Reading them from
the database on every check-in made that the cost of a check-in, so they are kept here for
`ttl` seconds. Changes made through this replica forget the device at once; changes made
through another replica (a retirement, say) take effect here within `ttl`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Device


class DeviceCache:
    def __init__(
        self,
        ttl: float = 5.0,
        max_size: int = 200_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._monotonic = monotonic
        self._rows: dict[str, tuple[float, Device]] = {}

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
