"""The device-API load generator: HTTP/1.1 by hand over raw asyncio sockets, in its own process.

It runs in a separate, freshly spawned interpreter (uvloop when installed), so it costs far less
per request than the server and none of its work runs inside the server process. Each
keep-alive connection sends a request, reads the answer and sends the next; a `Load` hands the
requests out and counts the answers that come inside its measured window. The check-in and the
telemetry scenarios share all of it; what an answer means is up to the scenario's `Load`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil
import uvloop  # ships with uvicorn[standard]

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of ours inside
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
# PostgreSQL's shared processes that write for every database (none on SQLite).
_PG_WRITERS = ("checkpointer", "background writer", "walwriter")


# --- messages -------------------------------------------------------------------------------


def device_post(path: str, token: str, body: bytes) -> bytes:
    """A POST to the device API with a device's access token, as an agent sends it."""
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def checkin_request(token: str, body: bytes = b"{}") -> bytes:
    return device_post("/device/v1/checkin", token, body)


def next_message(buffer: bytes) -> tuple[bytes, bytes, int] | None:
    """The first whole HTTP/1.1 message in `buffer`: (head, body, where it ends); None while
    it is still incomplete. Bodies are framed by Content-Length (no chunked encoding)."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    length = _LENGTH.search(buffer, 0, head_end)
    end = head_end + 4 + (int(length.group(1)) if length else 0)
    if len(buffer) < end:
        return None
    return buffer[:head_end], buffer[head_end + 4 : end], end


# --- one connection and the load it carries -------------------------------------------------


class KeepAlive(asyncio.Protocol):
    """One keep-alive connection: send a request, read the answer, send the next one.

    `next_request` gives the request to send (None closes the connection); `answered` receives
    each answer's status, body and latency in seconds.
    """

    def __init__(
        self,
        next_request: Callable[[], bytes | None],
        answered: Callable[[int, bytes, float], object],
    ) -> None:
        self.next_request, self.answered = next_request, answered
        self.buffer = b""
        self.sent = 0.0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        request = self.next_request()
        if request is None:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := next_message(self.buffer)) is not None:
            head, body, end = message
            self.answered(int(head[9:12]), body, time.perf_counter() - self.sent)
            self.buffer = self.buffer[end:]
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Load:
    """Requests handed out until the window closes, round-robin or (`once`) each at most once;
    answers counted only inside the measured window, which opens after `warmup` seconds."""

    def __init__(
        self, requests: list[bytes], warmup: float, seconds: float, *, once: bool = False
    ) -> None:
        self.requests, self.once = requests, once
        self.handed = 0
        self.ran_out = False  # `once` only: every request was handed out before the window closed
        now = time.perf_counter()
        self.start, self.stop = now + warmup, now + warmup + seconds
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []

    def next_request(self) -> bytes | None:
        if time.perf_counter() >= self.stop:
            return None
        if not self.once:
            self.handed += 1
            return self.requests[self.handed % len(self.requests)]
        if self.handed >= len(self.requests):
            self.ran_out = True
            return None
        self.handed += 1
        return self.requests[self.handed - 1]

    def answered(self, status: int, body: bytes, latency: float) -> bool:
        """Count an answer if it came inside the window; whether it did."""
        if self.start <= time.perf_counter() < self.stop:
            self.statuses[status] += 1
            self.latencies.append(latency)
            return True
        return False


async def _connect(port: int, load: Load, connections: int) -> list[KeepAlive]:
    loop = asyncio.get_running_loop()
    opened = [
        await loop.create_connection(
            lambda: KeepAlive(load.next_request, load.answered), "127.0.0.1", port
        )
        for _ in range(connections)
    ]
    return [protocol for _, protocol in opened]


# --- runs (each the whole life of the load process's event loop) ----------------------------


def drive(
    port: int, requests: list[bytes], connections: int, warmup: float, seconds: float, pid: int
) -> dict[str, Any]:
    """Keep `connections` connections busy for warmup + seconds, handing `requests` out
    round-robin; report the measured part."""
    return uvloop.run(keep_busy(port, Load(requests, warmup, seconds), connections, pid))


def send_all(port: int, requests: list[bytes], connections: int) -> dict[str, int]:
    """Every request once over `connections` keep-alive connections; the answers' statuses."""

    async def run() -> dict[str, int]:
        load = Load(requests, 0.0, 3600.0, once=True)
        await asyncio.gather(*(c.done for c in await _connect(port, load, connections)))
        return {str(k): v for k, v in sorted(load.statuses.items())}

    return uvloop.run(run())


async def keep_busy(
    port: int, load: Load, connections: int, pid: int, database: str | None = None
) -> dict[str, Any]:
    """Run `load` to its end; counts, CPU and latencies of its measured window. With a
    PostgreSQL `database` name, the CPU its backends and shared writers spent as well."""
    opened = await _connect(port, load, connections)
    await asyncio.sleep(max(0.0, load.start - time.perf_counter()))
    before = cpu_snapshot(pid, database)
    await asyncio.sleep(max(0.0, load.stop - time.perf_counter()))
    after = cpu_snapshot(pid, database)
    await asyncio.gather(*(c.done for c in opened))
    latencies = sorted(load.latencies) or [0.0]
    out: dict[str, Any] = {
        "requests": sum(load.statuses.values()),
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "seconds": after["wall"] - before["wall"],
        "server_cpu_s": after["server"] - before["server"],
        "client_cpu_s": after["client"] - before["client"],
        "machine_busy_s": after["busy"] - before["busy"],
        "latency_p50_s": latencies[len(latencies) // 2],
        "latency_p99_s": latencies[int(len(latencies) * 0.99)],
    }
    if database is not None:
        out["database_cpu_s"] = sum(
            c - before["database"].get(p, 0.0) for p, c in after["database"].items()
        )
    return out


def cpu_snapshot(pid: int, database: str | None = None) -> dict[str, Any]:
    """CPU seconds so far: the server, us, the machine; with a `database` name also
    PostgreSQL's backends for it and its shared writers, by process id."""
    server, machine = psutil.Process(pid).cpu_times(), psutil.cpu_times()
    backends = _postgres_cpu(database) if database is not None else None
    out: dict[str, Any] = {
        "wall": time.perf_counter(),
        "server": server.user + server.system,
        "client": time.process_time(),
        "busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
    }
    if backends is not None:
        out["database"] = backends
    return out


def _postgres_cpu(database: str) -> dict[int, float]:
    backends = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or ())
        if proc.info["name"] == "postgres" and (
            f" {database} " in title or title.endswith(_PG_WRITERS)
        ):
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            backends[proc.pid] = t.user + t.system
    return backends
