"""`fleetkeeper telemetry ...` against the real app, in-process (see test_cli.py)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from fleetkeeper.cli.telemetry import render, sparkline
from test_cli import new_device, ok, run, servers, thermo  # noqa: F401 - fixtures used below


@pytest.mark.usefixtures("thermo")
def test_a_device_without_points_says_so() -> None:
    device = new_device("SN-1")
    assert ok("telemetry", device["id"], "--metric", "battery", "--from", "-1d") == []
    shown = run("telemetry", device["id"], "--metric", "battery")
    assert shown.exit_code == 0 and "No battery points" in shown.stdout
    assert run("telemetry", device["id"], "--metric", "battery", "--from", "soon").exit_code == 1


def test_a_sparkline_spans_low_to_high_and_fits_its_width() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert len(sparkline([float(i % 7) for i in range(1000)], width=40)) == 40
    assert sparkline([]) == ""


def test_buckets_show_min_max_and_count() -> None:
    points: list[dict[str, Any]] = [
        {"t": "2026-01-01T00:00:00Z", "v": 15.0, "min": 10.0, "max": 20.0, "avg": 15.0, "count": 2},
        {"t": "2026-01-01T01:00:00Z", "v": 50.0, "min": 50.0, "max": 50.0, "avg": 50.0, "count": 1},
    ]
    console = Console(width=120, record=True)
    console.print(render(points, "battery"))
    text = console.export_text()
    assert "2 buckets, min 15, max 50, last 50" in text
    assert "Count" in text
