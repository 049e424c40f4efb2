"""Measurements of the machine, as telemetry points: a catalogue of metrics, each a function.

A metric whose sensor the machine lacks (no battery, no temperature sensor) yields None and is
left out; one that fails is logged once and left out, the others still go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil  # no stubs installed

from fleetkeeper.protocol.messages import Point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricDescription:
    name: str
    value_fn: Callable[[], float | None]
    unit: str = ""


def _battery() -> float | None:
    sensors = getattr(psutil, "sensors_battery", None)
    battery = sensors() if sensors else None
    return float(battery.percent) if battery is not None else None


def _temperature() -> float | None:
    sensors = getattr(psutil, "sensors_temperatures", None)
    readings = sensors() if sensors else {}
    # The hottest sensor is the one that matters for a device's health.
    values = [t.current for group in readings.values() for t in group if t.current is not None]
    return float(max(values)) if values else None


def _net(field: str) -> Callable[[], float | None]:
    def read() -> float | None:
        counters = psutil.net_io_counters(pernic=True)
        nics = [c for name, c in counters.items() if name != "lo"]
        return float(sum(getattr(c, field) for c in nics)) if nics else None

    return read


def _storage(path: str = "/") -> Callable[[], float | None]:
    return lambda: float(psutil.disk_usage(path).percent)


METRICS: tuple[MetricDescription, ...] = (
    MetricDescription("battery", _battery, "%"),
    MetricDescription("cpu", lambda: float(psutil.cpu_percent(interval=None)), "%"),
    MetricDescription("memory", lambda: float(psutil.virtual_memory().percent), "%"),
    MetricDescription("storage_used", _storage("/"), "%"),
    MetricDescription("temperature", _temperature, "°C"),
    MetricDescription("net_rx_bytes", _net("bytes_recv"), "bytes"),
    MetricDescription("net_tx_bytes", _net("bytes_sent"), "bytes"),
    # Seconds since boot: how the server's health watch notices reboots after an update.
    MetricDescription("uptime", lambda: max(0.0, time.time() - psutil.boot_time()), "s"),
)


class MetricsCollector:
    def __init__(
        self, metrics: Sequence[MetricDescription] = METRICS, clock: Callable[[], float] = time.time
    ) -> None:
        self.metrics = tuple(metrics)
        self._clock = clock
        self._failing: set[str] = set()
        # psutil measures CPU use between two calls: the first call only starts the interval.
        if any(m.name == "cpu" for m in self.metrics) and metrics is METRICS:
            psutil.cpu_percent(interval=None)

    def collect(self) -> list[Point]:
        ts = self._clock()
        points = []
        for metric in self.metrics:
            try:
                value = metric.value_fn()
            except Exception as exc:  # a sensor's failure must not stop the others
                if metric.name not in self._failing:
                    log.warning("metric %s cannot be read: %s", metric.name, exc)
                    self._failing.add(metric.name)
                continue
            self._failing.discard(metric.name)
            if value is not None:
                points.append(Point(metric.name, value, ts))
        return points
