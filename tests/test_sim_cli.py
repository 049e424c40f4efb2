"""`fleetkeeper simulate` and `fleetkeeper demo` as a person (or a script) runs them."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from conftest import ADMIN_TOKEN
from fleetkeeper.api.app import create_app
from fleetkeeper.cli import app as cli
from fleetkeeper.cli import simulate as simulate_cli
from fleetkeeper.settings import Settings

SERVER = "http://fleetkeeper.test"
QUICK = ["--checkin-interval", "0.3", "--telemetry-interval", "0.3"]


class StartingTransport(httpx.AsyncBaseTransport):
    """An in-process app that starts with the first request, in the command's own event
    loop, and stops when the command closes its HTTP clients."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.inner = httpx.ASGITransport(app=app)
        self.stack: AsyncExitStack | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.stack is None:
            self.stack = AsyncExitStack()
            await self.stack.enter_async_context(self.app.router.lifespan_context(self.app))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self.stack is not None:
            stack, self.stack = self.stack, None
            await stack.aclose()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SQLite server behind `simulate`; the path of its database file."""
    settings = Settings(data_dir=tmp_path / "server", admin_token=ADMIN_TOKEN)
    app = create_app(settings)
    monkeypatch.setattr(simulate_cli, "open_transport", lambda url: StartingTransport(app))
    return tmp_path / "server" / "fleetkeeper.db"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        cli, list(args), env={"COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    )


def test_without_a_way_in_it_is_a_usage_error() -> None:
    result = run("simulate", "--server", SERVER, "--devices", "3", env={"FLEETKEEPER_TOKEN": ""})
    assert result.exit_code == 2
    assert "--provisioning-token" in result.output


def test_an_unknown_fault_is_a_usage_error() -> None:
    result = run("simulate", "--token", "t", "--fault", "gremlins=0.5")
    assert result.exit_code == 2
    assert "KIND=RATE" in result.output


def test_a_scenario_with_a_typo_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("devicez = 3\n")
    result = run("simulate", "--token", "t", "--scenario", str(path))
    assert result.exit_code == 2
    assert "devicez" in result.output


def test_an_unreachable_server_exits_1() -> None:
    result = run("simulate", "--server", "http://127.0.0.1:9", "--token", "t", "--duration", "1")
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:9" in result.output


def test_a_run_prints_its_summary_as_json(server: Path) -> None:
    result = run(
        "simulate",
        "--server",
        SERVER,
        "--token",
        ADMIN_TOKEN,
        "--devices",
        "4",
        "--seed",
        "3",
        "--duration",
        "1",
        "--fault",
        "sensor_stuck=1.0",
        *QUICK,
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["devices"] == summary["enrolled"] == 4
    assert summary["messages_sent"] > 4
    assert set(summary["updates"]) == {
        "attempted",
        "succeeded",
        "rolled_back",
        "failed",
        "canceled",
    }
    assert summary["jobs"]["received"] == 0
    serials = [f"sim3-{i:05d}" for i in range(4)]
    assert summary["faults"]["sensor_stuck"] == serials
    assert summary["faults"]["flood"] == []
    with sqlite3.connect(server) as db:
        on_server = sorted(row[0] for row in db.execute("SELECT serial FROM devices"))
    assert on_server == serials


def test_a_run_with_a_provisioning_token_needs_the_models_to_exist(server: Path) -> None:
    result = run(
        "simulate",
        "--server",
        SERVER,
        "--provisioning-token",
        "fkp_nobody-made-this",
        "--devices",
        "2",
        "--duration",
        "3",
        env={"FLEETKEEPER_TOKEN": ""},
    )
    assert result.exit_code == 1
    assert "no device could enrol" in result.output


def test_people_get_a_readable_summary(server: Path) -> None:
    result = run(
        "simulate", "--server", SERVER, "--token", ADMIN_TOKEN, "--devices", "2",
        "--duration", "0.5", *QUICK,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # How many enrol within half a second depends on the machine's load; the layout does not.
    assert re.search(r"devices\s+2 \(\d enrolled", result.stdout)
    assert "messages sent" in result.stdout


def demo(tmp_path: Path, env: dict[str, str]) -> Result:
    return run(
        "demo",
        "--port",
        "0",
        "--devices",
        "6",
        "--duration",
        "1.5",
        "--data-dir",
        str(tmp_path / "demo"),
        env=env,
    )


def test_the_demo_starts_a_server_and_a_fleet_and_prints_the_way_in(tmp_path: Path) -> None:
    result = demo(tmp_path, {"FLEETKEEPER_ADMIN_TOKEN": ""})
    assert result.exit_code == 0, result.output
    url = re.search(r"Server:\s+(http://127\.0\.0\.1:\d+)/", result.stdout)
    assert url is not None
    assert f"API docs:     {url.group(1)}/docs" in result.stdout
    token = re.search(r"Admin token:\s+(fkt_\S+)", result.stdout)
    assert token is not None
    assert "loses power" in result.stdout
    with sqlite3.connect(tmp_path / "demo" / "fleetkeeper.db") as db:
        (count,) = db.execute("SELECT count(*) FROM devices").fetchone()
    assert count == 6


def test_the_demo_uses_the_admin_token_from_the_environment(tmp_path: Path) -> None:
    result = demo(tmp_path, {"FLEETKEEPER_ADMIN_TOKEN": ADMIN_TOKEN})
    assert result.exit_code == 0, result.output
    assert f"Admin token:  {ADMIN_TOKEN}" in result.stdout
