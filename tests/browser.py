"""Browser tests in a line: a real `fleetkeeper serve`, a small living fleet, Debian's Chromium.

- `chromium_missing()` says why the browser tests cannot run here (no Chromium, no
  Playwright), and `needs_browser()` skips on a user's machine or fails where the services are
  required (`FLEETKEEPER_TEST_REQUIRE_SERVICES=1`, as in `.ci/run`), as conftest.py does for
  PostgreSQL.
- `running_server()` starts `python -m fleetkeeper serve` on a free port of 127.0.0.1 with a
  temp data dir (SQLite, or a PostgreSQL URL), an admin token for the API and the `admin`
  user's password for the dashboard; its background loops (rollout scheduler, alerting) run
  in real time, fast.
- `Portal` runs coroutines on an event loop of its own thread, so the sync Playwright tests can
  drive devices written with tests/devicekit.py (enrolment, check-ins, jobs, telemetry).
- `seed()` builds a fleet through the API and the device API: sites with positions, telemetry
  history, a few devices never seen. `work_jobs()` is the fleet's update agent: it checks in
  and carries out the jobs it is handed, a step at a time.
- `launch()` starts headless Chromium with the flags this machine needs; `log_in()` logs a page
  in through the login form.

Run the browser tests alone with `python3 dev.py test tests/test_browser.py`; take the
dashboard's screenshots with `.venv/bin/python tests/screenshots.py` (docs/dashboard.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Collection, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from devicekit import Device

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = os.environ.get("FLEETKEEPER_TEST_CHROMIUM", "/usr/bin/chromium")
# Headless as root on a machine without a network: no sandbox, no GPU, and none of Chromium's
# own background connections (each would be refused, many at a time).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUIRE_SERVICES = os.environ.get("FLEETKEEPER_TEST_REQUIRE_SERVICES", "") not in {"", "0"}
PG_URL = os.environ.get(
    "FLEETKEEPER_TEST_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/test"
)
ADMIN_TOKEN = "fkt_browser-admin-token-0123456789abcdef"
ADMIN_PASSWORD = "browser-admin-pass"
MODEL = "thermo-v2"
FIRMWARE = "1.4.2"
# Fast background loops: a deployment moves on within a fifth of a second, a rule is judged
# twice a second. The health watch stays off: its flags would change what pages show.
SERVER_ENV = {
    "FLEETKEEPER_SCHEDULER_INTERVAL_SECONDS": "0.2",
    "FLEETKEEPER_ALERT_INTERVAL_SECONDS": "0.2",
    "FLEETKEEPER_ALERT_EVALUATION_SECONDS": "0.5",
    "FLEETKEEPER_MONITOR_INTERVAL_SECONDS": "0",
    "FLEETKEEPER_DEVICE_RATE_PER_SECOND": "1000",
    "FLEETKEEPER_DEVICE_RATE_BURST": "1000",
}
# Sites with a centre (lat, lon): the fleet map and the position history have somewhere to be.
SITES = {
    "berlin-1": (52.5200, 13.4050),
    "oslo-3": (59.9139, 10.7522),
    "lyon-2": (45.7640, 4.8357),
    "madrid-4": (40.4168, -3.7038),
}
T = TypeVar("T")


# --- can the browser tests run here? ---------------------------------------------------------


def chromium_missing() -> str | None:
    """Why the browser tests cannot run on this machine, or None when they can."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (
            f"Chromium not found at {CHROMIUM}: install Debian's (apt-get install chromium) "
            "or set FLEETKEEPER_TEST_CHROMIUM"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is missing: pip install -e '.[test]'"
    return None


def needs_browser() -> None:
    """Skip when Chromium or Playwright is missing, or fail when services are required."""
    import pytest

    reason = chromium_missing()
    if reason is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"browser tests required (FLEETKEEPER_TEST_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, in a fresh profile (Playwright makes a temp one)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


