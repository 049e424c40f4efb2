"""Faulty sensors and misbehaving devices, found in telemetry by robust statistics.

A detector reads one device's series of one metric together with the same metric on its peers
(the other devices of the same model at the same site) and returns evidence when it sees its
fault. `DETECTORS` is the catalogue, as data: each entry names the health flag it raises, its
severity and its check. Spread is measured with the median absolute deviation scaled by 1.4826
(a normal distribution's standard deviation), so a few broken peers cannot hide a broken device.

- `out_of_range`: readings outside the model's physical range; the other detectors' statistics
  leave them out and judge only readings that could be true (flood and silent count them all).
- `stuck_sensor`: the latest readings sit on one value for a time in which the peers' readings
  (or the device's own earlier ones) keep changing, counted in changes a second so a unit that
  reads more often than its peers is not held to their changes per reading. A value at a bound
  of the range (a full battery) is saturation, not a stuck sensor.
- `spike`: readings far from their neighbours (a Hampel filter: median ± k·MAD in a rolling
  window, following the window's slope), and far beyond what the peers' readings stray to; with
  too few peers, far beyond what the device's own series strays to in most parts of its past
  (radio fades that keep coming are how that radio behaves, not a broken sensor).
- `peer_deviation`: the recent median far from the peers' recent medians, in MAD units; for
  the site's environment (temperature, humidity, pressure), which every peer shares.
- `noisy`: recent noise (what neither a straight nor a bending trend explains) far above the
  peers' (those not held at a bound of the range: a full battery says nothing of a gauge's
  noise).
- `flood`: many more points lately than the expected interval, the peers or the device's own
  past account for.
- `silent`: no point for a while, though most peers keep reporting (when they all go quiet
  it is an outage, not a device fault).

Counters (`COUNTER_METRICS`: `uptime`, the agent's byte totals and restarts) count rather
than measure:
the sensor detectors leave them alone, and flood and silent count their points like any other.

Pure functions over plain data: no I/O, and the time judged (`now`) is given by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from fleetkeeper.services.monitoring.profile import (
    _MEDIAN_SE,
    DEFAULT_THRESHOLDS,
    MAD_SCALE,
    Profile,
    Range,
    Series,
    Thresholds,
    change_share,
    mad,
    median,
    step_noise,
)

__all__ = [
    "ACTIVITY_METRICS",
    "COUNTER_METRICS",
    "DEFAULT_RANGES",
    "DEFAULT_THRESHOLDS",
    "DETECTORS",
    "ENVIRONMENT_METRICS",
    "FLAGS",
    "MAD_SCALE",
    "Check",
    "Detector",
    "Evidence",
    "Finding",
    "Profile",
    "Range",
    "Series",
    "Severity",
    "Thresholds",
    "change_share",
    "detect",
    "detect_group",
    "mad",
    "median",
    "run",
    "step_noise",
]


Evidence = dict[str, object]
# A detector's check: the subject's profile and its peers' in, evidence out (None: healthy).
Check = Callable[[Profile, Sequence[Profile]], Evidence | None]

# Physical ranges of the simulator's metrics; a model may bring its own (pass `ranges`).
# rssi goes below -120 dBm on real radios (LTE reports down to -140), and simulated units in
# dead zones report down to -125: a healthy weak signal must not read as a broken sensor.
DEFAULT_RANGES: Mapping[str, Range] = MappingProxyType(
    {
        "battery": (0.0, 100.0),
        "temperature": (-40.0, 85.0),
        "humidity": (0.0, 100.0),
        "rssi": (-140.0, 0.0),
        "storage_used": (0.0, 100.0),
        "cpu_load": (0.0, 100.0),
        "speed": (0.0, 300.0),  # km/h; a parked van's 0 is a bound, not a stuck sensor
    }
)


# What the air around a site is like: the same for every unit there, so a unit reading it far
# from its peers has a sensor to check. A unit's own battery, signal or storage differ from its
# neighbours' for good reasons (a weak spot, an older battery): peer_deviation leaves them be.
ENVIRONMENT_METRICS = frozenset({"temperature", "humidity", "pressure"})
# What a unit does rather than what it measures: these jump when it gets busy or drives off, and
# sit at 0 while it idles or parks, which no sensor fault explains. spike and noisy skip them.
ACTIVITY_METRICS = frozenset({"cpu_load", "net_tx_kbps", "speed"})
# What a unit counts rather than measures: `uptime` (seconds since boot) and the agent's running
# byte totals climb and fall back to 0 at every reboot, and an idle link's total holds still,
# which no sensor statistic makes sense of (a reset is no spike, a pause no stuck sensor). The
# sensor detectors skip them; flood and silent count their points like any other.
COUNTER_METRICS = frozenset({"uptime", "net_rx_bytes", "net_tx_bytes", "agent_restarts"})


class Severity(StrEnum):
    WARNING = "warning"  # worth a look: the readings are doubtful
    CRITICAL = "critical"  # the readings are wrong, or the device costs the fleet


@dataclass(frozen=True)
class Finding:
    """A fault seen in one metric: the health flag, what was seen, how bad it is."""

    flag: str
    metric: str
    evidence: Evidence
    severity: Severity


@dataclass(frozen=True)
class Detector:
    """One entry of the catalogue: a check returns evidence when it sees its fault.

    A finding is dropped when the same series also raised a flag in `yields_to`: a flag that
    explains it better (a stuck sensor's median is off the peers' too, but it is stuck).
    """

    name: str
    flag: str
    severity: Severity
    check: Check
    description: str
    yields_to: frozenset[str] = field(default_factory=frozenset)
    metrics: frozenset[str] | None = None  # the metrics it judges; None: every metric
    skips: frozenset[str] = field(default_factory=frozenset)  # metrics it never judges


def _num(value: float) -> float:
    """A number as an operator reads it: six significant digits."""
    return float(f"{value:.6g}")


def check_out_of_range(subject: Profile, peers: Sequence[Profile]) -> Evidence | None:
    bad = subject.impossible
    if not bad or subject.physical_range is None:
        return None
    values = [v for _, v in bad]
    return {
        "points": len(bad),
        "of": len(subject.series.points),
        "range": list(subject.physical_range),
        "lowest": min(values),
        "highest": max(values),
        "examples": values[:5],
        "since": bad[0][0],
        "last": bad[-1][0],
    }


def check_stuck(subject: Profile, peers: Sequence[Profile]) -> Evidence | None:
    th = subject.thresholds
    times, values = subject.clean
    run = subject.flat_run
    if run < th.stuck_min_points:
        return None
    since, value = times[-run], values[-1]
    if times[-1] - since < th.stuck_min_seconds:
        return None
    if subject.at_bound(value):
        return None  # a full battery or an empty disk holds still for real
    # Changes a second, not a reading: a unit that reports ten times as often as its peers
    # sees a slow metric (a battery) change ten times as rarely per reading.
    rates = [p.change_rate for p in peers if p.change_rate is not None]
    before = times[: len(times) - run + 1], values[: len(values) - run + 1]
    past = None
    if len(before[1]) > th.stuck_min_points and before[0][-1] > before[0][0]:
        share = change_share(before[1], th.stuck_epsilon)
        past = (share or 0.0) * (len(before[1]) - 1) / (before[0][-1] - before[0][0])
    if rates:
        reference, source = median(rates), "peers"
    elif past is not None:
        reference, source = past, "own history"
    else:
        return None  # nothing to compare with: a value that never moves may be right
    expected = reference * (times[-1] - since)
    if expected < th.stuck_expected_changes:
        return None
    return {
        "value": value,
        "points": run,
        "since": since,
        "seconds": _num(times[-1] - since),
        "expected_changes": _num(expected),
        "reference": source,
    }


def check_silent(subject: Profile, peers: Sequence[Profile]) -> Evidence | None:
    th = subject.thresholds
    interval = subject.expected_interval or subject.interval
    if interval is None:
        intervals = [p.interval for p in peers if p.interval is not None]
        interval = median(intervals) if intervals else 0.0
    quiet_after = max(th.silent_min_seconds, th.silent_intervals * interval)
    last = subject.last
    if last is not None and subject.now - last < quiet_after:
        return None
    reporting = sum(1 for p in peers if p.last is not None and subject.now - p.last < quiet_after)
    if not peers or 2 * reporting <= len(peers):
        return None  # the whole group is quiet: an outage, which is not this device's fault
    return {
        "last_point": last,
        "silent_seconds": None if last is None else _num(subject.now - last),
        "quiet_after": _num(quiet_after),
        "peers_reporting": reporting,
        "peers": len(peers),
    }


def check_flood(subject: Profile, peers: Sequence[Profile]) -> Evidence | None:
    th = subject.thresholds
    count = subject.recent_count
    reporting = [p.recent_count for p in peers if p.recent_count > 0]
    seconds = th.rate_window
    if subject.expected_interval:
        # A device that began reporting within the window can only owe that part of it.
        if subject.times and subject.times[0] > subject.now - seconds:
            seconds = max(subject.now - subject.times[0], subject.expected_interval)
        reference, source = seconds / subject.expected_interval, "expected interval"
    elif reporting:
        reference, source = median(reporting), "peers"
    else:
        since = subject.now - th.rate_window
        before = [t for t in subject.times if t <= since]
        if len(before) < th.min_points or before[-1] <= before[0]:
            return None
        reference = (len(before) - 1) / (before[-1] - before[0]) * th.rate_window
        source = "own history"
    if count < th.flood_factor * reference or count - reference < th.flood_min_excess:
        return None
    return {
        "points": count,
        "seconds": _num(seconds),
        "expected_points": _num(reference),
        "factor": _num(count / reference),
        "reference": source,
    }


def check_spike(subject: Profile, peers: Sequence[Profile]) -> Evidence | None:
    th = subject.thresholds
    if len(subject.clean[1]) < th.spike_stretch:
        return None  # too few readings to know how far the series strays by itself
    wildest = [p.wildest for p in peers if len(p.clean[1]) >= th.spike_stretch]
    if len(wildest) >= th.min_peers:
        reference = "peers"
    else:
        # Too few peers to say how far this metric strays on such a unit: the device's own
        # stretches stand in for them, so fades that come back time after time are its nature.
        wildest, reference = subject.stretches_wildest, "own history"
        if len(wildest) < th.min_peers:
            return None  # too short a past to tell a spike from the way it behaves
    # Radio fades and load bursts stray far on every unit: a spike goes beyond what they do.
    limit = max(th.spike_k, th.spike_peer_factor * median(wildest))
    times, values = subject.clean
    spikes = [i for i, d in enumerate(subject.deviations) if d > limit]
    if not spikes:
        return None
    return {
        "points": len(spikes),
        "of": len(values),
        "spikes": [
            {"t": times[i], "v": values[i], "deviations": _num(subject.deviations[i])}
            for i in spikes[:5]
        ],
        "limit": _num(limit),
        "noise": _num(subject.noise),
        "reference": reference,
    }


def check_noisy(subject: Profile, peers: Sequence[Profile]) -> Evidence | None:
    th = subject.thresholds
    noise = subject.recent_noise
    # A peer held at a bound (a full battery) barely moves: its noise is no sensor's.
    references = [p.recent_noise for p in peers if p.recent_noise is not None and not p.saturated]
    if noise is None or len(references) < th.min_peers:
        return None
    peer_noise = median(references)
    ratio = noise / max(peer_noise, subject.floor(th.noise_floor))
    if ratio < th.noisy_factor:
        return None
    return {
        "noise": _num(noise),
        "peer_noise": _num(peer_noise),
        "ratio": _num(ratio),
        "points": len(subject.recent),
        "peers": len(references),
    }


def check_peer_deviation(subject: Profile, peers: Sequence[Profile]) -> Evidence | None:
    th = subject.thresholds
    own = subject.recent_median
    medians = [p.recent_median for p in peers if p.recent_median is not None]
    if own is None or len(medians) < th.min_peers:
        return None
    peer_median = median(medians)
    spread = max(mad(medians, peer_median), subject.floor(th.peer_min_spread))
    # The device's own median is an estimate too: a noisy sensor's wanders more.
    own_error = _MEDIAN_SE * (subject.recent_noise or 0.0) / math.sqrt(len(subject.recent))
    z = (own - peer_median) / math.hypot(spread, own_error)
    if abs(z) < th.peer_z:
        return None
    return {
        "median": _num(own),
        "peer_median": _num(peer_median),
        "mad": _num(spread),
        "z": _num(z),
        "points": len(subject.recent),
        "peers": len(medians),
        "since": subject.now - th.recent_seconds,
    }


DETECTORS: tuple[Detector, ...] = (
    Detector(
        "physical-range",
        "out_of_range",
        Severity.CRITICAL,
        check_out_of_range,
        "Readings outside the model's physical range for the metric.",
    ),
    Detector(
        "flat-line",
        "stuck_sensor",
        Severity.CRITICAL,
        check_stuck,
        "The latest readings hold one value while the peers' (or its own earlier) ones change.",
        skips=COUNTER_METRICS,
    ),
    Detector(
        "quiet",
        "silent",
        Severity.WARNING,
        check_silent,
        "No reading for several usual intervals while most peers keep reporting.",
    ),
    Detector(
        "report-rate",
        "flood",
        Severity.CRITICAL,
        check_flood,
        "Far more readings lately than the expected interval, the peers or its past explain.",
    ),
    Detector(
        "hampel",
        "spike",
        Severity.WARNING,
        check_spike,
        "Readings far from what their neighbours lead one to expect, farther than peers stray.",
        yields_to=frozenset({"stuck_sensor", "noisy"}),
        skips=ACTIVITY_METRICS | COUNTER_METRICS,
    ),
    Detector(
        "step-noise",
        "noisy",
        Severity.WARNING,
        check_noisy,
        "Noise far above the peers' lately.",
        skips=ACTIVITY_METRICS | COUNTER_METRICS,
    ),
    Detector(
        "peer-median",
        "peer_deviation",
        Severity.WARNING,
        check_peer_deviation,
        "The recent median far from the peers' recent medians, in MAD units.",
        yields_to=frozenset({"stuck_sensor", "silent"}),
        metrics=ENVIRONMENT_METRICS,
        skips=COUNTER_METRICS,
    ),
)

FLAGS: tuple[str, ...] = tuple(dict.fromkeys(d.flag for d in DETECTORS))


def run(
    subject: Profile, peers: Sequence[Profile], detectors: Sequence[Detector] = DETECTORS
) -> tuple[Finding, ...]:
    """The findings of every detector on one profiled series, judged against its peers."""
    seen: list[tuple[Detector, Evidence]] = []
    metric = subject.series.metric
    for detector in detectors:
        if metric in detector.skips:
            continue
        if detector.metrics is not None and metric not in detector.metrics:
            continue
        evidence = detector.check(subject, peers)
        if evidence is not None:
            seen.append((detector, evidence))
    raised = {detector.flag for detector, _ in seen}
    return tuple(
        Finding(detector.flag, metric, evidence, detector.severity)
        for detector, evidence in seen
        if not detector.yields_to & raised
    )


def detect(
    series: Series,
    *,
    now: float,
    peers: Iterable[Series] = (),
    ranges: Mapping[str, Range] = DEFAULT_RANGES,
    expected_interval: float | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    detectors: Sequence[Detector] = DETECTORS,
) -> tuple[Finding, ...]:
    """What is wrong with one device's series, judged against the same metric on its peers."""
    group = [series, *peers]
    if any(s.metric != series.metric for s in group):
        raise ValueError(f"peers are judged on the same metric ({series.metric})")
    profiles = _profiles(group, now, ranges, expected_interval, thresholds)
    return run(profiles[0], profiles[1:], detectors)


