"""Last-seen times, written in batches.

Writing `last_seen` on every check-in turns every request into a database write (ThingsBoard
found exactly this to be its bottleneck). Check-ins note the time here; a background task
writes the newest time per device every few seconds in one statement.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, bindparam, update

from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Device


class Presence:
    def __init__(self) -> None:
        self._seen: dict[str, datetime] = {}

    def seen(self, device_id: str, at: datetime) -> None:
        self._seen[device_id] = at

    def last_seen(self, device_id: str) -> datetime | None:
        """A time noted but not yet written (newer than the database's)."""
        return self._seen.get(device_id)

    async def flush(self, db: Database) -> int:
        if not self._seen:
            return 0
        batch, self._seen = self._seen, {}
        rows = [{"b_id": k, "b_seen": v} for k, v in batch.items()]
        table = Device.__table__  # Core executemany: one statement, many rows
        assert isinstance(table, Table)
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .where(table.c.last_seen.is_(None) | (table.c.last_seen < bindparam("b_seen")))
            .values(last_seen=bindparam("b_seen"))
        )
        try:
            async with db.write() as session:
                await session.execute(stmt, rows)
        except Exception:
            # Keep what we could not write, unless a newer time arrived meanwhile.
            for key, value in batch.items():
                self._seen.setdefault(key, value)
            raise
        return len(rows)