def log_in(page: Page, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    """Log `page` in through the form (it lands on the overview)."""
    page.goto("/login")
    page.get_by_label("User").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login" not in url)


# --- an event loop beside the sync tests -----------------------------------------------------


class Portal:
    """An event loop in a thread of its own: sync code runs coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="portal", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run `coro` in the background; cancel the returned future to stop it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# --- the server ------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def api(self) -> httpx.Client:
        """An admin client of the management API."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(data_dir: Path, database_url: str | None = None, **env: str) -> Iterator[Server]:
    """`fleetkeeper serve` in a subprocess until the block ends; `env` adds settings."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        **SERVER_ENV,
        "FLEETKEEPER_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLEETKEEPER_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **env,
    }
    # Only our settings: a FLEETKEEPER_* of the caller's shell must not change the server.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLEETKEEPER_")}
    command = [sys.executable, "-m", "fleetkeeper", "serve", "--port", str(port)]
    command += ["--data-dir", str(data_dir)]
    if database_url:
        command += ["--database-url", database_url]
    log = data_dir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=inherited | settings, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", data_dir, log, process)
    try:
        _wait_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_healthy(server: Server, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited at start:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not healthy in {within:g} s:\n{server.log_tail()}")
        time.sleep(0.1)


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A throw-away PostgreSQL database (the server migrates it), or None when none answers
    (an error instead where services are required)."""
    from sqlalchemy.engine import make_url

    name = f"fk_browser_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if REQUIRE_SERVICES:
            raise RuntimeError(f"PostgreSQL required but unreachable at {PG_URL}: {exc}") from exc
        yield None
        return
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_admin(sql: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


# --- the fleet -------------------------------------------------------------------------------


@dataclass
class Fleet:
    """What `seed` made: enrolled devices by serial (devicekit), and by site."""

    http: httpx.AsyncClient
    devices: dict[str, Device] = field(default_factory=dict)
    sites: dict[str, list[str]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # serial → device id, unseen ones too

    def at(self, site: str) -> list[Device]:
        return [self.devices[s] for s in self.sites[site]]


def seed(
    portal: Portal,
    server: Server,
    *,
    per_site: int = 3,
    unseen: int = 2,
    history: timedelta = timedelta(hours=2),
    low_battery: Collection[str] = (),
) -> Fleet:
    """A fleet through the API and the device API: `per_site` enrolled devices at each of
    SITES (serials `TH-<SITE LETTER><n>`: TH-B01 is at berlin-1) with a position history and
    telemetry (battery, temperature, signal) over `history`, and `unseen` devices registered
    but never heard from. `low_battery`: serials whose battery is down to 9 %."""
    return portal.call(_seed(server, per_site, unseen, history, low_battery), timeout=300)


async def _seed(
    server: Server, per_site: int, unseen: int, history: timedelta, low_battery: Collection[str]
) -> Fleet:
    http = httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    )
    fleet = Fleet(http)
    r = await http.post("/api/v1/models", json={"name": MODEL, "manufacturer": "Acme"})
    assert r.status_code == 201, r.text
    r = await http.post("/api/v1/provisioning-tokens", json={"auto_accept": True})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    now = datetime.now(UTC)
    for s, (site, centre) in enumerate(SITES.items()):
        fleet.sites[site] = []
        for n in range(1, per_site + 1):
            serial = f"TH-{site[0].upper()}{n:02d}"
            device = Device(http, serial, model=MODEL)
            extra = {"firmware_version": FIRMWARE, "attributes": {"site": site}}
            r = await device.enroll(token, **extra)
            assert r.status_code == 201, r.text
            assert (await device.login()).status_code == 200
            assert device.device_id is not None
            fleet.devices[serial] = device
            fleet.sites[site].append(serial)
            fleet.ids[serial] = device.device_id
            await _wander(device, centre, n)
            battery = 9.0 if serial in low_battery else 95.0 - 7 * n - 3 * s
            await _history(device, now, history, battery, phase=n + s)
    for n in range(1, unseen + 1):
        serial = f"TH-X{n:02d}"
        body = {"serial": serial, "model": MODEL, "firmware_version": "1.3.0"}
        r = await http.post("/api/v1/devices", json=body)
        assert r.status_code == 201, r.text
        fleet.ids[serial] = r.json()["id"]
    return fleet


async def _wander(device: Device, centre: tuple[float, float], n: int) -> None:
    """A few positions some hundred metres apart, ending where the device stays."""
    lat, lon = centre
    for step in range(3):
        at = {"lat": lat + 0.004 * n + 0.002 * step, "lon": lon + 0.006 * n - 0.001 * step}
        r = await device.call("POST", "/inventory", json={"location": at | {"accuracy": 8.0}})
        assert r.status_code == 200, r.text


async def _history(
    device: Device, now: datetime, span: timedelta, battery: float, phase: int
) -> None:
    """A reading of each metric every five minutes over `span`, up to a minute ago."""
    points = []
    steps = int(span.total_seconds() // 300)
    for i in range(steps + 1):
        ts = now - timedelta(minutes=1) - (span * (steps - i) / steps)
        hours = ts.timestamp() / 3600
        for metric, value in (
            ("battery", battery + 2.0 * (steps - i) / 24),  # two points of charge an hour
            ("temperature", 21.0 + 3 * math.sin(phase + hours / 2)),
            ("signal", -70.0 + 8 * math.cos(phase + hours * 1.3)),
        ):
            points.append({"metric": metric, "value": round(value, 2), "ts": ts.isoformat()})
    r = await device.call("POST", "/telemetry", json={"points": points})
    assert r.status_code == 200 and not r.json()["rejected"], r.text


def upload_artifact(api: httpx.Client, version: str) -> dict[str, Any]:
    """Firmware `version` for MODEL, signed by the server's release key."""
    payload = f"thermo firmware {version}\n".encode() * 256
    r = api.post(
        "/api/v1/artifacts",
        files={"file": (f"thermo-{version}.bin", payload, "application/octet-stream")},
        data={"version": version, "models": MODEL, "name": "thermo-fw"},
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


# --- the fleet's update agent ----------------------------------------------------------------


async def work_jobs(devices: list[Device], step: float = 0.3) -> None:
    """Check in every `step` seconds and carry out each job handed out, one report every
    `step` seconds (downloading, installing, verifying, succeeded), until cancelled."""
    seen: set[tuple[str, int]] = set()
    working: set[asyncio.Task[None]] = set()
    try:
        while True:
            for device in devices:
                r = await device.call("POST", "/checkin", json={})
                if r.status_code != 200:
                    continue
                for job in r.json()["jobs"]:
                    key = (job["id"], int(job.get("attempt") or 1))
                    if key in seen:
                        continue
                    seen.add(key)
                    task = asyncio.create_task(_carry_out(device, job, step))
                    working.add(task)
                    task.add_done_callback(working.discard)
            await asyncio.sleep(step)
    finally:
        for task in list(working):
            task.cancel()


async def _carry_out(device: Device, job: dict[str, Any], step: float) -> None:
    path = f"/jobs/{job['id']}"
    if job.get("cancel"):
        await device.call("POST", path, json={"state": "canceled"})
        return
    if job["kind"] == "rollback":
        final = {"state": "rolled_back", "reason": "rollback_requested"}
        await device.call("POST", path, json=final | {"version": job.get("rollback_to")})
        return
    if job["kind"] == "command":
        await device.call("POST", path, json={"state": "succeeded"})
        return
    version = job["artifact"]["version"]
    for state, extra in (
        ("downloading", {"progress": 50}),
        ("installing", {}),
        ("verifying", {}),
        ("succeeded", {"version": version}),
    ):
        await asyncio.sleep(step)
        r = await device.call("POST", path, json={"state": state, **extra})
        if r.status_code != 200:  # closed by the server (canceled, timed out): stop
            return


def wait_for(check: Any, within: float = 20, every: float = 0.2, what: str = "it") -> Any:
    """Poll `check()` until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(every)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
