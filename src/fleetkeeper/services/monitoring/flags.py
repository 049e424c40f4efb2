"""Health flags: what the detectors' findings mean for a device, and how its stored flags change.

The detectors speak in fine-grained findings (`stuck_sensor` on `temperature`); a device carries
the few flags an operator acts on, each with the finding behind it as evidence:

- `faulty_sensor` (one per metric): the readings of that metric cannot be trusted. The
  `detector` says which fault was seen (`out_of_range`, `stuck_sensor`, `noisy`, `spike`,
  `peer_deviation`, or `silent` for a metric that stopped while the others go on); when several
  detectors see the same metric, the most telling one (in that order) is the flag's, and the
  others ride along in `evidence.also`.
- `flood` (device-wide): far more reports than the interval and the peers explain.
- `silent` (device-wide): no report in any metric for several usual intervals, while most of its
  peers keep reporting: the device dropped out.
- `outage` (device-wide): the device went quiet together with at least half of its site (or of
  its peer group, when the site as a whole still reports): power or network went down there,
  not the device. Each quiet device carries the flag, so a query finds them all; the evidence
  names the scope and how many went quiet.
- `battery_degraded`, `storage_filling` (per metric, from `maintenance`): the forecast says the
  battery needs replacing, or the storage will be full, within the watch's horizon.

A device that says nothing now is judged on what it says when it is back: a quiet device keeps
only `silent` or `outage`. Silence is judged only for what a device reported before (within the
window, in the latest-values table, or a silence flag it carries), so a unit that never sent a
metric is not missing it. Pure functions over plain data; `watch` does the I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from fleetkeeper.services.monitoring.detectors import (
    DEFAULT_RANGES,
    DETECTORS,
    Detector,
    Finding,
    Range,
    Series,
    Severity,
    Thresholds,
    detect_group,
)
from fleetkeeper.services.monitoring.profile import DEFAULT_THRESHOLDS, Profile

__all__ = [
    "CATALOGUE",
    "DETECTION_FLAGS",
    "DEVICE_WIDE",
    "MAINTENANCE_FLAGS",
    "SENSOR_DETECTORS",
    "Carried",
    "Changes",
    "Flag",
    "FlagSpec",
    "Health",
    "OutagePolicy",
    "PeerGroup",
    "assess_site",
    "reconcile",
]

DEVICE_WIDE = ""  # the metric of a flag about the whole device
REPORTS = "*reports*"  # the series of a device's report times, any metric: silence and floods


class Flag(StrEnum):
    FAULTY_SENSOR = "faulty_sensor"
    FLOOD = "flood"
    SILENT = "silent"
    OUTAGE = "outage"
    BATTERY_DEGRADED = "battery_degraded"
    STORAGE_FILLING = "storage_filling"


@dataclass(frozen=True)
class FlagSpec:
    flag: Flag
    per_metric: bool
    description: str


CATALOGUE: tuple[FlagSpec, ...] = (
    FlagSpec(Flag.FAULTY_SENSOR, True, "The readings of the metric cannot be trusted."),
    FlagSpec(Flag.FLOOD, False, "Far more reports than the interval and the peers explain."),
    FlagSpec(Flag.SILENT, False, "No report for several intervals while most peers report."),
    FlagSpec(Flag.OUTAGE, False, "Quiet together with at least half of its site or peer group."),
    FlagSpec(Flag.BATTERY_DEGRADED, True, "The battery is due for replacement within the horizon."),
    FlagSpec(Flag.STORAGE_FILLING, True, "The storage will be full within the horizon."),
)
DETECTION_FLAGS = frozenset({Flag.FAULTY_SENSOR, Flag.FLOOD, Flag.SILENT, Flag.OUTAGE})
MAINTENANCE_FLAGS = frozenset({Flag.BATTERY_DEGRADED, Flag.STORAGE_FILLING})
QUIET_FLAGS = frozenset({Flag.SILENT, Flag.OUTAGE})

# The detectors behind `faulty_sensor`, the most telling first (it names the flag's detector).
SENSOR_DETECTORS = ("out_of_range", "stuck_sensor", "noisy", "spike", "peer_deviation", "silent")
_METRIC_CATALOGUE = tuple(d for d in DETECTORS if d.flag in SENSOR_DETECTORS)
_REPORT_CATALOGUE = tuple(d for d in DETECTORS if d.flag in {"silent", "flood"})
_SEVERITY_RANK = {Severity.WARNING.value: 0, Severity.CRITICAL.value: 1}

Key = tuple[str, str, str]  # (device, flag, metric)
Points = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Health:
    """A flag a device should carry now, with the detector and the evidence behind it."""

    device: str
    flag: str
    metric: str
    detector: str
    severity: str
    evidence: dict[str, Any]

    @property
    def key(self) -> Key:
        return (self.device, self.flag, self.metric)


@dataclass(frozen=True)
class Carried:
    """A flag a device carries already (a row of device_health)."""

    health: Health
    since: datetime


@dataclass(frozen=True)
class Changes:
    raised: list[Health] = field(default_factory=list)  # new: insert, and an event
    kept: list[Carried] = field(default_factory=list)  # still seen: fresh evidence
    cleared: list[Carried] = field(default_factory=list)  # gone: delete, and an event


def reconcile(carried: Iterable[Carried], found: Iterable[Health]) -> Changes:
    """What changes when a device that carries `carried` is now found with `found` (both for the
    same devices and the same flags). A kept flag keeps its `since` and takes the new evidence."""
    now = {h.key: h for h in found}
    before = {c.health.key: c for c in carried}
    changes = Changes()
    for key, health in now.items():
        if key in before:
            changes.kept.append(Carried(health, before[key].since))
        else:
            changes.raised.append(health)
    changes.cleared.extend(c for key, c in before.items() if key not in now)
    return changes


# --- judging one site ---------------------------------------------------------------------


@dataclass(frozen=True)
class PeerGroup:
    """The devices of one model at one site (or one device without a site): each is judged
    against the others. `ranges` are the model's physical ranges over the defaults."""

    label: str
    devices: tuple[str, ...]
    ranges: Mapping[str, Range] = field(default_factory=lambda: DEFAULT_RANGES)
    grace: float = 0.0  # seconds without a report before a device may count as quiet


