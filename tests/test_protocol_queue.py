"""The telemetry queue: on disk, oldest first, bounded, and it survives a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetkeeper.protocol import Point, TelemetryQueue


def points(*values: float, metric: str = "cpu") -> list[Point]:
    return [Point(metric, v, 1_800_000_000.0 + v) for v in values]


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[TelemetryQueue]:
    with TelemetryQueue(tmp_path / "telemetry.sqlite3", max_points=5) as q:
        yield q


def test_points_leave_oldest_first(queue: TelemetryQueue) -> None:
    queue.push(points(1, 2))
    queue.push(points(3))
    assert [p.value for p in queue.peek(10)] == [1, 2, 3]
    assert len(queue) == 3


def test_peek_does_not_remove_and_ack_does(queue: TelemetryQueue) -> None:
    queue.push(points(1, 2, 3))
    assert [p.value for p in queue.peek(2)] == [1, 2]
    assert len(queue) == 3
    queue.ack(2)
    assert [p.value for p in queue.peek(10)] == [3]


def test_points_keep_metric_value_and_time(queue: TelemetryQueue) -> None:
    queue.push([Point("battery", 87.5, 1_795_773_600.5)])
    assert queue.peek(1) == [Point("battery", 87.5, 1_795_773_600.5)]


def test_beyond_the_bound_the_oldest_are_dropped_and_counted(queue: TelemetryQueue) -> None:
    assert queue.push(points(1, 2, 3, 4)) == 0
    assert queue.push(points(5, 6, 7)) == 2
    assert [p.value for p in queue.peek(10)] == [3, 4, 5, 6, 7]
    assert queue.dropped == 2


def test_points_pushed_while_sending_survive_the_ack(queue: TelemetryQueue) -> None:
    queue.push(points(1, 2))
    sent = queue.peek(10)
    queue.push(points(3))
    queue.ack(len(sent))
    assert [p.value for p in queue.peek(10)] == [3]


def test_ack_after_points_were_dropped_meanwhile_removes_only_what_was_sent(
    queue: TelemetryQueue,
) -> None:
    queue.push(points(1, 2, 3))
    sent = queue.peek(3)
    queue.push(points(4, 5, 6, 7))  # drops 1 and 2 for room
    queue.ack(len(sent))
    assert [p.value for p in queue.peek(10)] == [4, 5, 6, 7]


def test_ack_without_peek_removes_the_oldest(queue: TelemetryQueue) -> None:
    queue.push(points(1, 2, 3))
    queue.ack(2)
    assert [p.value for p in queue.peek(10)] == [3]


def test_the_queue_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.sqlite3"
    with TelemetryQueue(path, max_points=3) as q:
        q.push(points(1, 2, 3, 4))
    with TelemetryQueue(path, max_points=3) as q:
        assert [p.value for p in q.peek(10)] == [2, 3, 4]
        assert q.dropped == 1


def test_a_damaged_file_is_moved_aside_and_a_new_queue_starts(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with TelemetryQueue(path) as q:
        q.push(points(1))
        assert len(q) == 1
    assert any(p.name.startswith("telemetry.sqlite3.corrupt-") for p in tmp_path.iterdir())


def test_a_queue_holds_at_least_one_point(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TelemetryQueue(tmp_path / "q.sqlite3", max_points=0)
