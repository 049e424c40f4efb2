"""The statistics the detectors read: a device's series of one metric, profiled once.

`Series` holds the readings, `Thresholds` when a detector speaks up, and `Profile` the robust
statistics of a series (median, MAD-scaled spread, step noise, reporting rate), each computed
on first use and shared by every detector and every peer that compares with it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

MAD_SCALE = 1.4826  # MAD times this estimates the standard deviation of normal data
_MEDIAN_SE = math.sqrt(math.pi / 2)  # a median's standard error, in sigma/√n
_TINY = 1e-9  # the smallest spread divided by when nothing else gives a scale

Range = tuple[float, float]


@dataclass(frozen=True)
class Series:
    """One device's readings of one metric: (Unix seconds, value) points, oldest first."""

    device: str
    metric: str
    points: Sequence[tuple[float, float]] = ()

    def __post_init__(self) -> None:
        points = tuple(self.points)
        previous = -math.inf
        for t, v in points:
            if not (math.isfinite(t) and math.isfinite(v)):
                raise ValueError(f"{self.device}/{self.metric}: a point is finite, not {(t, v)}")
            if t < previous:
                raise ValueError(f"{self.device}/{self.metric}: points go oldest first ({t})")
            previous = t
        object.__setattr__(self, "points", points)


@dataclass(frozen=True)
class Thresholds:
    """When a detector speaks up. The defaults favour precision: every flag is a claim an
    operator will act on, so each needs strong evidence (each field's comment says why)."""

    # Readings a window needs before its median or noise means anything.
    min_points: int = 10
    # Peers needed to compare with their distribution (peer_deviation, noisy, the spikes'
    # limit): below five a median and a MAD of the peers are too easily fooled.
    min_peers: int = 5
    # The present, as peer_deviation and noisy judge it: the last 15 minutes (90 readings at
    # the simulator's 10 s), long enough for a stable median, short enough to be "now".
    recent_seconds: float = 900.0
    # stuck_sensor: readings within `stuck_epsilon` of the last one, at least this many and
    # this long, during which the reference (peers, else own past) would have changed
    # `stuck_expected_changes` times (P(no change) ≈ e^-10 if the sensor were fine).
    stuck_epsilon: float = 1e-6
    stuck_min_points: int = 20
    stuck_min_seconds: float = 300.0
    stuck_expected_changes: float = 10.0
    # spike: a reading more than `spike_k` robust deviations from what the `spike_half_window`
    # readings on either side lead one to expect (a Hampel filter that follows a ramp). 8
    # rather than the textbook 3: a 3-sigma reading is an hourly event in a fleet, an 8-sigma one is
    # not. With enough peers a spike must also stray `spike_peer_factor` times as far as the
    # typical peer's wildest reading: radio fades and load bursts are how some metrics
    # behave on every unit, not a broken sensor. 3, as a healthy unit's wildest radio fade
    # reaches up to 2.8 times its peers' typical wildest in the simulator's fleets (5-15 dB
    # fades on 2.5 dB of noise), while a broken sensor's wild readings go far beyond (a 15 °C
    # jump on 0.3 °C of noise is 50 deviations). With fewer peers the device's own past stands
    # in for them: its time cut into `min_peers` equal stretches, each stretch's wildest
    # reading counting as a peer's (radio fades that come every few minutes stray in most
    # stretches; a broken sensor's wild readings in a few). Until each stretch holds
    # `spike_stretch` readings there is too little past to compare with, and no spike; a
    # series needs as many readings (and peers as many) before its noise is known well enough
    # (a fifth either way) to judge spikes at all.
    spike_half_window: int = 5
    spike_k: float = 8.0
    spike_peer_factor: float = 3.0
    spike_stretch: int = 30
    # peer_deviation: |median - peers' median| / spread >= peer_z, the spread being the peers'
    # MAD of medians (at least `peer_min_spread` of the physical range's width) combined with
    # the standard error of the device's own median. Modified z-scores above 3.5 are the usual
    # outlier rule; 5 keeps a fleet of thousands free of chance findings.
    peer_z: float = 5.0
    peer_min_spread: float = 0.005
    # noisy: recent noise >= noisy_factor times the peers' median noise (16 times the variance);
    # the peers' noise counts as at least `noise_floor` of the range's width, so quantised,
    # nearly flat metrics (battery, storage) do not turn one jitter into a finding (the same
    # floor keeps a spike's deviation from dividing by nothing).
    noisy_factor: float = 4.0
    noise_floor: float = 0.001
    # flood: points in the last `rate_window` >= flood_factor times the reference, and at least
    # `flood_min_excess` more than it (a point a minute becoming three is not a flood).
    rate_window: float = 600.0
    flood_factor: float = 5.0
    flood_min_excess: int = 30
    # silent: no point for max(silent_min_seconds, silent_intervals times the usual interval).
    silent_intervals: float = 5.0
    silent_min_seconds: float = 300.0

    def __post_init__(self) -> None:
        if min(self.min_points, self.stuck_min_points) < 2:
            raise ValueError("min_points and stuck_min_points are at least 2")
        if min(self.min_peers, self.spike_half_window, self.spike_stretch) < 1:
            raise ValueError("min_peers, spike_half_window and spike_stretch are at least 1")
        scales = (self.recent_seconds, self.rate_window, self.silent_intervals, self.peer_z)
        factors = (self.spike_k, self.spike_peer_factor, self.noisy_factor, self.flood_factor)
        if any(not value > 0 for value in (*scales, *factors)):
            raise ValueError("windows, factors and z-scores are above 0")


