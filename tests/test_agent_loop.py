"""The agent's loop against a scripted device API: enrol once, check in, run, report, queue."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetkeeper.agent import Agent, AgentConfig, AgentExit, EnrollOptions, StateDir
from fleetkeeper.agent.metrics import MetricDescription, MetricsCollector
from fleetkeeper.clock import FakeClock
from test_protocol_client import SERVER, FakeServer, problem

FACTS = {"hostname": "box", "os": "Debian"}


class StopLoop(Exception):
    """Raised by the fake sleep to end an endless loop after some turns."""


class Sleeps:
    def __init__(self, turns: int = 1000) -> None:
        self.waits: list[float] = []
        self.turns = turns

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self.turns:
            raise StopLoop
        await asyncio.sleep(0)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


def make_agent(
    server: FakeServer,
    state: StateDir,
    *,
    sleep: Sleeps | None = None,
    facts: dict[str, Any] | None = None,
    **config: Any,
) -> Agent:
    clock = FakeClock()
    collector = MetricsCollector(
        [MetricDescription("cpu", lambda: 12.5), MetricDescription("battery", lambda: None)],
        clock=lambda: clock.now().timestamp(),
    )
    return Agent(
        SERVER,
        state,
        AgentConfig(**config),
        enroll=EnrollOptions(serial="SN-1", model="thermo-v2", provisioning_token="fkp_t"),
        transport=server.transport(),
        clock=clock,
        sleep=sleep or Sleeps(),
        collector=collector,
        facts=lambda: dict(FACTS if facts is None else facts),
    )


async def started(server: FakeServer, state: StateDir, **kwargs: Any) -> Agent:
    agent = make_agent(server, state, **kwargs)
    await agent.start()
    return agent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- enrolment and restarts ---------------------------------------------------------------


async def test_first_start_makes_a_key_and_enrols_once(server: FakeServer, state: StateDir) -> None:
    agent = await started(server, state)
    await agent.close()
    assert server.paths() == ["/enroll"]
    assert mode(state.key_path) == 0o600 and mode(state.identity_path) == 0o600
    identity = json.loads(state.identity_path.read_text())
    assert identity["device_id"] == server.serials["SN-1"]
    assert (identity["serial"], identity["model"], identity["certificate"]) == (
        "SN-1",
        "thermo-v2",
        "CERT",
    )
    assert server.inventory["provisioning_token"] == "fkp_t"
    assert server.inventory["attributes"] == FACTS


async def test_a_restarted_agent_authenticates_and_never_enrols_again(
    server: FakeServer, state: StateDir
) -> None:
    first = await started(server, state)
    await first.close()
    second = await started(server, state)
    await second.checkin_once()
    await second.close()
    assert server.paths().count("/enroll") == 1
    assert server.paths()[1:] == ["/auth/challenge", "/auth/token", "/checkin"]
    assert second.identity == first.identity


async def test_enrolment_waits_out_an_unreachable_server(
    server: FakeServer, state: StateDir
) -> None:
    server.script("/enroll", httpx.ConnectError("refused"), httpx.Response(502))
    sleeps = Sleeps()
    agent = await started(server, state, sleep=sleeps)
    await agent.close()
    assert server.paths() == ["/enroll"] * 3
    assert len(sleeps.waits) == 2 and sleeps.waits[0] <= 1.0 < sleeps.waits[1] <= 2.0


async def test_a_refused_enrolment_ends_the_agent_without_identity(
    server: FakeServer, state: StateDir
) -> None:
    server.script("/enroll", problem(403, "provisioning_refused", "the token has expired"))
    agent = make_agent(server, state)
    with pytest.raises(AgentExit, match="the token has expired") as caught:
        await agent.run()
    assert caught.value.code == 1
    assert not state.identity_path.exists()


async def test_an_enrolled_serial_without_identity_ends_the_agent(
    server: FakeServer, state: StateDir
) -> None:
    server.serials["SN-1"] = "dev-0"
    with pytest.raises(AgentExit, match="enrolled already"):
        await make_agent(server, state).run()


async def test_an_enrolled_serial_the_server_names_is_taken_up(
    server: FakeServer, state: StateDir
) -> None:
    server.script("/enroll", problem(409, "already_enrolled", device_id="dev-42"))
    agent = await started(server, state)
    await agent.close()
    assert agent.identity is not None and agent.identity.device_id == "dev-42"
    assert state.load_identity() == agent.identity


async def test_a_key_file_others_can_read_stops_the_agent(
    server: FakeServer, state: StateDir
) -> None:
    (await started(server, state)).queue.close()
    state.key_path.chmod(0o644)
    with pytest.raises(AgentExit, match="chmod 600"):
        await make_agent(server, state).run()


# --- check-in and commands ----------------------------------------------------------------


async def test_a_command_from_check_in_is_run_and_its_result_reported(
    server: FakeServer, state: StateDir
) -> None:
    agent = await started(server, state)
    server.pending = [
        {"id": "c1", "name": "ping", "args": {}, "timeout": 30},
        {"id": "c2", "name": "reboot", "args": {}, "timeout": 30},
    ]
    await agent.checkin_once()
    await agent.run_next_command()
    await agent.run_next_command()
    await agent.close()
    assert server.results["c1"]["state"] == "succeeded"
    assert server.results["c1"]["result"]["pong"] is True
    assert server.results["c2"] == {"state": "failed", "result": {"error": "unknown_command"}}


async def test_a_result_is_retried_until_the_server_takes_it(
    server: FakeServer, state: StateDir
) -> None:
    agent = await started(server, state)
    server.pending = [{"id": "c1", "name": "ping", "args": {}, "timeout": 30}]
    await agent.checkin_once()
    server.script("/commands/c1", httpx.ConnectError("down"), httpx.Response(503))
    await agent.run_next_command()
    await agent.close()
    assert server.paths().count("/commands/c1") == 3 and "c1" in server.results


async def test_a_late_result_is_dropped(server: FakeServer, state: StateDir) -> None:
    agent = await started(server, state)
    server.pending = [{"id": "c1", "name": "ping", "args": {}, "timeout": 30}]
    server.closed.add("c1")
    await agent.checkin_once()
    outcome = await agent.run_next_command()
    await agent.close()
    assert outcome.state == "succeeded" and "c1" not in server.results


async def test_check_in_backs_off_while_the_server_is_down(
    server: FakeServer, state: StateDir, caplog: pytest.LogCaptureFixture
) -> None:
    sleeps = Sleeps(turns=4)
    agent = await started(server, state, sleep=sleeps, checkin_wait=0)
    server.script("/auth/challenge", *[httpx.ConnectError("refused")] * 3)
    with caplog.at_level(logging.INFO, logger="fleetkeeper.agent"), pytest.raises(StopLoop):
        await agent.checkin_loop()
    await agent.close()
    first, second, third = sleeps.waits[:3]
    assert 0.5 <= first <= 1 and 1 <= second <= 2 and 2 <= third <= 4
    assert sleeps.waits[3] == 30  # back: the next check-in comes when the server said
    unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "available again" in r.getMessage()]
    assert len(unavailable) == 1 and len(back) == 1  # once each, not once per attempt


async def test_check_in_waits_as_long_as_a_429_asks(server: FakeServer, state: StateDir) -> None:
    sleeps = Sleeps(turns=1)
    agent = await started(server, state, sleep=sleeps)
    server.script("/auth/challenge", httpx.Response(429, headers={"Retry-After": "17"}))
    with pytest.raises(StopLoop):
        await agent.checkin_loop()
    await agent.close()
    assert sleeps.waits == [17.0]


async def test_a_pending_device_checks_in_every_next_checkin_seconds(
    server: FakeServer, state: StateDir
) -> None:
    server.state = "pending"
    sleeps = Sleeps(turns=2)
    agent = await started(server, state, sleep=sleeps, checkin_wait=30)
    with pytest.raises(StopLoop):
        await agent.checkin_loop()
    await agent.close()
    assert sleeps.waits == [30, 30] and agent.device_state == "pending"


# --- stopping -----------------------------------------------------------------------------


async def test_wipe_at_check_in_deletes_credentials_and_data_and_ends_cleanly(
    server: FakeServer, state: StateDir
) -> None:
    (await started(server, state)).queue.close()
    server.wipe = True
    with pytest.raises(AgentExit, match="retired") as caught:
        await make_agent(server, state).run()
    assert caught.value.code == 0
    assert not state.key_path.exists() and not state.identity_path.exists()
    assert not state.queue_path.exists()


async def test_device_retired_deletes_the_credentials(server: FakeServer, state: StateDir) -> None:
    (await started(server, state)).queue.close()
    server.script("/auth/token", problem(403, "device_retired", wipe=False))
    with pytest.raises(AgentExit, match="deleted its credentials from") as caught:
        await make_agent(server, state).run()
    assert caught.value.code == 0
    assert not state.key_path.exists() and not state.identity_path.exists()
    assert state.queue_path.exists()  # no wipe asked: local data stays


async def test_revoked_credentials_end_the_agent_with_an_error(
    server: FakeServer, state: StateDir
) -> None:
    (await started(server, state)).queue.close()
    server.script("/checkin", problem(403, "credentials_revoked", "revoked by an operator"))
    with pytest.raises(AgentExit, match="revoked by an operator") as caught:
        await make_agent(server, state).run()
    assert caught.value.code == 1
    assert state.key_path.exists() and state.identity_path.exists()


async def test_run_serves_commands_until_stopped(server: FakeServer, state: StateDir) -> None:
    agent = make_agent(server, state, checkin_wait=0)
    server.pending = [{"id": "c1", "name": "ping", "args": {}, "timeout": 30}]
    task = asyncio.create_task(agent.run())
    for _ in range(500):
        if "c1" in server.results:
            break
        await asyncio.sleep(0.001)
    agent.stop()
    await asyncio.wait_for(task, 5)
    assert server.results["c1"]["state"] == "succeeded"
    assert server.inventory["attributes"] == FACTS


# --- inventory and telemetry --------------------------------------------------------------


async def test_inventory_is_reported_at_start_and_when_it_changes(
    server: FakeServer, state: StateDir
) -> None:
    (await started(server, state)).queue.close()
    facts = {"hostname": "box", "os": "Debian"}
    agent = await started(server, state, facts=facts)
    await agent.sync()
    await agent.sync()
    assert server.paths().count("/inventory") == 1
    del facts["os"]
    facts["kernel"] = "6.1"
    await agent.sync()
    await agent.close()
    assert server.paths().count("/inventory") == 2
    last = [r for r in server.requests if r.url.path.endswith("/inventory")][-1]
    sent = json.loads(last.content)
    assert sent["attributes"] == {"hostname": "box", "kernel": "6.1", "os": None}


async def test_telemetry_waits_in_the_queue_while_offline_and_goes_oldest_first(
    server: FakeServer, state: StateDir
) -> None:
    agent = await started(server, state)
    server.script("/auth/challenge", httpx.ConnectError("refused"))
    agent.sample()
    assert await agent.sync() == 0
    agent.clock.advance(60)  # type: ignore[attr-defined]
    agent.sample()
    assert len(agent.queue) == 2 and server.points == []
    assert await agent.sync() == 2
    await agent.close()
    assert [p["metric"] for p in server.points] == ["cpu", "cpu"]
    assert server.points[0]["ts"] < server.points[1]["ts"]


async def test_queued_telemetry_survives_an_agent_restart(
    server: FakeServer, state: StateDir
) -> None:
    agent = await started(server, state)
    agent.sample()
    await agent.close()
    again = await started(server, state)
    assert len(again.queue) == 1
    await again.sync()
    await again.close()
    assert len(server.points) == 1


async def test_a_pending_device_keeps_its_telemetry_until_accepted(
    server: FakeServer, state: StateDir
) -> None:
    server.enroll_state = "pending"
    server.state = "pending"
    agent = await started(server, state)
    agent.sample()
    assert await agent.sync() == 0
    assert "/telemetry" not in server.paths()
    server.state = "active"
    await agent.checkin_once()
    assert await agent.sync() == 1
    await agent.close()


async def test_a_refusal_for_a_pending_device_is_remembered(
    server: FakeServer, state: StateDir
) -> None:
    (await started(server, state)).queue.close()
    agent = await started(server, state)
    server.script("/inventory", problem(403, "device_pending"))
    agent.sample()
    await agent.sync()
    await agent.sync()
    await agent.close()
    assert agent.device_state == "pending"
    assert server.paths().count("/inventory") == 1 and "/telemetry" not in server.paths()


async def test_a_batch_the_server_will_never_take_is_dropped(
    server: FakeServer, state: StateDir
) -> None:
    agent = await started(server, state)
    agent.sample()
    await agent.sync()
    agent.sample()
    server.script("/telemetry", problem(422, "invalid", "points: not a list"))
    assert await agent.sync() == 0
    assert len(agent.queue) == 0
    await agent.close()
