"""Device API scenarios: check-in throughput beside a bare endpoint, and long-poll memory.

The load comes from a separate process speaking HTTP/1.1 by hand over raw asyncio sockets
(bench/loadgen.py), so the generator costs far less per request than the server and none of
its work runs inside the server process. Setup takes shortcuts that are not measured: devices
are written straight into the database and access tokens are minted with the server's own
key, exactly as `/device/v1/auth/token` would.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
import psutil
import uvloop  # ships with uvicorn[standard]

from bench.databases import fresh_database
from bench.harness import Result, Stats, server, server_pid
from bench.loadgen import SPAWN, checkin_request, drive
from bench.population import device_tokens, populate

PING = b"GET /device/v1/ping HTTP/1.1\r\nHost: bench\r\n\r\n"


# --- the long-poll holder (runs in its own process) -----------------------------------------


class _Held(asyncio.Protocol):
    """One long-poll: sends its request once and notes when (and whether) an answer comes."""

    def __init__(self, request: bytes, answers: dict[int, tuple[float, int]], index: int):
        self.request, self.answers, self.index = request, answers, index

    def connection_made(self, transport: Any) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.index not in self.answers:
            self.answers[self.index] = (time.monotonic(), int(data[9:12] or b"0"))


def hold(port: int, requests: list[bytes], pipe: Any) -> None:
    """Open one long-poll per request; report; close them all when the parent says so."""
    raise_open_files(len(requests) + 100)
    uvloop.run(_hold(port, requests, pipe))


async def _hold(port: int, requests: list[bytes], pipe: Any) -> None:
    loop = asyncio.get_running_loop()
    answers: dict[int, tuple[float, int]] = {}
    gate = asyncio.Semaphore(200)  # stay well inside the server's listen backlog

    async def open_one(i: int) -> Any:
        async with gate:
            for attempt in range(5):
                try:
                    transport, _ = await loop.create_connection(
                        lambda: _Held(requests[i], answers, i), "127.0.0.1", port
                    )
                    return transport
                except OSError:
                    await asyncio.sleep(0.5 * (attempt + 1))
            return None

    started = time.monotonic()
    transports = await asyncio.gather(*(open_one(i) for i in range(len(requests))))
    opened = sum(t is not None for t in transports)
    pipe.send({"opened": opened, "open_s": time.monotonic() - started})
    await loop.run_in_executor(None, pipe.recv)  # the parent measured; release
    pipe.send({"answers": dict(answers)})
    for t in transports:
        if t is not None:
            t.close()
    await asyncio.sleep(0.5)


# --- scenarios --------------------------------------------------------------------------------


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"need {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _summary(rounds: list[dict[str, Any]], what: str) -> dict[str, Any]:
    def med(f: Callable[[dict[str, Any]], float]) -> float:
        return round(statistics.median(f(r) for r in rounds), 4)

    statuses = sum((Counter(r["statuses"]) for r in rounds), Counter[str]())
    return {
        f"{what}_per_s": med(lambda r: r["requests"] / r["seconds"]),
        f"{what}_per_s_all": [round(r["requests"] / r["seconds"]) for r in rounds],
        f"{what}_statuses": dict(statuses),
        f"{what}_server_cpu_s_per_1000": med(lambda r: 1000 * r["server_cpu_s"] / r["requests"]),
        f"{what}_server_cpu_share": med(lambda r: r["server_cpu_s"] / r["seconds"]),
        f"{what}_client_cpu_share": med(lambda r: r["client_cpu_s"] / r["seconds"]),
        f"{what}_machine_busy_cores": med(lambda r: r["machine_busy_s"] / r["seconds"]),
        f"{what}_latency_p50_ms": med(lambda r: 1000 * r["latency_p50_s"]),
        f"{what}_latency_p99_ms": med(lambda r: 1000 * r["latency_p99_s"]),
    }


def checkin(
    kind: str, size: int, pg_url: str, *, rounds: int, seconds: float, connections: int = 64
) -> list[Result]:
    """Check-ins per second against pings per second of the same server, rounds interleaved."""
    with fresh_database(kind, pg_url) as url:
        populate(url, size)
        with server(url) as client, ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
            port = client.base_url.port
            assert port is not None
            pid = server_pid(port)
            checkins = [checkin_request(t) for t in device_tokens(url)]

            def run(requests: list[bytes], warmup: float) -> dict[str, Any]:
                return pool.submit(
                    drive, port, requests, connections, warmup, seconds, pid
                ).result()

            run([PING], 1.0)  # warm both paths up (imports, pools, rate-limit buckets)
            run(checkins, 1.0)
            bare, ours = [], []
            for _ in range(rounds):  # interleaved, so noise on the machine hits both alike
                bare.append(run([PING], 0.5))
                ours.append(run(checkins, 0.5))
    return [
        Result(
            scenario="checkin",
            metric=f"POST /device/v1/checkin {{}}, {connections} keep-alive connections, "
            "seconds per check-in (1/rate)",
            fleet_size=size,
            database=kind,
            ours=Stats([r["seconds"] / r["requests"] for r in ours]).summary(),
            limit_name="GET /device/v1/ping, same server (no auth, no database)",
            limit=Stats([r["seconds"] / r["requests"] for r in bare]).summary(),
            goal="check-in rate >= 40 % of the bare rate (ratio <= 2.5x)",
            notes=f"{seconds:g} s per round; load generator in another process on the same 2 cores",
            extra=_summary(ours, "checkin") | _summary(bare, "ping") | {"connections": connections},
        )
    ]


def longpoll(kind: str, size: int, pg_url: str, *, settle: float = 5.0) -> list[Result]:
    """Every device in a long-poll at once; the server's memory then against idle."""
    raise_open_files(size + 1000)  # the server inherits this limit from us
    with fresh_database(kind, pg_url) as url:
        populate(url, size)
        with server(url) as client:
            port = client.base_url.port
            assert port is not None
            proc = psutil.Process(server_pid(port))
            tokens = device_tokens(url)
            for token in tokens[:50]:  # every code path once before "idle" is measured
                auth = {"Authorization": f"Bearer {token}"}
                client.post("/device/v1/checkin", json={}, headers=auth).raise_for_status()
            time.sleep(2)
            idle, idle_fds = _sample(proc, 2.5), proc.num_fds()
            requests = [checkin_request(t, b'{"wait": 60}') for t in tokens]
            parent, child = SPAWN.Pipe()
            loader = SPAWN.Process(target=hold, args=(port, requests, child))
            began = time.monotonic()  # everything below must end before the 60 s wait does
            loader.start()
            opened = parent.recv()
            left = began + 30 - time.monotonic()
            accepted = _wait_accepted(proc, idle_fds + opened["opened"], timeout=left)
            accepted_s = round(time.monotonic() - began, 1) if accepted else None
            time.sleep(max(0.0, min(settle, began + 43 - time.monotonic())))
            held = _sample(proc, max(1.5, min(5.0, began + 48 - time.monotonic())))
            held_until = time.monotonic()
            probe = _send_command(client, tokens[0])
            time.sleep(2)
            released = time.monotonic() - began
            parent.send("release")
            answers: dict[int, tuple[float, int]] = parent.recv()["answers"]
            loader.join(30)
            _stop_now(proc)  # abandoned long-polls would hold a graceful stop up to 60 s
    # Device 0 was sent a command: its answer is early only when it came before the command
    # or failed (a command the server took late may still have reached it).
    probe_answer = answers.pop(0, None)
    if probe_answer and (probe_answer[1] != 200 or (probe and probe_answer[0] < probe)):
        answers[0] = probe_answer
    latency = probe_answer[0] - probe if probe and probe_answer and 0 not in answers else None
    rss_idle, rss_held = [r for _, r, _ in idle], [r for _, r, _ in held]
    per_conn = (statistics.median(rss_held) - statistics.median(rss_idle)) / size
    return [
        Result(
            scenario="longpoll",
            metric="resident memory (MB) with every device in a 60 s long-poll at once",
            fleet_size=size,
            database=kind,
            ours=Stats(rss_held).summary(),
            limit_name="RSS of the idle server, MB",
            limit=Stats(rss_idle).summary(),
            goal="< 1 GB resident for 10,000 held long-polls",
            notes="one server process; connections from one other process over loopback",
            extra={
                "unit": "MB",
                "opened": opened["opened"],
                "open_s": round(opened["open_s"], 2),
                "all_accepted_s_after_opening_began": accepted_s,
                "released_after_s": round(released, 1),
                "early_answers": len(answers),
                "answered_before_measured": sum(t < held_until for t, _ in answers.values()),
                "early_statuses": dict(Counter(str(s) for _, s in answers.values())),
                "kb_per_connection": round(per_conn * 1024, 1),
                "mb_per_1000_connections": round(per_conn * 1000, 1),
                "server_cpu_share_idle": _cpu_share(idle),
                "server_cpu_share_while_holding": _cpu_share(held),
                "command_taken_within_5_s": probe is not None,
                "command_to_held_device_s": latency and round(latency, 3),
            },
        )
    ]