@dataclass(frozen=True)
class OutagePolicy:
    """When quiet devices are an outage rather than each one's own fault: at least
    `min_devices` of them, and at least `share` of the devices that report in the scope."""

    min_devices: int = 2
    share: float = 0.5

    def __post_init__(self) -> None:
        if self.min_devices < 1 or not 0 < self.share <= 1:
            raise ValueError("an outage needs min_devices >= 1 and 0 < share <= 1")

    def applies(self, quiet: int, reporting: int) -> bool:
        return quiet >= self.min_devices and quiet >= self.share * reporting


@dataclass(frozen=True)
class History:
    """What a device reported before the window, and silence flags it carries: silence is
    judged only for what was reported."""

    metrics: frozenset[str] = frozenset()  # metrics it reported (the latest-values table)
    last: float | None = None  # its newest report before or in the window, if known
    quiet: bool = False  # it carries `silent` or `outage`
    quiet_metrics: frozenset[str] = frozenset()  # metrics with a `faulty_sensor` for silence


@dataclass
class _Device:
    """One device's verdicts within its peer group, before outages are judged."""

    last: float | None
    quiet: bool
    quiet_after: float
    silent: Finding | None = None
    flood: Finding | None = None
    sensors: dict[str, list[Finding]] = field(default_factory=dict)


def assess_site(
    groups: Sequence[PeerGroup],
    points: Mapping[str, Mapping[str, Points]],
    *,
    now: float,
    site: str | None,
    history: Mapping[str, History] | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    outage: OutagePolicy | None = None,
) -> list[Health]:
    """The flags the devices of one site should carry, from their recent points
    (`points[device][metric]`, oldest first) and what is known from before."""
    history = history or {}
    judged: dict[str, _Device] = {}
    for group in groups:
        judged.update(_judge_group(group, points, history, now, thresholds))
    out_of_reach = _outages(groups, judged, site, outage or OutagePolicy())
    found: list[Health] = []
    for device, verdict in judged.items():
        quiet = _quiet_evidence(verdict.last, now, verdict.quiet_after)
        if device in out_of_reach:
            evidence = {**out_of_reach[device], **quiet}
            severity = Severity.CRITICAL.value
            found.append(Health(device, Flag.OUTAGE, DEVICE_WIDE, "outage", severity, evidence))
        elif verdict.silent is not None:
            evidence = {**verdict.silent.evidence, **quiet}
            severity = verdict.silent.severity.value
            found.append(Health(device, Flag.SILENT, DEVICE_WIDE, "silent", severity, evidence))
        elif not verdict.quiet:
            found += _speaking(device, verdict, points.get(device, {}), history.get(device))
    return found


def _judge_group(
    group: PeerGroup,
    points: Mapping[str, Mapping[str, Points]],
    history: Mapping[str, History],
    now: float,
    thresholds: Thresholds,
) -> dict[str, _Device]:
    """The devices of a group that report (or did), each judged against the others."""
    reporting = [
        d
        for d in group.devices
        if points.get(d) or (d in history and (history[d].metrics or history[d].quiet))
    ]
    if not reporting:
        return {}
    if group.grace > thresholds.silent_min_seconds:
        thresholds = replace(thresholds, silent_min_seconds=group.grace)
    reports = [_reports(d, points.get(d, {})) for d in reporting]
    interval = _interval(reports)
    by_device = detect_group(
        reports,
        now=now,
        expected_interval=interval,
        thresholds=thresholds,
        detectors=_REPORT_CATALOGUE,
    )
    by_metric = detect_group(
        _metric_series(reporting, points),
        now=now,
        ranges=group.ranges,
        expected_interval=interval,
        thresholds=thresholds,
        detectors=_METRIC_CATALOGUE,
    )
    judged = {}
    for series in reports:
        device = series.device
        last = _last(series, history.get(device))
        # As `silent` judges it: several usual intervals (the group's, else its own).
        own = Profile(series, now=now).interval
        wait = max(thresholds.silent_min_seconds, thresholds.silent_intervals * (own or 0.0))
        if interval is not None:
            wait = max(thresholds.silent_min_seconds, thresholds.silent_intervals * interval)
        verdict = _Device(last, last is None or now - last >= wait, wait)
        for finding in by_device[device]:
            if finding.flag == "silent":
                verdict.silent = finding
            elif finding.flag == "flood":
                verdict.flood = finding
        for finding in by_metric.get(device, ()):
            verdict.sensors.setdefault(finding.metric, []).append(finding)
        judged[device] = verdict
    return judged


