"""A server SIGKILLed in the middle of a rollout resumes without updating any device twice.

This is the one rollout test on real time: a real `fleetkeeper serve` process, killed with
SIGKILL (no shutdown, no flush) while devices are being notified, and started again on the
same database. The devices keep a ledger of every job they started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from devicekit import Device
from fleetkeeper.store.db import Database

ADMIN = "fkt_kill-test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(url: str, data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FLEETKEEPER_ADMIN_TOKEN": ADMIN,
        "FLEETKEEPER_SCHEDULER_INTERVAL_SECONDS": "0.2",
        "FLEETKEEPER_DEVICE_RATE_PER_SECOND": "1000",
        "FLEETKEEPER_DEVICE_RATE_BURST": "1000",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetkeeper",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--database-url",
            url,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def start(url: str, data: Path, port: int) -> subprocess.Popen[bytes]:
    proc = spawn(url, data, port)
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    kill(proc)
    raise AssertionError("the server did not start")


async def test_a_killed_server_resumes_without_updating_a_device_twice(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await start(database_url, tmp_path / "data", port)
    try:
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        ) as admin:
            assert (
                await admin.post("/api/v1/models", json={"name": "thermo-v2"})
            ).status_code == 201
            r = await admin.post("/api/v1/provisioning-tokens", json={"auto_accept": True})
            token = r.json()["token"]
            devices = []
            for n in range(12):
                device = Device(admin, f"KILL-{n:02d}")
                assert (await device.enroll(token, firmware_version="1.0.0")).status_code == 201
                assert (await device.login()).status_code == 200
                devices.append(device)
            r = await admin.post(
                "/api/v1/artifacts",
                files={"file": ("fw.bin", b"new firmware" * 100, "application/octet-stream")},
                data={"version": "2.0.0", "models": "thermo-v2"},
            )
            assert r.status_code == 201, r.text
            rollout = {
                "phases": [100],
                "jitter": 0,
                "rate": {"base_per_minute": 120, "increase_after_succeeded": None},
            }
            r = await admin.post(
                "/api/v1/deployments",
                json={
                    "target": "model = thermo-v2",
                    "artifact_id": r.json()["id"],
                    "rollout": rollout,
                },
            )
            assert r.status_code == 201, r.text
            deployment_id = r.json()["id"]

            ledger: dict[str, list[tuple[str, int]]] = defaultdict(list)
            done: set[str] = set()
            killed = False
            for _ in range(600):
                for device in devices:
                    if device.serial in done:
                        continue
                    try:
                        r = await device.call("POST", "/checkin", json={})
                    except httpx.TransportError:
                        continue
                    if r.status_code != 200:
                        continue
                    for job in r.json()["jobs"]:
                        key = (job["id"], job["attempt"])
                        if key in ledger[device.serial]:
                            continue  # a repeat of a job this device already works on
                        ledger[device.serial].append(key)
                        for step in ("downloading", "installing", "succeeded"):
                            body = (
                                {"state": step, "version": "2.0.0"}
                                if step == "succeeded"
                                else {"state": step}
                            )
                            r = await device.call("POST", f"/jobs/{job['id']}", json=body)
                            assert r.status_code == 200, r.text
                        done.add(device.serial)
                if not killed and len(done) >= 4:
                    kill(proc)
                    killed = True
                    proc = await start(database_url, tmp_path / "data", port)
                if len(done) == len(devices):
                    break
                await asyncio.sleep(0.1)
            assert killed
            assert done == {d.serial for d in devices}
            assert all(len(jobs) == 1 for jobs in ledger.values()), ledger
            for _ in range(100):
                d = (await admin.get(f"/api/v1/deployments/{deployment_id}")).json()
                if d["state"] == "finished":
                    break
                await asyncio.sleep(0.1)
            assert d["state"] == "finished"
            assert d["counts"]["succeeded"] == 12
            r = await admin.get(
                f"/api/v1/deployments/{deployment_id}/executions", params={"limit": 100}
            )
            assert all(e["attempt"] == 1 for e in r.json()["items"])
    finally:
        kill(proc)


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
