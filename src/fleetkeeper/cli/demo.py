"""`fleetkeeper demo`: a server on the embedded default and a living simulated fleet.

The server runs in this process, on a thread of its own with its own event loop (uvicorn as
`fleetkeeper serve` runs it, quieter); the fleet runs on the main thread and talks to it over
HTTP, exactly as remote devices would. Ctrl-C stops the fleet, then the server.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

from fleetkeeper.cli import output
from fleetkeeper.cli.server import sqlite_url

if TYPE_CHECKING:
    import uvicorn

DEFAULT_DATA_DIR = Path("data/demo")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class ServerThread:
    """uvicorn serving the app on a thread; `start` returns once /healthz answers."""

    def __init__(self, server: uvicorn.Server, host: str) -> None:
        self.server = server
        self.host = host
        self.thread = threading.Thread(target=server.run, name="fleetkeeper-server", daemon=True)

    @property
    def url(self) -> str:
        port = self.server.config.port
        if self.server.servers and self.server.servers[0].sockets:
            port = self.server.servers[0].sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(
                    "the server did not start (is the port in use? try --port); "
                    "its log above says why"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {START_TIMEOUT:g} s")
            time.sleep(0.05)
        response = httpx.get(f"{self.url}/healthz", timeout=10.0)
        if response.status_code != 200:
            raise RuntimeError(f"the server is not healthy: /healthz said {response.status_code}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT)


def demo(
    host: Annotated[str, typer.Option(help="Address the server listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free).")] = 8080,
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", file_okay=False, help="Data folder of the demo server."),
    ] = DEFAULT_DATA_DIR,
    devices: Annotated[int, typer.Option(min=1, max=100_000, help="Simulated devices.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the simulated fleet.")] = 7,
    duration: Annotated[
        float | None,
        typer.Option(min=0.0, show_default=False, help="Stop after this many seconds."),
    ] = None,
) -> None:
    """Start a server (SQLite in the data folder) and a simulated fleet: the platform at work.

    The fleet lives through a firmware rollout in phases (with failures and rollbacks), a
    site outage, faulty sensors and a compromised device. Prints the server's URL and an admin
    token: FLEETKEEPER_ADMIN_TOKEN when set, else a new one for this run (the previous run's
    stops working). FLEETKEEPER_ADMIN_PASSWORD sets the password of user admin, as for serve.
    Runs until Ctrl-C (or --duration).
    """
    import uvicorn

    from fleetkeeper.api.app import create_app
    from fleetkeeper.cli.simulate import render_summary, run_until_stopped
    from fleetkeeper.settings import Settings
    from fleetkeeper.sim import Simulator
    from fleetkeeper.sim.demo import demo_scenario, timeline

    admin_token = os.environ.get("FLEETKEEPER_ADMIN_TOKEN") or "fkt_" + secrets.token_urlsafe(32)
    settings = Settings(
        data_dir=data_dir, database_url=sqlite_url(data_dir), admin_token=admin_token
    )
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, log_level="warning", access_log=False
    )
    server = ServerThread(uvicorn.Server(config), host)
    try:
        server.start()
    except (RuntimeError, httpx.HTTPError) as exc:
        server.stop()
        output.error(str(exc))
        raise typer.Exit(1) from None
    scenario = demo_scenario(devices, seed)
    try:
        _banner(server.url, admin_token, settings.data_dir, scenario.devices, timeline(scenario))
        simulator = Simulator(
            scenario, server.url, admin_token=admin_token, on_progress=_progress, note=output.note
        )
        summary = run_until_stopped(simulator, duration)
        output.stdout().print(render_summary(summary))
    finally:
        output.note("Stopping the server ...")
        server.stop()


def _banner(url: str, token: str, data_dir: Path, devices: int, events: list[str]) -> None:
    lines = [
        "",
        "Fleetkeeper demo is running.",
        "",
        f"  Server:       {url}/   (the dashboard will live here)",
        f"  API docs:     {url}/docs",
        f"  Admin token:  {token}",
        f"  Data:         {data_dir} (SQLite)",
        "",
        "Try, in another terminal:",
        f"  export FLEETKEEPER_SERVER={url} FLEETKEEPER_TOKEN={token}",
        "  fleetkeeper devices list -q 'attributes.site = berlin-1'",
        "  fleetkeeper security events",
        "  fleetkeeper deploy list        (the rollout's deployment id is printed when it starts)",
        "",
        f"Simulating {devices} devices; what happens (minutes after the start):",
        *(f"  {event}" for event in events),
        "",
        "Ctrl-C stops the fleet and the server.",
        "",
    ]
    for line in lines:
        output.stdout().print(line, soft_wrap=True, markup=False, highlight=False)


def _progress(snapshot: dict[str, Any]) -> None:
    states = snapshot["states"]
    updates = snapshot["updates"]
    output.note(
        f"{snapshot['seconds']:>6.0f} s  {snapshot['enrolled']} enrolled, "
        f"{states.get('active', 0)} active, {snapshot['messages_sent']} messages, "
        f"updates: {updates.get('succeeded', 0)} succeeded, {updates.get('failed', 0)} failed, "
        f"{updates.get('rolled_back', 0)} rolled back"
    )
