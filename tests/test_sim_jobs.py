"""A simulated device's side of deployment jobs, without a server: what it reports, and when.

The device is built as the simulator builds it; its update is moved on by hand, phase by
phase, and its reports are read from its outbox. Where the server's answers matter (a cancel
in an answer, a closed job, a server out of reach) a stub answers the job reports.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from fleetkeeper.clock import FakeClock
from fleetkeeper.protocol.messages import ArtifactRef, Command, Job
from fleetkeeper.sim import build, firmware, jobs, outbox, parse
from fleetkeeper.sim.catalogue import image_sha256
from fleetkeeper.sim.device import Deferred, Report, SimDevice, Status, World
from fleetkeeper.sim.stats import Stats

SERVER = "http://fleet.test"
NEW = "9.0.0"


@dataclass
class StubServer:
    """Answers job reports (and logins); `cancel`/`closed`/`down` script the answers."""

    reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cancel: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)
    down: bool = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.down:
            return httpx.Response(503, json={"detail": "down for maintenance"})
        if path.endswith("/auth/challenge"):
            return httpx.Response(200, json={"challenge": "c"})
        if path.endswith("/auth/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        job_id = path.rsplit("/", 1)[-1]
        self.reports.append((job_id, json.loads(request.content)))
        if job_id in self.closed:
            return httpx.Response(409, json={"code": "job_closed", "detail": "it timed out"})
        return httpx.Response(200, json={"state": "x", "cancel": job_id in self.cancel})

    def states(self, job_id: str = "job-1") -> list[str]:
        return [body["state"] for j, body in self.reports if j == job_id]


@dataclass
class Bench:
    dev: SimDevice
    world: World
    server: StubServer
    now: float = 0.0

    def hand(self, job: Job) -> None:
        jobs.receive(self.dev, self.world, job, self.now)

    def step(self) -> None:
        """The next phase of the running update (the device boots when it rebooted)."""
        self.now += 1
        firmware.progress(self.dev, self.world, self.now)
        if self.dev.off:
            self.boot()

    def finish(self) -> None:
        while self.dev.update is not None:
            self.step()

    def boot(self) -> None:
        self.now += 1
        self.dev.boot(self.now)
        jobs.back_up(self.dev)

    def reports(self) -> list[Report]:
        return [r for r in self.dev.outbox or () if isinstance(r, Report)]

    def states(self) -> list[str]:
        return [r.state for r in self.reports()]

    async def send(self) -> None:
        await outbox.send(self.dev, self.world)


@pytest.fixture
def server() -> StubServer:
    return StubServer()


@pytest.fixture
async def bench(server: StubServer) -> AsyncIterator[Bench]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        scenario = parse({"devices": 1, "mix": {"thermo-v2": 1}})
        (dev,), _ = build(scenario, SERVER, http)
        dev.client.device_id = "dev-1"
        dev.status = Status.ACTIVE
        b = Bench(dev, World(scenario, SERVER, http, FakeClock(), lambda: b.now, Stats(1)), server)
        yield b


def update_job(version: str = NEW, *, attempt: int = 1, cancel: bool = False) -> Job:
    artifact = ArtifactRef(
        id="art-1",
        version=version,
        sha256="ab" * 32,
        signature="c2ln",
        key_id="k",
        url="/device/v1/artifacts/art-1",
    )
    return Job("job-1", "dep-1", "update", "notified", attempt, cancel, artifact=artifact)


def rollback_job(to: str, job_id: str = "job-2") -> Job:
    return Job(job_id, "dep-1", "rollback", "rolling_back", rollback_to=to)


def command_job(name: str) -> Job:
    return Job("job-3", "dep-2", "command", "notified", command=Command("job-3", name))


def defect(bench: Bench, kind: str) -> None:
    bench.dev.faults = {kind: (0.0, float("inf"))}


def test_an_update_job_reports_every_step_and_ends_on_the_new_firmware(bench: Bench) -> None:
    old = bench.dev.firmware.version
    bench.hand(update_job())
    bench.finish()
    assert bench.states() == [
        "downloading",
        "downloaded",
        "installing",
        "rebooting",
        "verifying",
        "succeeded",
    ]
    final = bench.reports()[-1]
    assert (final.version, final.reason) == (NEW, None)
    assert bench.dev.firmware.version == NEW and bench.dev.firmware.slot("a") == old
    assert bench.dev.job is None
    assert dict(bench.world.stats.updates) == {"attempted": 1, "succeeded": 1}


@pytest.mark.parametrize(
    ("fault", "last_steps", "reason"),
    [
        ("update_download_corrupt", ["downloaded", "failed"], "integrity_check_failure"),
        ("update_install_fail", ["installing", "failed"], "update_failed"),
        ("update_health_fail", ["verifying", "rolled_back"], "health_check_failed"),
    ],
)
def test_an_update_fault_ends_the_job_with_its_reason_on_the_old_firmware(
    bench: Bench, fault: str, last_steps: list[str], reason: str
) -> None:
    old = bench.dev.firmware.version
    defect(bench, fault)
    bench.hand(update_job())
    bench.finish()
    assert bench.states()[-2:] == last_steps
    final = bench.reports()[-1]
    assert (final.reason, final.version) == (reason, old)
    assert bench.dev.firmware.version == old


def test_the_artifact_checksum_is_what_the_device_verifies(bench: Bench) -> None:
    bench.hand(update_job())  # its sha256 is not the catalogue's image: still what it got
    bench.finish()
    assert bench.states()[-1] == "succeeded"
    assert image_sha256("thermo-v2", NEW) != "ab" * 32


def test_a_job_seen_before_is_not_started_again_but_a_new_attempt_is(bench: Bench) -> None:
    defect(bench, "update_install_fail")
    bench.hand(update_job())
    bench.hand(update_job())  # repeated at the next check-in: the device knows it
    assert bench.states() == ["downloading"]
    bench.finish()
    bench.hand(update_job())
    assert bench.dev.update is None
    bench.hand(update_job(attempt=2))  # the server retries it
    assert bench.dev.update is not None
    bench.finish()
    assert bench.states().count("downloading") == 2
    assert bench.world.stats.updates["attempted"] == 2
    assert bench.world.stats.jobs["received"] == 2


def test_a_cancel_before_installing_drops_the_update(bench: Bench) -> None:
    old = bench.dev.firmware
    bench.hand(update_job())
    bench.step()  # downloaded, verifying: nothing written yet
    bench.hand(update_job(cancel=True))
    assert bench.states() == ["downloading", "downloaded", "canceled"]
    assert bench.dev.update is None and bench.dev.job is None
    assert bench.dev.firmware == old
    assert bench.world.stats.updates["canceled"] == 1


def test_a_cancel_heard_twice_is_agreed_to_once(bench: Bench) -> None:
    bench.hand(update_job())
    bench.hand(update_job(cancel=True))
    bench.hand(update_job(cancel=True))  # the server asks again before it heard the answer
    assert [(r.state, r.cancel_refused) for r in bench.reports()] == [
        ("downloading", False),
        ("canceled", False),
    ]


def test_a_cancel_after_installing_is_refused_in_the_next_report(bench: Bench) -> None:
    bench.hand(update_job())
    bench.step()
    bench.step()  # installing
    bench.dev.outbox = None  # the server has taken those
    bench.hand(update_job(cancel=True))
    assert bench.dev.update is not None
    bench.finish()
    assert [(r.state, r.cancel_refused) for r in bench.reports()] == [
        ("rebooting", True),
        ("verifying", False),
        ("succeeded", False),
    ]
    assert bench.dev.firmware.version == NEW


def test_a_refused_cancel_marks_the_report_already_waiting(bench: Bench) -> None:
    bench.hand(update_job())
    bench.step()
    bench.step()  # installing; nothing sent yet
    bench.hand(update_job(cancel=True))
    assert [r.cancel_refused for r in bench.reports()] == [True, False, False]


def test_a_job_called_off_before_it_started_is_canceled_at_once(bench: Bench) -> None:
    bench.hand(update_job(cancel=True))
    assert bench.states() == ["canceled"]
    assert bench.dev.update is None and bench.world.stats.updates["attempted"] == 0


def test_a_busy_device_fails_a_new_job_with_a_precondition(bench: Bench) -> None:
    bench.hand(command_job("reboot"))
    bench.hand(update_job())
    (report,) = [r for r in bench.reports() if r.job_id == "job-1"]
    assert (report.state, report.reason) == ("failed", "precondition_failed")
    assert report.version == bench.dev.firmware.version


def test_a_rollback_boots_the_other_slot_and_reports_once_back(bench: Bench) -> None:
    old = bench.dev.firmware.version
    bench.hand(update_job())
    bench.finish()
    bench.dev.outbox = None
    bench.hand(rollback_job(old))
    assert bench.dev.off and bench.states() == []
    bench.boot()
    (report,) = bench.reports()
    assert (report.state, report.reason, report.version) == (
        "rolled_back",
        "rollback_requested",
        old,
    )
    assert bench.dev.firmware.version == old and bench.dev.firmware.slot("b") == NEW


def test_a_rollback_to_a_release_no_slot_holds_fails_as_unavailable(bench: Bench) -> None:
    bench.hand(rollback_job("0.0.1"))
    (report,) = bench.reports()
    assert (report.state, report.reason) == ("failed", "rollback_unavailable")
    assert not bench.dev.off


def test_a_reboot_job_succeeds_once_the_device_is_back(bench: Bench) -> None:
    boots = bench.dev.boot_count
    bench.hand(command_job("reboot"))
    assert bench.dev.off and bench.states() == []
    bench.boot()
    assert bench.states() == ["succeeded"]
    assert bench.dev.boot_count == boots + 1


def test_an_unknown_command_job_fails(bench: Bench) -> None:
    bench.hand(command_job("self_destruct"))
    (report,) = bench.reports()
    assert (report.state, report.reason) == ("failed", "command_failed")


async def test_reports_wait_while_the_server_is_out_of_reach(
    bench: Bench, server: StubServer
) -> None:
    bench.hand(update_job())
    server.down = True
    with pytest.raises(Deferred):  # the tick ends here: it backs off
        await bench.send()
    assert bench.states() == ["downloading"]
    server.down = False
    bench.dev.hold_until = 0.0
    await bench.send()
    assert server.states() == ["downloading"] and bench.dev.outbox is None


async def test_a_cancel_in_the_answer_to_a_report_is_heard(
    bench: Bench, server: StubServer
) -> None:
    bench.hand(update_job())
    server.cancel.add("job-1")
    await bench.send()
    await bench.send()
    assert server.states() == ["downloading", "canceled"]
    assert bench.dev.update is None


async def test_a_closed_job_drops_its_reports_and_stops_an_untouched_update(
    bench: Bench, server: StubServer
) -> None:
    bench.hand(update_job())
    bench.step()
    server.closed.add("job-1")
    await bench.send()
    assert server.states() == ["downloading"]  # "downloaded" was dropped unsent
    assert bench.dev.outbox is None and bench.dev.update is None and bench.dev.job is None
    assert bench.world.stats.jobs["closed"] == 1
