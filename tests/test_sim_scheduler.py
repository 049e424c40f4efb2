"""The heap scheduler wakes each item on time, once at a time, with bounded concurrency."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest

from fleetkeeper.sim.scheduler import Scheduler


def stopwatch() -> Callable[[], float]:
    start = time.monotonic()
    return lambda: time.monotonic() - start


async def test_items_run_in_the_order_they_are_due() -> None:
    order: list[str] = []

    async def run(item: str) -> float | None:
        order.append(item)
        return None

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=1, now=now)
    for item, due in (("c", 0.06), ("a", 0.0), ("b", 0.03)):
        scheduler.add(item, due)
    await scheduler.run(until=0.2)
    assert order == ["a", "b", "c"]


async def test_an_item_comes_back_when_its_run_asks() -> None:
    runs: list[float] = []

    async def run(item: str) -> float | None:
        runs.append(now())
        return now() + 0.05 if len(runs) < 4 else None

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=2, now=now)
    scheduler.add("device", 0.0)
    await scheduler.run(until=0.5)
    assert len(runs) == 4
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert all(0.04 < g < 0.15 for g in gaps)
    assert len(scheduler) == 0


async def test_no_more_than_concurrency_items_run_at_once() -> None:
    running = peak = 0

    async def run(item: int) -> float | None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return None

    now = stopwatch()
    scheduler: Scheduler[int] = Scheduler(run, concurrency=3, now=now)
    for i in range(12):
        scheduler.add(i, 0.0)
    await scheduler.run(until=0.3)
    assert peak == 3


async def test_one_item_never_runs_twice_at_once() -> None:
    active: set[str] = set()

    async def run(item: str) -> float | None:
        assert item not in active
        active.add(item)
        await asyncio.sleep(0.01)
        active.discard(item)
        return now()  # due again at once

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=8, now=now)
    scheduler.add("a", 0.0)
    scheduler.add("b", 0.0)
    await scheduler.run(until=0.15)


async def test_a_crashing_run_is_retried_later_not_fatal() -> None:
    calls = 0

    async def run(item: str) -> float | None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=1, now=now)
    scheduler.add("x", 0.0)
    await scheduler.run(until=0.1)
    assert calls == 1 and scheduler.crashes == 1
    assert len(scheduler) == 1  # back in the heap, RETRY_AFTER_CRASH seconds later


async def test_stop_ends_the_run_early() -> None:
    async def run(item: str) -> float | None:
        return None

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=1, now=now)
    scheduler.add("late", 30.0)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    await scheduler.run(stop=stop)
    assert time.monotonic() - started < 1.0
    assert len(scheduler) == 1


async def test_ticks_in_progress_finish_when_the_run_ends() -> None:
    done: list[str] = []

    async def run(item: str) -> float | None:
        await asyncio.sleep(0.1)
        done.append(item)
        return None

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=2, now=now)
    scheduler.add("in flight", 0.0)
    scheduler.add("too late", 1.0)
    await scheduler.run(until=0.03)
    assert done == ["in flight"]
    assert len(scheduler) == 1


async def test_a_tick_that_outlasts_the_grace_is_cut_off() -> None:
    async def run(item: str) -> float | None:
        await asyncio.sleep(5)
        return None

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=1, now=now, grace=0.05)
    scheduler.add("slow", 0.0)
    started = time.monotonic()
    await scheduler.run(until=0.01)
    assert time.monotonic() - started < 1.0


async def test_an_infinite_due_time_drops_the_item() -> None:
    async def run(item: str) -> float | None:
        return float("inf")

    now = stopwatch()
    scheduler: Scheduler[str] = Scheduler(run, concurrency=1, now=now)
    scheduler.add("x", 0.0)
    await scheduler.run(until=0.05)
    assert len(scheduler) == 0


def test_concurrency_is_at_least_one() -> None:
    async def run(item: str) -> float | None:
        return None

    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(run, concurrency=0, now=time.monotonic)
