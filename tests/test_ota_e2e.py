"""The whole update path with the real agent and its directory-slot handler: upload, deploy,
check-in, download, verify, install, reboot, health check, commit or roll back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

import fleet
from fleetkeeper.agent import StateDir
from fleetkeeper.agent.config import UpdateSettings
from fleetkeeper.clock import FakeClock
from otakit import artifact, deploy, show
from test_agent_server import make_agent, provisioning_token, until


async def drive(app: FastAPI, client: httpx.AsyncClient, deployment_id: str) -> dict[str, Any]:
    """Tick the scheduler until the deployment is over (the agents run meanwhile)."""
    scheduler = app.state.fleetkeeper.scheduler
    deadline = time.monotonic() + 60
    while True:
        await scheduler.tick()
        d = await show(client, deployment_id)
        if d["state"] not in ("running", "scheduled"):
            return d
        assert time.monotonic() < deadline, f"the rollout did not end: {d['counts']}"
        await asyncio.sleep(0.02)


async def test_an_update_reaches_real_agents_and_a_bad_one_rolls_back(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    await fleet.model(client)
    token = await provisioning_token(client, auto_accept=True)
    agents = []
    for serial, check in (("E2E-GOOD", ["/bin/true"]), ("E2E-BAD", ["/bin/false"])):
        update = UpdateSettings(
            slots_dir=tmp_path / serial / "slots", health_check=tuple(check), health_timeout=10
        )
        agent = make_agent(
            app,
            StateDir(tmp_path / serial / "state"),
            clock,
            token,
            serial=serial,
            firmware_version="1.0.0",
            update=update,
        )
        agents.append(agent)
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        await until(lambda: all(a.identity is not None for a in agents))
        payload = b"\x7fELF new firmware image " * 4096
        art = await artifact(client, "2.0.0", payload=payload)
        dep = await deploy(
            client,
            artifact_id=art["id"],
            # One of two failing is 50 %: let it through, the point here is the path.
            rollout={
                "phases": [100],
                "jitter": 0,
                "rate": {"base_per_minute": 600},
                "error_threshold": 100,
            },
        )
        d = await drive(app, client, dep["id"])
    finally:
        for a in agents:
            a.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert d["state"] == "finished", d
    assert d["counts"]["succeeded"] == 1
    assert d["counts"]["rolled_back"] == 1
    assert d["failure_reasons"] == {"health_check_failed": 1}
    r = await client.get("/api/v1/devices", params={"q": "serial = E2E-GOOD"})
    assert r.json()["items"][0]["firmware_version"] == "2.0.0"
    r = await client.get("/api/v1/devices", params={"q": "serial = E2E-BAD"})
    assert r.json()["items"][0]["firmware_version"] == "1.0.0"
    installed = [p for p in (tmp_path / "E2E-GOOD" / "slots").rglob("*") if p.is_file()]
    assert any(p.read_bytes() == payload for p in installed)