def detect_group(
    series: Iterable[Series],
    *,
    now: float,
    ranges: Mapping[str, Range] = DEFAULT_RANGES,
    expected_interval: float | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    detectors: Sequence[Detector] = DETECTORS,
) -> dict[str, tuple[Finding, ...]]:
    """The findings of every device in a peer group (one model at one site), any metrics.

    Each series is judged against the same metric on the group's other devices; every device
    given is in the answer, a healthy one with no findings.
    """
    by_metric: dict[str, list[Series]] = {}
    findings: dict[str, list[Finding]] = {}
    for s in series:
        by_metric.setdefault(s.metric, []).append(s)
        findings.setdefault(s.device, [])
    for metric, group in by_metric.items():
        devices = [s.device for s in group]
        if len(set(devices)) != len(devices):
            raise ValueError(f"one series per device and metric ({metric} repeats a device)")
        profiles = _profiles(group, now, ranges, expected_interval, thresholds)
        for i, subject in enumerate(profiles):
            peers = profiles[:i] + profiles[i + 1 :]
            findings[subject.series.device].extend(run(subject, peers, detectors))
    return {device: tuple(found) for device, found in findings.items()}


def _profiles(
    group: Sequence[Series],
    now: float,
    ranges: Mapping[str, Range],
    expected_interval: float | None,
    thresholds: Thresholds,
) -> list[Profile]:
    return [
        Profile(
            s,
            now=now,
            physical_range=ranges.get(s.metric),
            expected_interval=expected_interval,
            thresholds=thresholds,
        )
        for s in group
    ]
