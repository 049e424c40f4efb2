"""Waiting between retries: exponential, capped, with jitter, and a clock tests can replace.

The protocol asks for waits that start at about a second and double up to five minutes, each a
random value between half and all of the step ("equal jitter"): devices that lost the server at
the same moment then come back spread out, and none retries at once. `floor=0` gives "full
jitter" (anything from zero up to the step).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from fleetkeeper.protocol.errors import RateLimited, Unavailable

Sleep = Callable[[float], Awaitable[None]]


class Backoff:
    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        *,
        floor: float = 0.5,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        if not 0.0 <= floor <= 1.0:
            raise ValueError("floor is a fraction of the step, from 0 to 1")
        self.base = base
        self.cap = cap
        self.floor = floor
        self.attempt = 0
        self._rng = rng or random.Random()
        self._sleep = sleep

    def step(self) -> float:
        """The upper bound of the next wait: base doubled once per failure so far, capped."""
        # min() before the power would overflow a float after ~1000 failures.
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        """The wait after one more failure."""
        step = self.step()
        self.attempt += 1
        return self._rng.uniform(self.floor * step, step)

    def delay_for(self, error: Unavailable) -> float:
        """How long to wait after `error`: what a 429 asks for, else the next backoff step."""
        if isinstance(error, RateLimited):
            return max(0.0, error.retry_after)
        return self.next_delay()

    async def wait(self, error: Unavailable | None = None) -> float:
        delay = self.delay_for(error) if error is not None else self.next_delay()
        await self._sleep(delay)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits about `base` again."""
        self.attempt = 0