def _speaking(
    device: str, verdict: _Device, points: Mapping[str, Points], history: History | None
) -> list[Health]:
    """The flags of a device that reports: a flood, and its sensors' faults."""
    found = []
    if verdict.flood is not None:
        flood = verdict.flood
        found.append(
            Health(device, Flag.FLOOD, DEVICE_WIDE, "flood", flood.severity.value, flood.evidence)
        )
    known = history or History()
    for metric, findings in sorted(verdict.sensors.items()):
        # A metric is missing only if the device sent it: lately, before, or when it went quiet.
        sent = bool(points.get(metric)) or metric in known.metrics | known.quiet_metrics
        kept = [f for f in findings if f.flag != "silent" or sent]
        if kept:
            found.append(_sensor_flag(device, metric, kept))
    return found


def _reports(device: str, metrics: Mapping[str, Points]) -> Series:
    """When the device reported, whatever it reported: one point per distinct time."""
    times = sorted({t for pts in metrics.values() for t, _ in pts})
    return Series(device, REPORTS, [(t, 0.0) for t in times])


def _interval(reports: Sequence[Series]) -> float | None:
    """The group's usual time between reports: the median of its devices' medians (a flooding
    or a silent device cannot move it); None when no device sent three reports."""
    intervals = []
    for series in reports:
        if len(series.points) >= 3:
            interval = Profile(series, now=0.0).interval
            if interval is not None and interval > 0:
                intervals.append(interval)
    return statistics.median(intervals) if intervals else None


def _metric_series(
    devices: Sequence[str], points: Mapping[str, Mapping[str, Points]]
) -> list[Series]:
    """Every device's series of every metric the group reports (empty where it sent none)."""
    metrics = sorted({m for d in devices for m in points.get(d, {})})
    return [Series(d, m, points.get(d, {}).get(m, ())) for d in devices for m in metrics]


def _last(reports: Series, history: History | None) -> float | None:
    last = reports.points[-1][0] if reports.points else None
    known = history.last if history is not None else None
    if known is None:
        return last
    return known if last is None else max(last, known)


def _by_metric(findings: Iterable[Finding]) -> dict[str, tuple[Finding, ...]]:
    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.metric, []).append(finding)
    return {metric: tuple(found) for metric, found in grouped.items()}


def _sensor_flag(device: str, metric: str, findings: Sequence[Finding]) -> Health:
    ordered = sorted(findings, key=lambda f: SENSOR_DETECTORS.index(f.flag))
    primary = ordered[0]
    evidence = dict(primary.evidence)
    if len(ordered) > 1:
        evidence["also"] = {f.flag: f.evidence for f in ordered[1:]}
    severity = max((f.severity.value for f in ordered), key=_SEVERITY_RANK.__getitem__)
    return Health(device, Flag.FAULTY_SENSOR, metric, primary.flag, severity, evidence)


def _outages(
    groups: Sequence[PeerGroup],
    judged: Mapping[str, _Device],
    site: str | None,
    policy: OutagePolicy,
) -> dict[str, dict[str, Any]]:
    """The quiet devices that went quiet with most of their site, or of their peer group."""
    if site is None:
        return {}  # devices without a site have no neighbours to share an outage with
    quiet = sorted(d for d, v in judged.items() if v.quiet)
    if policy.applies(len(quiet), len(judged)):
        scope = {"scope": "site", "site": site, "quiet": len(quiet), "reporting": len(judged)}
        return {device: scope for device in quiet}
    found: dict[str, dict[str, Any]] = {}
    for group in groups:
        members = [d for d in group.devices if d in judged]
        group_quiet = [d for d in members if judged[d].quiet]
        if policy.applies(len(group_quiet), len(members)):
            scope = {
                "scope": "peer_group",
                "site": site,
                "model": group.label,
                "quiet": len(group_quiet),
                "reporting": len(members),
            }
            found.update({device: scope for device in group_quiet})
    return found


def _quiet_evidence(last: float | None, now: float, quiet_after: float) -> dict[str, Any]:
    return {
        "last_point": last,
        "silent_seconds": None if last is None else float(f"{now - last:.6g}"),
        "quiet_after": float(f"{quiet_after:.6g}"),
    }


def detectors_of(flag: str) -> tuple[Detector, ...]:
    """The detectors whose findings become `flag` (for the docs and the CLI)."""
    if flag == Flag.FAULTY_SENSOR:
        return _METRIC_CATALOGUE
    return tuple(d for d in DETECTORS if d.flag == flag)
