"""The telemetry bench's pure parts: the batches it sends, the answers and metrics it reads,
and the load generator's framing and hand-out that it shares with the check-in bench."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bench.loadgen import KeepAlive, Load, checkin_request, next_message
from bench.telemetry import (
    BATCH,
    METRICS,
    TIMES,
    Window,
    accepted_of,
    batches,
    body,
    histogram_sum,
    sqlite_time,
    telemetry_request,
)

from fleetkeeper.services.telemetry import validate
from fleetkeeper.store.timeseries import sqlite_time as store_sqlite_time

NOW = 1_790_000_000.0


def _keys(window: Window, devices: int) -> list[tuple[int, str, float]]:
    return [(d, m, t) for d, points in batches(window, devices) for m, _, t in points]


def test_a_batch_is_one_devices_ten_metrics_at_ten_times() -> None:
    device, points = next(batches(Window(0, 1, NOW - 60, NOW), devices=5))
    assert device == 0
    assert len(points) == BATCH == len(METRICS) * TIMES
    assert {m for m, _, _ in points} == {m for m, *_ in METRICS}
    assert len({t for _, _, t in points}) == TIMES


def test_devices_are_taken_round_robin_from_the_windows_first_batch() -> None:
    devices = [d for d, _ in batches(Window(3, 7, NOW - 60, NOW), devices=4)]
    assert devices == [3, 0, 1, 2, 3, 0, 1]


def test_no_point_repeats_within_a_window_even_when_devices_send_several_batches() -> None:
    keys = _keys(Window(0, 50, NOW - 10, NOW), devices=7)
    assert len(keys) == 50 * BATCH
    assert len(set(keys)) == len(keys)


def test_back_to_back_windows_never_share_a_point() -> None:
    first = _keys(Window(0, 30, NOW - 20, NOW - 10), devices=4)
    second = _keys(Window(30, 30, NOW - 10, NOW), devices=4)
    assert not set(first) & set(second)


def test_timestamps_stay_inside_their_window() -> None:
    times = [t for _, _, t in _keys(Window(0, 40, NOW - 30, NOW), devices=3)]
    assert min(times) >= NOW - 30 and max(times) < NOW


def test_values_vary() -> None:
    _, points = next(batches(Window(0, 1, NOW - 60, NOW), devices=1))
    temperatures = [v for m, v, _ in points if m == "temperature"]
    assert len(set(temperatures)) == TIMES


def test_the_server_accepts_every_point_of_a_body() -> None:
    _, points = next(batches(Window(0, 1, NOW - 60, NOW), devices=1))
    sent = json.loads(body(points))["points"]
    rows, rejected = validate(sent, datetime.fromtimestamp(NOW, UTC))
    assert rejected == []
    assert len(rows) == BATCH


def test_a_request_announces_its_body_length() -> None:
    payload = b'{"points":[]}'
    request = telemetry_request("tok", payload)
    head, _, rest = request.partition(b"\r\n\r\n")
    assert rest == payload
    assert b"Content-Length: 13" in head.split(b"\r\n")
    assert b"Authorization: Bearer tok" in head.split(b"\r\n")


def test_accepted_is_read_from_the_answer() -> None:
    assert accepted_of(b'{"accepted":100,"rejected":[]}') == 100
    assert accepted_of(b'{"accepted": 7, "rejected": [{"index": 1}]}') == 7
    assert accepted_of(b'{"type":"about:blank","status":429}') == 0


def test_the_request_seconds_of_one_route_come_from_prometheus_text() -> None:
    text = "\n".join(
        [
            "# TYPE fleetkeeper_http_request_seconds histogram",
            'fleetkeeper_http_request_seconds_sum{method="GET",route="/metrics"} 9.0',
            'fleetkeeper_http_request_seconds_sum{method="GET",route="/a/{id}"} 0.25',
            'fleetkeeper_http_request_seconds_sum{method="POST",route="/a/{id}"} 4.0',
        ]
    )
    assert histogram_sum(text, "/a/{id}") == 0.25
    assert histogram_sum(text, "/a/{id}", method="POST") == 4.0
    assert histogram_sum(text, "/missing") == 0.0


def test_sqlite_times_are_written_as_the_server_writes_them() -> None:
    at = 1_790_000_000.123456
    assert sqlite_time(at) == store_sqlite_time(datetime.fromtimestamp(at, UTC))


def test_a_checkin_request_is_a_device_post_with_an_empty_object() -> None:
    head, _, rest = checkin_request("tok").partition(b"\r\n\r\n")
    assert head.startswith(b"POST /device/v1/checkin HTTP/1.1\r\n")
    assert rest == b"{}"
    assert b"Content-Length: 2" in head.split(b"\r\n")


def test_an_answer_is_whole_only_once_its_body_is_in() -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    assert next_message(answer[:20]) is None
    assert next_message(answer[:-1]) is None
    assert next_message(answer + b"HTTP/1.1") == (answer[:-9], b"hello", len(answer))


def test_an_answer_without_content_length_ends_at_the_blank_line() -> None:
    assert next_message(b"HTTP/1.1 204 No Content\r\n\r\nrest") == (
        b"HTTP/1.1 204 No Content",
        b"",
        27,
    )


def test_a_load_hands_each_request_out_once_when_asked_to() -> None:
    load = Load([b"a", b"b"], warmup=0.0, seconds=3600.0, once=True)
    assert [load.next_request() for _ in range(3)] == [b"a", b"b", None]
    assert load.ran_out and load.handed == 2


def test_a_round_robin_load_goes_on_handing_out() -> None:
    load = Load([b"a", b"b"], warmup=0.0, seconds=3600.0)
    assert [load.next_request() for _ in range(5)] == [b"b", b"a", b"b", b"a", b"b"]
    assert not load.ran_out


def test_answers_before_the_window_opens_are_not_counted() -> None:
    load = Load([b"a"], warmup=3600.0, seconds=1.0)
    assert load.answered(200, b"", 0.01) is False
    assert not load.statuses and not load.latencies


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


async def test_a_keep_alive_connection_sends_the_next_request_after_each_answer() -> None:
    requests = iter([b"first", b"second", None])
    answers: list[tuple[int, bytes]] = []
    connection = KeepAlive(lambda: next(requests), lambda s, b, _: answers.append((s, b)))
    transport: Any = _Transport()
    connection.connection_made(transport)
    assert transport.written == [b"first"]
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    connection.data_received(answer[:10])  # an answer may come in pieces
    assert answers == []
    connection.data_received(answer[10:] + answer.replace(b"200 OK", b"429 Too"))
    assert answers == [(200, b"{}"), (429, b"{}")]
    assert transport.written == [b"first", b"second"]
    assert transport.closed
