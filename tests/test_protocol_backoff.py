"""Backoff: doubling from a second to five minutes, jittered, never really sleeping here."""

from __future__ import annotations

import random

import pytest

from fleetkeeper.protocol import Backoff, RateLimited, Unavailable


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_steps_double_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    steps = []
    for _ in range(12):
        steps.append(backoff.step())
        backoff.next_delay()
    assert steps == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_each_wait_lies_between_half_and_all_of_its_step() -> None:
    backoff = Backoff(rng=random.Random(7))
    for _ in range(50):
        step = backoff.step()
        assert step / 2 <= backoff.next_delay() <= step


def test_full_jitter_goes_down_to_zero() -> None:
    class Lowest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return a

    backoff = Backoff(floor=0.0, rng=Lowest())
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_same_seed_same_waits() -> None:
    first = Backoff(rng=random.Random(1))
    second = Backoff(rng=random.Random(1))
    assert [first.next_delay() for _ in range(5)] == [second.next_delay() for _ in range(5)]


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff()
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.step() == 1.0


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff()
    backoff.attempt = 10_000
    assert backoff.step() == 300.0


async def test_wait_sleeps_through_the_injected_sleep() -> None:
    sleeps = Sleeps()
    backoff = Backoff(sleep=sleeps, rng=random.Random(3))
    await backoff.wait(Unavailable("down"))
    await backoff.wait()
    assert len(sleeps.waits) == 2
    assert 0.5 <= sleeps.waits[0] <= 1.0 and 1.0 <= sleeps.waits[1] <= 2.0


async def test_rate_limited_waits_what_the_server_asks() -> None:
    sleeps = Sleeps()
    backoff = Backoff(sleep=sleeps)
    await backoff.wait(RateLimited(42.0))
    assert sleeps.waits == [42.0]
    assert backoff.attempt == 0  # a 429 is not a failure of the network


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"base": 10, "cap": 5}, {"floor": 1.5}])
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
