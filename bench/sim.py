"""Simulator capacity: memory of a 10,000-device `fleetkeeper simulate` and its schedule.

The simulator runs as it ships (`python -m fleetkeeper simulate ... --json`, a subprocess)
against a stand-in server that answers every device-API call at once with valid minimal
JSON, so whatever falls behind is the simulator, not the server. The stand-in speaks
HTTP/1.1 by hand over raw asyncio sockets (uvloop) in a process of its own. The simulator's
resident memory is sampled with psutil; the baseline is the same simulator with one device.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop  # ships with uvicorn[standard]

from bench.harness import Result, Stats, free_port
from bench.loadgen import next_message

_SPAWN = multiprocessing.get_context("spawn")
CHECKIN_INTERVAL, TELEMETRY_INTERVAL = 30.0, 10.0
ENROLL_RATE = 250.0  # enrolments started per second (the simulator's default is 50)
PROVISIONING_TOKEN = "fkp_bench-stand-in-token"


# --- the stand-in server (runs in its own process) ------------------------------------------

_CHALLENGE = base64.b64encode(b"bench-challenge-32-bytes-long!!!").decode()
_CERT = "-----BEGIN CERTIFICATE-----\nYmVuY2g=\n-----END CERTIFICATE-----\n"


def _answer(path: bytes, body: bytes, ids: itertools.count[int]) -> tuple[int, Any]:
    if path.endswith(b"/device/v1/ping"):
        return 200, {"status": "ok"}
    if path.endswith(b"/device/v1/enroll"):
        device_id = f"dev-{next(ids)}"
        return 201, {
            "device_id": device_id,
            "state": "active",
            "certificate": _CERT,
            "ca_certificate": _CERT,
        }
    if path.endswith(b"/device/v1/auth/challenge"):
        return 200, {"challenge": _CHALLENGE}
    if path.endswith(b"/device/v1/auth/token"):
        return 200, {"access_token": "bench-token", "token_type": "bearer", "expires_in": 3600}
    if path.endswith(b"/device/v1/checkin"):
        return 200, {"state": "active", "commands": [], "next_checkin": CHECKIN_INTERVAL}
    if path.endswith(b"/device/v1/inventory"):
        sent = json.loads(body or b"{}")
        return 200, {
            "device_id": "dev-0",
            "serial": "bench",
            "state": "active",
            "firmware_version": sent.get("firmware_version"),
            "attributes": sent.get("attributes") or {},
            "location": sent.get("location"),
        }
    if path.endswith(b"/device/v1/telemetry"):
        return 200, {"accepted": len(json.loads(body or b"{}").get("points") or []), "rejected": []}
    if b"/device/v1/commands/" in path:
        return 200, {}
    return 404, {"title": "Not Found", "status": 404}


class _StandIn(asyncio.Protocol):
    """One keep-alive connection of the stand-in: answer each request as soon as it is in."""

    ids = itertools.count()

    def connection_made(self, transport: Any) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := next_message(self.buffer)) is not None:
            head, body, end = message
            path = head.split(b" ", 2)[1].split(b"?", 1)[0]
            status, payload = _answer(path, body, self.ids)
            self.buffer = self.buffer[end:]
            out = json.dumps(payload).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (status, b"OK" if status < 300 else b"Not Found", len(out))
                + out
            )


def stand_in(port: int) -> None:
    """Serve the stand-in on 127.0.0.1:`port` until killed."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(_StandIn, "127.0.0.1", port, backlog=1024)
        await srv.serve_forever()

    uvloop.run(main())


def _wait_listening(port: int, proc: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError("the stand-in server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the stand-in server did not listen in 30 s")


# --- the simulator --------------------------------------------------------------------------


def _simulate(
    url: str, devices: int, duration: float, scenario: Path
) -> tuple[dict[str, Any], list[tuple[float, float]], float]:
    """Run `fleetkeeper simulate`; (its JSON summary, (seconds, RSS MB) samples, CPU s)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetkeeper",
            "simulate",
            "--server",
            url,
            "--scenario",
            str(scenario),
            "--devices",
            str(devices),
            "--provisioning-token",
            PROVISIONING_TOKEN,
            "--checkin-interval",
            str(CHECKIN_INTERVAL),
            "--telemetry-interval",
            str(TELEMETRY_INTERVAL),
            "--duration",
            str(duration),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watched = psutil.Process(proc.pid)
    began, samples, cpu = time.monotonic(), [], 0.0
    while proc.poll() is None:
        try:
            samples.append((time.monotonic() - began, watched.memory_info().rss / 2**20))
            times = watched.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.25)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"simulate exited {proc.returncode}: {err.decode()[-2000:]}")
    return json.loads(out), samples, cpu


def simulator(size: int, *, duration: float, baseline_duration: float = 15.0) -> list[Result]:
    """RSS of the simulator running `size` devices against the RSS running one device."""
    workdir = Path(tempfile.mkdtemp(prefix="fk-bench-sim-"))
    scenario = workdir / "scenario.json"
    scenario.write_text(json.dumps({"name": "bench", "enroll_rate": ENROLL_RATE}))
    port = free_port()
    server = _SPAWN.Process(target=stand_in, args=(port,), daemon=True)
    server.start()
    try:
        _wait_listening(port, server)
        url = f"http://127.0.0.1:{port}"
        base_summary, base_samples, _ = _simulate(url, 1, baseline_duration, scenario)
        summary, samples, cpu = _simulate(url, size, duration, scenario)
    finally:
        server.kill()
        server.join(10)
    enrolled_by = size / ENROLL_RATE
    steady = [rss for t, rss in samples if t >= enrolled_by + 5] or [rss for _, rss in samples]
    base = [rss for t, rss in base_samples if t >= 5] or [rss for _, rss in base_samples]
    peak, base_peak = max(rss for _, rss in samples), max(base)
    per_device_kb = (peak - statistics.median(base)) * 1024 / size
    schedule = summary["schedule"]
    seconds = summary["seconds"]
    return [
        Result(
            scenario="simulator",
            metric=f"resident memory (MB) of `fleetkeeper simulate` once all devices are in "
            f"(check-in {CHECKIN_INTERVAL:g} s, telemetry {TELEMETRY_INTERVAL:g} s, "
            f"{duration:g} s run)",
            fleet_size=size,
            database="stand-in",
            ours=Stats(steady).summary(),
            limit_name="RSS of the same simulator with 1 device, MB",
            limit=Stats(base).summary(),
            goal="< 500 MB for 10,000 devices, no device more than one interval late",
            notes="stand-in server answering at once, in another process on the same cores; "
            f"enroll_rate {ENROLL_RATE:g}/s",
            extra={
                "unit": "MB",
                "peak_mb": round(peak, 1),
                "baseline_peak_mb": round(base_peak, 1),
                "kb_per_device": round(per_device_kb, 2),
                "enrolled": summary["enrolled"],
                "enroll_failed": summary["enroll_failed"],
                "messages_sent": summary["messages_sent"],
                "messages_per_s": round(summary["messages_sent"] / seconds, 1),
                "statuses": summary["statuses"],
                "errors": summary["errors"],
                "unreachable": summary["unreachable"],
                "first_error": summary["first_error"],
                "schedule": schedule,
                "on_schedule": schedule["behind"] == 0,
                "simulator_cpu_s": round(cpu, 1),
                "simulator_cpu_ms_per_message": round(
                    1000 * cpu / max(1, summary["messages_sent"]), 3
                ),
                "seconds": seconds,
                "baseline_schedule": base_summary["schedule"],
            },
        )
    ]
