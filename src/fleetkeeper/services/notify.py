"""Waking long-polling devices when work arrives for them.

In-process waiters per device. A server replica only wakes its own waiters; a long-poll also
re-checks the database every `recheck` seconds, so work created on another replica reaches
the device within that time without any extra coordinator.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Notifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, device_id: str) -> None:
        for event in self._waiters.get(device_id, ()):
            event.set()

    async def wait(self, device_id: str, seconds: float) -> bool:
        """True when woken for the device, False when `seconds` passed first."""
        event = asyncio.Event()
        self._waiters[device_id].add(event)
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(device_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[device_id]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())
