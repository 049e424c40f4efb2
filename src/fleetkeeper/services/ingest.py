"""Telemetry ingestion by group commit: many requests, one transaction.

A device's request validates its points, hands them to the `Ingestor` and waits until they are
committed: its answer still means "stored". Requests that arrive while a transaction is being
written join the next one, so under load each transaction carries the points of many requests
(up to `max_points`), and with no load a request is written at once, alone. SQLite has one
writer, so one transaction is in flight; PostgreSQL runs a few side by side.

When a combined transaction fails (a device deleted between its request and the write, a
database hiccup), each request in it is retried on its own, so one bad request cannot lose
another's points; the request that still fails gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fleetkeeper.services import geo
from fleetkeeper.store.db import Database
from fleetkeeper.store.timeseries import Point, Retention, TimeSeries

log = logging.getLogger("fleetkeeper.ingest")


@dataclass
class _Request:
    points: list[Point]
    received_at: datetime
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class IngestStats:
    requests: int = 0
    points: int = 0
    new: int = 0
    transactions: int = 0
    retried_alone: int = 0


class Ingestor:
    def __init__(
        self, db: Database, *, max_points: int = 20_000, writers: int | None = None
    ) -> None:
        self.db = db
        self.series = TimeSeries(db)
        self.max_points = max_points
        self.writers = writers or (1 if db.is_sqlite else 3)
        self.stats = IngestStats()
        self._queue: deque[_Request] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def write(self, points: list[Point], received_at: datetime) -> None:
        """Store points (of any devices); returns once they are committed."""
        if not points:
            return
        request = _Request(points, received_at)
        self._queue.append(request)
        self._start_writer()
        # Shielded: a client that hangs up does not cancel a write others share.
        await asyncio.shield(request.done)

    def _start_writer(self) -> None:
        if len(self._running) < self.writers and self._queue:
            task = asyncio.create_task(self._drain(), name="telemetry-writer")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            if len(self._queue) and len(self._running) < self.writers:
                self._start_writer()
            await self._commit(batch)

    def _take(self) -> list[_Request]:
        batch = [self._queue.popleft()]
        size = len(batch[0].points)
        while self._queue and size + len(self._queue[0].points) <= self.max_points:
            request = self._queue.popleft()
            batch.append(request)
            size += len(request.points)
        return batch

    async def _commit(self, batch: list[_Request]) -> None:
        try:
            await self._transaction(batch)
        except Exception:
            if len(batch) == 1:
                self._fail(batch[0])
                return
            log.warning("a telemetry transaction of %d requests failed; retrying each", len(batch))
            self.stats.retried_alone += len(batch)
            for request in batch:
                try:
                    await self._transaction([request])
                except Exception:
                    self._fail(request)
                else:
                    _resolve(request)
            return
        for request in batch:
            _resolve(request)

    async def _transaction(self, batch: list[_Request]) -> None:
        await self.series.prepare(p for request in batch for p in request.points)
        async with self.db.write() as session:
            written = await self.series.write(
                session, [(request.points, request.received_at) for request in batch]
            )
        self.stats.transactions += 1
        self.stats.requests += len(batch)
        self.stats.points += written.points
        self.stats.new += written.new

    def _fail(self, request: _Request) -> None:
        log.exception("telemetry write of %d points failed", len(request.points))
        if not request.done.done():
            request.done.set_exception(IngestFailed(len(request.points)))

    async def close(self) -> None:
        """Finish what was accepted (server shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)


def _resolve(request: _Request) -> None:
    if not request.done.done():
        request.done.set_result(None)


class IngestFailed(Exception):
    def __init__(self, points: int) -> None:
        super().__init__(f"{points} telemetry points could not be stored; send them again")
        self.points = points


class Upkeep:
    """Telemetry's periodic chores: expire what is past retention, make tomorrow's partition.

    `tick` is cheap to call every second; it works once per `every`.
    """

    def __init__(
        self, series: TimeSeries, retention: Retention, *, every: timedelta = timedelta(hours=1)
    ) -> None:
        self.series = series
        self.retention = retention
        self.every = every
        self._next: datetime | None = None
        self.last: dict[str, int] = {}

    async def tick(self, now: datetime, *, force: bool = False) -> dict[str, int] | None:
        if not force and self._next is not None and now < self._next:
            return None
        self._next = now + self.every
        today = now.astimezone(UTC).date()
        await self.series.ensure_days([today, today + timedelta(days=1)])
        self.last = await self.series.expire(now, self.retention)
        async with self.series.db.write() as session:
            # Positions are few (a parked device stores one an hour): kept as long as minutes.
            self.last["device_positions"] = await geo.positions.prune(
                session, now - self.retention.minute
            )
        if any(self.last.values()):
            log.info("telemetry past retention removed: %s", self.last)
        return self.last