def _sample(proc: psutil.Process, seconds: float) -> list[tuple[float, float, float]]:
    """(time, resident MB, CPU seconds) of the server twice a second for `seconds`."""
    out = []
    for _ in range(max(2, round(seconds * 2))):
        cpu = proc.cpu_times()
        out.append((time.monotonic(), proc.memory_info().rss / 2**20, cpu.user + cpu.system))
        time.sleep(0.5)
    return out


def _cpu_share(samples: list[tuple[float, float, float]]) -> float | None:
    """CPU seconds per second between the first and the last sample."""
    if len(samples) < 2:
        return None
    (t0, _, c0), (t1, _, c1) = samples[0], samples[-1]
    return round((c1 - c0) / (t1 - t0), 3)


def _wait_accepted(proc: psutil.Process, fds: int, timeout: float) -> bool:
    """Whether the server came to hold `fds` open files (idle ones + one per connection)."""
    deadline = time.monotonic() + timeout
    while proc.num_fds() < fds:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _send_command(client: Any, token: str) -> float | None:
    """A ping command for the first held device: when it was sent (None: not taken in 5 s)."""
    device_id = token.split(".")[1]
    sent = time.monotonic()
    try:
        r = client.post(
            f"/api/v1/devices/{device_id}/commands",
            json={"name": "ping", "args": {}, "timeout": 60},
            timeout=5,
        )
    except httpx.TimeoutException:
        return None
    return sent if r.status_code == 201 else None


def _stop_now(proc: psutil.Process) -> None:
    # uvicorn stops at once on SIGINT after SIGTERM, instead of waiting for running requests.
    for sig in (signal.SIGTERM, signal.SIGINT):
        if proc.is_running():
            proc.send_signal(sig)
            time.sleep(0.3)
    proc.wait(15)
