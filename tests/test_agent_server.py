"""The agent against the real server, in-process (SQLite, and PostgreSQL when reachable).

The agent talks to the app through `httpx.ASGITransport`; it shares the test's FakeClock, so its
telemetry timestamps are "now" for the server too. Long-polls wait in real time, kept short.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import fleet
from fleetkeeper.agent import Agent, AgentConfig, AgentExit, EnrollOptions, StateDir
from fleetkeeper.agent.metrics import MetricDescription, MetricsCollector
from fleetkeeper.clock import FakeClock
from fleetkeeper.settings import Settings

SERVER = "http://fleetkeeper.test"


class Switchable(httpx.AsyncBaseTransport):
    """A transport into whichever app runs now; while there is none, the server is "down"."""

    def __init__(self, app: FastAPI | None) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.app is None:
            raise httpx.ConnectError("connection refused", request=request)
        return await httpx.ASGITransport(app=self.app).handle_async_request(request)


async def quick_sleep(seconds: float) -> None:
    # Backoff and intervals shrink a thousandfold: the loop's shape, without the waiting.
    await asyncio.sleep(min(seconds / 1000, 0.2))


async def provisioning_token(client: httpx.AsyncClient, **fields: Any) -> str:
    r = await client.post("/api/v1/provisioning-tokens", json={"name": "batch-1", **fields})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


@pytest.fixture
async def token(client: httpx.AsyncClient) -> str:
    await fleet.model(client)
    return await provisioning_token(client, auto_accept=True)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "agent")


def make_agent(
    app: FastAPI | httpx.AsyncBaseTransport,
    state: StateDir,
    clock: FakeClock,
    token: str | None = None,
    serial: str = "SN-100",
    **config: Any,
) -> Agent:
    transport = app if isinstance(app, httpx.AsyncBaseTransport) else httpx.ASGITransport(app=app)
    config.setdefault("checkin_wait", 2)
    config.setdefault("telemetry_interval", 3600)
    collector = MetricsCollector(
        [MetricDescription("cpu", lambda: 12.5), MetricDescription("memory", lambda: 40.0)],
        clock=lambda: clock.now().timestamp(),
    )
    return Agent(
        SERVER,
        state,
        AgentConfig(**config),
        enroll=EnrollOptions(serial=serial, model="thermo-v2", provisioning_token=token),
        transport=transport,
        clock=clock,
        sleep=quick_sleep,
        collector=collector,
        facts=lambda: {"hostname": "box-1", "os": "Debian GNU/Linux 12"},
    )


@pytest.fixture
async def running(
    app: FastAPI, state: StateDir, clock: FakeClock, token: str
) -> AsyncIterator[Agent]:
    """An agent whose loops run in the background for the length of the test."""
    agent = make_agent(app, state, clock, token)
    task = asyncio.create_task(agent.run())
    await until(lambda: agent.identity is not None and agent.connectivity.online is True)
    yield agent
    agent.stop()
    await asyncio.wait_for(task, 10)


async def until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def device(client: httpx.AsyncClient, device_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/devices/{device_id}")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def test_agent_enrols_with_a_provisioning_token(
    app: FastAPI, client: httpx.AsyncClient, state: StateDir, clock: FakeClock, token: str
) -> None:
    agent = make_agent(app, state, clock, token)
    identity = await agent.start()
    await agent.close()
    shown = await device(client, identity.device_id)
    assert (shown["serial"], shown["state"], shown["model"]) == ("SN-100", "active", "thermo-v2")
    assert shown["attributes"]["hostname"] == "box-1"
    assert identity.certificate.startswith("-----BEGIN CERTIFICATE-----")


async def test_agent_restart_authenticates_without_enrolling_again(
    app: FastAPI, client: httpx.AsyncClient, state: StateDir, clock: FakeClock, token: str
) -> None:
    first = make_agent(app, state, clock, token)
    identity = await first.start()
    await first.close()
    # Enrolling again would be refused (409 already_enrolled) and end the agent.
    second = make_agent(app, state, clock, token, checkin_wait=0)
    assert await second.start() == identity
    result = await second.checkin_once()
    await second.close()
    assert result.state == "active"
    r = await client.get("/api/v1/devices")
    assert [d["serial"] for d in r.json()["items"]] == ["SN-100"]


async def test_a_command_round_trip_through_long_poll_under_a_second(
    app: FastAPI, client: httpx.AsyncClient, running: Agent
) -> None:
    assert running.identity is not None
    device_id = running.identity.device_id
    await until(lambda: app.state.fleetkeeper.notifier.waiting > 0)  # the agent long-polls
    started = time.monotonic()
    r = await client.post(
        f"/api/v1/devices/{device_id}/commands", json={"name": "ping", "timeout": 30}
    )
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "pending"
    command_id = r.json()["id"]
    shown: dict[str, Any] = {}

    async def answered() -> bool:
        nonlocal shown
        shown = (await client.get(f"/api/v1/devices/{device_id}/commands/{command_id}")).json()
        return shown["state"] not in ("pending", "delivered")

    while not await answered():
        assert time.monotonic() - started < 5, shown
        await asyncio.sleep(0.01)
    assert time.monotonic() - started < 1.0
    assert shown["state"] == "succeeded"
    assert shown["result"]["pong"] is True


async def test_an_undeclared_command_comes_back_failed(
    app: FastAPI, client: httpx.AsyncClient, running: Agent
) -> None:
    assert running.identity is not None
    device_id = running.identity.device_id
    r = await client.post(
        f"/api/v1/devices/{device_id}/commands", json={"name": "reboot", "timeout": 30}
    )
    command_id = r.json()["id"]
    url = f"/api/v1/devices/{device_id}/commands/{command_id}"
    for _ in range(1000):
        shown = (await client.get(url)).json()
        if shown["state"] == "failed":
            break
        await asyncio.sleep(0.01)
    assert shown["state"] == "failed"
    assert shown["result"] == {"error": "unknown_command"}


async def test_telemetry_and_inventory_reach_the_server(
    app: FastAPI, client: httpx.AsyncClient, state: StateDir, clock: FakeClock, token: str
) -> None:
    agent = make_agent(app, state, clock, token, firmware_version="1.4.2")
    identity = await agent.start()
    agent.sample()
    clock.advance(60)
    agent.sample()
    assert await agent.sync() == 4
    assert len(agent.queue) == 0
    await agent.close()
    shown = await device(client, identity.device_id)
    assert shown["firmware_version"] == "1.4.2"


async def test_a_pending_device_waits_for_acceptance_then_sends_its_telemetry(
    app: FastAPI, client: httpx.AsyncClient, state: StateDir, clock: FakeClock
) -> None:
    await fleet.model(client)
    token = await provisioning_token(client, auto_accept=False)
    agent = make_agent(app, state, clock, token, checkin_wait=0)
    identity = await agent.start()
    assert agent.device_state == "pending"
    agent.sample()
    assert await agent.sync() == 0
    assert (await agent.checkin_once()).state == "pending"
    r = await client.post(f"/api/v1/devices/{identity.device_id}/accept", json={})
    assert r.status_code == 200, r.text
    assert (await agent.checkin_once()).state == "active"
    assert await agent.sync() == 2
    await agent.close()


async def test_a_retired_device_wipes_its_credentials_and_stops(
    app: FastAPI, client: httpx.AsyncClient, state: StateDir, clock: FakeClock, token: str
) -> None:
    agent = make_agent(app, state, clock, token)
    identity = await agent.start()
    await agent.close()
    r = await client.post(
        f"/api/v1/devices/{identity.device_id}/retire", json={"reason": "end of life"}
    )
    assert r.status_code == 200, r.text
    with pytest.raises(AgentExit, match="retired") as caught:
        await make_agent(app, state, clock, token).run()
    assert caught.value.code == 0
    assert not state.key_path.exists() and not state.identity_path.exists()


async def test_agent_survives_a_server_restart(
    app: FastAPI,
    client: httpx.AsyncClient,
    settings: Settings,
    state: StateDir,
    clock: FakeClock,
    token: str,
) -> None:
    from fleetkeeper.api.app import create_app

    transport = Switchable(app)
    agent = make_agent(transport, state, clock, token, checkin_wait=0.2)
    task = asyncio.create_task(agent.run())
    await until(lambda: agent.connectivity.online is True)
    transport.app = None  # the server goes away...
    await until(lambda: agent.connectivity.online is False)
    restarted = create_app(settings, clock=clock)
    async with restarted.router.lifespan_context(restarted):
        transport.app = restarted  # ...and comes back as a new process on the same database
        await until(lambda: agent.connectivity.online is True)
        assert agent.identity is not None
        r = await client.post(
            f"/api/v1/devices/{agent.identity.device_id}/commands",
            json={"name": "ping", "timeout": 30},
        )
        command_id = r.json()["id"]
        url = f"/api/v1/devices/{agent.identity.device_id}/commands/{command_id}"
        for _ in range(1000):
            if (await client.get(url)).json()["state"] == "succeeded":
                break
            await asyncio.sleep(0.01)
        agent.stop()
        await asyncio.wait_for(task, 10)
    assert (await client.get(url)).json()["state"] == "succeeded"
    r = await client.get("/api/v1/devices")
    assert len(r.json()["items"]) == 1  # never enrolled twice
