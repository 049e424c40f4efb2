"""Wake many devices on time with a heap and a few workers, not a sleeping task each.

Every device sits in the heap once, keyed by when it is due. A dispatcher moves due devices to
a queue; a fixed number of workers (the concurrency: how many requests may be in flight at
once) take them, run their tick and put them back at the time the tick asked for. A device
therefore never runs two ticks at once, memory does not grow with waiting, and when the
workers cannot keep up, devices are late rather than piling up requests.

When the run ends, ticks in progress get `grace` seconds to finish, so what a device sent is
also what it saw answered (a request cut off half-way may have landed on the server anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("fleetkeeper.sim")
T = TypeVar("T")
IDLE_WAIT = 1.0  # how long the dispatcher sleeps with nothing scheduled
RETRY_AFTER_CRASH = 5.0
GRACE = 10.0


class Scheduler(Generic[T]):
    def __init__(
        self,
        run: Callable[[T], Awaitable[float | None]],
        *,
        concurrency: int,
        now: Callable[[], float],
        grace: float = GRACE,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency is at least 1")
        self._run = run
        self._now = now
        self.concurrency = concurrency
        self.grace = grace
        self._busy: set[asyncio.Task[None]] = set()
        self._closing = False
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self.running = 0  # ticks in progress
        self.crashes = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, item: T, due: float) -> None:
        """Schedule `item` at `due` (same clock as `now`); an infinite time drops it."""
        if math.isinf(due):
            return
        if not self._heap or due < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (due, next(self._seq), item))

    async def run(self, until: float | None = None, stop: asyncio.Event | None = None) -> None:
        """Dispatch until `until` (on the `now` clock), until `stop` is set, or for ever."""
        queue: asyncio.Queue[tuple[float, T]] = asyncio.Queue()
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.concurrency)]
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        if stopper is not None:
            stopper.add_done_callback(lambda _: self._wake.set())
        try:
            while stop is None or not stop.is_set():
                now = self._now()
                if until is not None and now >= until:
                    break
                while self._heap and self._heap[0][0] <= now:
                    due, _, item = heapq.heappop(self._heap)
                    queue.put_nowait((due, item))
                wait = self._heap[0][0] - now if self._heap else IDLE_WAIT
                if until is not None:
                    wait = min(wait, until - now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait)):
                        await self._wake.wait()
        finally:
            await self._wind_down(workers, stopper)
            # Devices waiting in the queue go back to the heap, so a later run carries on.
            while not queue.empty():
                due, item = queue.get_nowait()
                heapq.heappush(self._heap, (due, next(self._seq), item))

    async def _wind_down(
        self, workers: list[asyncio.Task[None]], stopper: asyncio.Task[bool] | None
    ) -> None:
        """Let the ticks in progress finish (for `grace` seconds at most), then end the rest."""
        self._closing = True
        busy = [w for w in workers if w in self._busy]
        for task in [*workers, *([stopper] if stopper else [])]:
            if task not in busy:
                task.cancel()
        if busy:
            await asyncio.wait(busy, timeout=self.grace)
        for task in busy:
            task.cancel()
        await asyncio.gather(*workers, *([stopper] if stopper else []), return_exceptions=True)
        self._closing = False

    async def _worker(self, queue: asyncio.Queue[tuple[float, T]]) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._closing:
            _, item = await queue.get()
            self.running += 1
            self._busy.add(me)
            try:
                following = await self._run(item)
            except Exception:
                # A bug in one device's tick must not stop the fleet: log it, try later.
                self.crashes += 1
                log.exception("a simulated device's tick failed; retrying it later")
                following = self._now() + RETRY_AFTER_CRASH
            finally:
                self.running -= 1
                self._busy.discard(me)
            if following is not None:
                self.add(item, following)