DEFAULT_THRESHOLDS = Thresholds()


def median(values: Sequence[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count); needs a value."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def mad(values: Sequence[float], center: float | None = None) -> float:
    """The median absolute deviation, scaled to a standard deviation (times 1.4826)."""
    middle = median(values) if center is None else center
    return MAD_SCALE * median([abs(v - middle) for v in values])


def step_noise(values: Sequence[float]) -> float:
    """The noise of a series from its steps: immune to trends, daily cycles and level shifts.

    A step of white noise has √2 times its spread; the MAD around the median step discounts a
    steady slope and a few jumps. 0.0 below three readings.
    """
    if len(values) < 3:
        return 0.0
    steps = [b - a for a, b in itertools.pairwise(values)]
    return mad(steps) / math.sqrt(2)


def bend_noise(values: Sequence[float]) -> float:
    """The noise of a series from how its steps change: immune to a trend that bends as well as
    to a straight one (a battery charging ever slower as the sun sinks, when the readings span
    hours of it: a simulator's sped-up day, or readings far apart).

    A second difference of white noise has √6 times its spread; the MAD discounts a few kinks.
    0.0 below four readings.
    """
    if len(values) < 4:
        return 0.0
    bends = [a - 2 * b + c for a, b, c in zip(values, values[1:], values[2:], strict=False)]
    return mad(bends) / math.sqrt(6)


def change_share(values: Sequence[float], epsilon: float) -> float | None:
    """The share of steps that change the value by more than `epsilon`; None below 2 values."""
    if len(values) < 2:
        return None
    changed = sum(1 for a, b in itertools.pairwise(values) if abs(b - a) > epsilon)
    return changed / (len(values) - 1)


class Profile:
    """One series as the detectors see it; each statistic is computed on first use, once
    (a device's profile is also every peer's reference, so a fleet is profiled only once)."""

    def __init__(
        self,
        series: Series,
        *,
        now: float,
        physical_range: Range | None = None,
        expected_interval: float | None = None,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
    ) -> None:
        self.series = series
        self.now = now
        self.physical_range = physical_range
        self.expected_interval = expected_interval
        self.thresholds = thresholds

    def floor(self, share: float) -> float:
        """`share` of the physical range's width (the metric's natural scale): the least
        spread worth dividing by; a tiny one when the range is unknown."""
        low, high = self.physical_range or (0.0, 0.0)
        return max(share * (high - low), _TINY)

    def at_bound(self, value: float) -> bool:
        """A reading at a bound of the physical range: held there (a full battery), saturated."""
        eps = self.thresholds.stuck_epsilon
        return any(abs(value - bound) <= eps for bound in self.physical_range or ())

    @cached_property
    def times(self) -> list[float]:
        return [t for t, _ in self.series.points]

    @cached_property
    def last(self) -> float | None:
        return self.times[-1] if self.times else None

    @cached_property
    def interval(self) -> float | None:
        """The usual time between points (the median), None below two points."""
        steps = [b - a for a, b in itertools.pairwise(self.times)]
        return median(steps) if steps else None

    @cached_property
    def impossible(self) -> list[tuple[float, float]]:
        """Points outside the physical range."""
        low, high = self.physical_range or (-math.inf, math.inf)
        return [(t, v) for t, v in self.series.points if not low <= v <= high]

    @cached_property
    def clean(self) -> tuple[list[float], list[float]]:
        """(times, values) of the readings that could be true: inside the physical range."""
        low, high = self.physical_range or (-math.inf, math.inf)
        kept = [(t, v) for t, v in self.series.points if low <= v <= high]
        return [t for t, _ in kept], [v for _, v in kept]

    @cached_property
    def noise(self) -> float:
        return step_noise(self.clean[1])

    @cached_property
    def typical_step(self) -> float:
        """The median distance from one reading to the next: how far the series moves in a
        step, noise or not (white noise moves 0.95 times its spread; a steady drain its rate)."""
        values = self.clean[1]
        if len(values) < 2:
            return 0.0
        return median([abs(b - a) for a, b in itertools.pairwise(values)])

    @cached_property
    def recent(self) -> list[float]:
        """The readings that could be true in the last `recent_seconds`."""
        since = self.now - self.thresholds.recent_seconds
        times, values = self.clean
        return [v for t, v in zip(times, values, strict=True) if t > since]

    @cached_property
    def recent_median(self) -> float | None:
        return median(self.recent) if len(self.recent) >= self.thresholds.min_points else None

    @cached_property
    def saturated(self) -> bool:
        """Held at a bound of the range for half the recent readings or more (a full battery
        in the sun): its steps say how the bound holds, not how the sensor's readings move."""
        return self.recent_median is not None and self.at_bound(self.recent_median)

    @cached_property
    def recent_noise(self) -> float | None:
        """The noise of the recent readings, as the noisy detector compares it: the smaller of
        `step_noise` and `bend_noise`. A trend that bends inflates the first (a battery charging
        ever slower as the sun sinks, read every ten fleet minutes), the corners of a sawtooth
        the second (a van's battery, full at each stop); white noise inflates both alike."""
        recent = self.recent
        if len(recent) < self.thresholds.min_points:
            return None
        return min(step_noise(recent), bend_noise(recent))

    @cached_property
    def change_share(self) -> float | None:
        """How often the readings change (by more than the stuck epsilon) from one to the next."""
        return change_share(self.clean[1], self.thresholds.stuck_epsilon)

    @cached_property
    def change_rate(self) -> float | None:
        """How many changes a second (the changes between readings over their time span)."""
        times, values = self.clean
        share = self.change_share
        if share is None or times[-1] <= times[0]:
            return None
        return share * (len(values) - 1) / (times[-1] - times[0])

    @cached_property
    def flat_run(self) -> int:
        """How many of the latest readings sit within the stuck epsilon of the last one."""
        values = self.clean[1]
        if not values:
            return 0
        last, eps = values[-1], self.thresholds.stuck_epsilon
        run = 0
        for v in reversed(values):
            if abs(v - last) > eps:
                break
            run += 1
        return run

    @cached_property
    def deviations(self) -> list[float]:
        """Each reading's distance from its neighbours, in robust deviations (a Hampel filter).

        The neighbours are the `spike_half_window` readings on either side. What they lead one
        to expect is the line through the medians of those before and those after, so a ramp
        (a warming morning, a charging battery) does not hide a spike on it; their spread is
        the MAD of their distances from that line, and at least the series' step noise (a calm
        stretch must not make an ordinary reading look wild), its typical step (a battery
        that drains a step a reading and charges in one, read sparsely, is a few steps off any
        line near the jumps) and a sliver of the range.
        The first and the newest reading have neighbours on one side only and count 0.0: a
        spike or the first of a new level (a van parking), only the next reading tells.
        """
        values = self.clean[1]
        th = self.thresholds
        if len(values) < th.min_points:
            return []
        half = th.spike_half_window
        least = max(self.noise, self.typical_step, self.floor(th.noise_floor))
        # Only deviations above `calm` can change a verdict (a limit is spike_k or more, and a
        # peer's or a stretch's wildest raises it only from above calm): a reading within
        # calm·least of the line keeps |x - expected| / least, an upper bound below calm, and
        # skips the MAD.
        calm = th.spike_k / max(th.spike_peer_factor, 1.0)
        found = []
        for i, x in enumerate(values):
            before, after = values[max(0, i - half) : i], values[i + 1 : i + half + 1]
            if not (before and after):
                found.append(0.0)
                continue
            # The halves' medians sit at their middles, (n + 1) / 2 steps from reading i.
            back, ahead = (len(before) + 1) / 2, (len(after) + 1) / 2
            low, high = median(before), median(after)
            slope = (high - low) / (back + ahead)
            expected = low + slope * back
            if abs(x - expected) <= calm * least:
                found.append(abs(x - expected) / least)
                continue
            nb = len(before)
            distances = [abs(v - expected - slope * (j - nb)) for j, v in enumerate(before)]
            distances += [abs(v - expected - slope * j) for j, v in enumerate(after, 1)]
            spread = MAD_SCALE * median(distances)
            found.append(abs(x - expected) / max(spread, least))
        return found

    @cached_property
    def wildest(self) -> float:
        """The largest deviation in the series: how far this metric strays on its own."""
        return max(self.deviations, default=0.0)

    @cached_property
    def stretches_wildest(self) -> list[float]:
        """The largest deviation in each of `min_peers` stretches of the series, equal spans of
        its time: how far the series strays in one part of its past and the next, as so many
        peers would show it. Empty while a stretch holds fewer than `spike_stretch` readings
        (too little of the past to say how it behaves)."""
        th = self.thresholds
        times, found = self.clean[0], self.deviations
        if len(found) < th.min_peers * th.spike_stretch:
            return []
        span = (times[-1] - times[0]) / th.min_peers
        edges = [bisect.bisect_left(times, times[0] + k * span) for k in range(th.min_peers)]
        edges.append(len(times))
        if any(hi - lo < th.spike_stretch for lo, hi in itertools.pairwise(edges)):
            return []
        return [max(found[lo:hi]) for lo, hi in itertools.pairwise(edges)]

    @cached_property
    def recent_count(self) -> int:
        """Points (possible or not) in the last `rate_window`: what the device sent lately."""
        since = self.now - self.thresholds.rate_window
        return sum(1 for t in self.times if since < t <= self.now)
