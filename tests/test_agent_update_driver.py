"""The update driver against a fake OTA server (docs/ota.md) and directory slots in a tmp dir.

Power loss is a hook that raises at a checkpoint; a "restart" is a new worker (new slots
handler, same state dir and slots dir), as after a real one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import itertools
import json
import logging
import random
import sys
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleetkeeper.agent import Agent, AgentConfig, EnrollOptions, StateDir
from fleetkeeper.agent.commands import CommandRunner
from fleetkeeper.agent.config import UpdateSettings
from fleetkeeper.agent.update import DirectorySlots, Readings, SlotHandler, UpdateWorker
from fleetkeeper.agent.update.machine import UpdateState
from fleetkeeper.clock import FakeClock
from fleetkeeper.protocol import DeviceClient, Job
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.protocol.messages import read_job
from test_protocol_client import SERVER, FakeServer, problem

PROGRESS = ["notified", "downloading", "downloaded", "installing", "rebooting", "verifying"]
FINAL = {"succeeded", "failed", "rolled_back", "canceled"}
CHUNK = 1024


class PowerLoss(Exception):
    """The power went: raised from a hook or a sleep."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PrivateKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, sha256: str, version: str) -> str:
    return b64(key.sign(f"artifact:{sha256}:{version}".encode()))


class Body(httpx.AsyncByteStream):
    """An artifact's bytes in chunks; the connection breaks after `cut` bytes, if given."""

    def __init__(self, data: bytes, cut: int | None) -> None:
        self.data = data
        self.cut = cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), CHUNK):
            if self.cut is not None and start >= self.cut:
                raise httpx.ReadError("connection reset by peer")
            await asyncio.sleep(0)  # a network read lets others run; no time passes
            yield self.data[start : start + CHUNK]


class OtaServer(FakeServer):
    """FakeServer plus jobs, job reports, artifacts and release keys, as docs/ota.md says."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.release: list[dict[str, str]] = []
        self.reports: list[tuple[str, dict[str, Any]]] = []  # accepted, in order
        self.impossible: list[tuple[str, str, str]] = []  # (job, from, to) refused
        self.ranges: list[str | None] = []
        self.served = 0  # artifact bytes sent
        self.cut: int | None = None  # break the next download after this many bytes
        self.short: int | None = None  # end the next download cleanly after this many bytes
        self.ignore_range = False
        self.incompatible: set[str] = set()
        self.cancel_on: str | None = None  # ask for a cancel when this state is reported
        self.close_on: str | None = None  # end the job once this state is reported

    def add_release_key(self, key: Ed25519PrivateKey, name: str = "server") -> None:
        self.release.append({"id": key_id(key), "name": name, "public_key": b64(raw_public(key))})

    def publish(
        self, data: bytes, version: str, key: Ed25519PrivateKey | None, **meta: Any
    ) -> dict[str, Any]:
        artifact_id = f"art-{len(self.blobs) + 1}"
        sha = hashlib.sha256(data).hexdigest()
        doc = {
            "id": artifact_id,
            "name": "thermo-fw",
            "version": version,
            "kind": "full",
            "base_version": None,
            "size": len(data),
            "sha256": sha,
            "signature": sign(key, sha, version) if key else None,
            "key_id": key_id(key) if key else None,
            "url": f"/device/v1/artifacts/{artifact_id}",
        } | meta
        self.blobs[artifact_id] = data
        self.meta[artifact_id] = doc
        return doc

    def add_job(self, kind: str = "update", **fields: Any) -> Job:
        job_id = f"job-{len(self.jobs) + 1}"
        doc = {
            "id": job_id,
            "deployment_id": "dep-1",
            "kind": kind,
            "state": "rolling_back" if kind == "rollback" else "notified",
            "attempt": 1,
            "cancel": False,
            "artifact": None,
            "rollback_to": None,
            "command": None,
            "preconditions": {"min_battery": 20, "or_on_power": True, "not_busy": True},
            "timeouts": {"download": 1800, "install": 1800, "reboot": 600, "verify": 600},
            "not_after": None,
            "deliver": True,
        } | fields
        self.jobs[job_id] = doc
        return read_job(doc)

    def finals(self, job_id: str) -> list[dict[str, Any]]:
        return [body for jid, body in self.reports if jid == job_id and body["state"] in FINAL]

    def states(self, job_id: str) -> list[str]:
        return [body["state"] for jid, body in self.reports if jid == job_id]

    def authenticated(self, path: str, request: httpx.Request) -> httpx.Response:
        if path == "/checkin":
            jobs = [
                {k: v for k, v in doc.items() if k != "deliver"}
                for doc in self.jobs.values()
                if doc["deliver"]
            ]
            commands, self.pending = self.pending, []
            body = {"state": self.state, "commands": commands, "next_checkin": 30, "jobs": jobs}
            return httpx.Response(200, json=body)
        if path.startswith("/jobs/"):
            return self.report(path.removeprefix("/jobs/"), json.loads(request.content))
        if path.startswith("/artifacts/"):
            return self.serve(path.removeprefix("/artifacts/"), request)
        if path == "/release-keys":
            return httpx.Response(200, json={"keys": self.release})
        return super().authenticated(path, request)

    def report(self, job_id: str, body: dict[str, Any]) -> httpx.Response:
        job = self.jobs.get(job_id)
        if job is None:
            return problem(404, "unknown_job")
        if "version" in body:
            self.inventory["firmware_version"] = body["version"]  # whatever the outcome
        if job["state"] in FINAL or job.get("closed"):
            return problem(409, "job_closed", f"the job is {job['state']}")
        current, wanted = job["state"], body["state"]
        if wanted in ("failed", "rolled_back") and not body.get("reason"):
            return problem(422, "invalid", "a reason is required")
        if not self.allowed(current, wanted):
            self.impossible.append((job_id, current, wanted))
            return problem(409, "invalid_transition", f"{current} cannot become {wanted}")
        if body.get("cancel_refused"):
            job["cancel"] = False
        job["state"], job["deliver"] = wanted, False
        self.reports.append((job_id, body))
        if wanted == self.cancel_on:
            job["cancel"] = job["deliver"] = True
        if wanted == self.close_on:
            job["closed"] = True
        return httpx.Response(200, json={"state": wanted, "cancel": job["cancel"]})

    @staticmethod
    def allowed(current: str, wanted: str) -> bool:
        # Steps may be skipped, never repeated backwards (the same step again is progress).
        if wanted in PROGRESS:
            return current in PROGRESS and PROGRESS.index(wanted) >= PROGRESS.index(current)
        if wanted == "canceled":
            return current in ("notified", "downloading", "downloaded")
        if wanted == "rolled_back":
            return current in ("installing", "rebooting", "verifying", "rolling_back")
        if wanted == "succeeded":
            return current != "rolling_back"
        return wanted == "failed"

    def serve(self, artifact_id: str, request: httpx.Request) -> httpx.Response:
        data = self.blobs.get(artifact_id)
        if data is None:
            return problem(404, "unknown_artifact")
        if artifact_id in self.incompatible:
            return problem(403, "incompatible", "not for this device's model")
        meta = self.meta[artifact_id]
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": f'"{meta["sha256"]}"',
            "X-Artifact-Sha256": meta["sha256"],
            "X-Artifact-Signature": meta["signature"] or "",
            "X-Artifact-Key-Id": meta["key_id"] or "",
            "X-Artifact-Version": meta["version"],
        }
        asked = request.headers.get("Range")
        self.ranges.append(asked)
        start, status = 0, 200
        if asked and not self.ignore_range:
            start, status = int(asked.removeprefix("bytes=").rstrip("-")), 206
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return httpx.Response(416, headers=headers)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.short is not None:
            body, self.short = body[: self.short], None
        cut, self.cut = self.cut, None
        self.served += len(body) if cut is None else min(len(body), -(-cut // CHUNK) * CHUNK)
        headers["Content-Length"] = str(len(body))
        return httpx.Response(status, headers=headers, stream=Body(body, cut))


class FakeTime:
    """Monotonic time that only moves when the driver sleeps; a sleep may cut the power."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.power_loss_at_sleep: int | None = None

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.power_loss_at_sleep == len(self.sleeps):
            raise PowerLoss("during a sleep")
        self.now += seconds
        await asyncio.sleep(0)


class At:
    """A hook that runs `action` the first time the driver passes `checkpoint`."""

    def __init__(self, checkpoint: str, action: Callable[[], object]) -> None:
        self.checkpoint = checkpoint
        self.action: Callable[[], object] | None = action

    def __call__(self, checkpoint: str) -> None:
        if checkpoint == self.checkpoint and self.action is not None:
            action, self.action = self.action, None
            action()


class PowerCut:
    """A hook that cuts the power the `nth` time the driver passes `checkpoint`."""

    def __init__(self, checkpoint: str, nth: int = 1) -> None:
        self.checkpoint = checkpoint
        self.left = nth
        self.seen: list[str] = []

    def __call__(self, checkpoint: str) -> None:
        self.seen.append(checkpoint)
        if checkpoint == self.checkpoint:
            self.left -= 1
            if self.left == 0:
                raise PowerLoss(checkpoint)


@dataclass
class Device:
    """A device in a line: its state dir, its slots, its client, its clocks."""

    root: Path
    server: OtaServer
    release_key: Ed25519PrivateKey
    update: UpdateSettings
    readings: Readings = field(default_factory=lambda: Readings(battery=80, free_storage=10**9))
    time: FakeTime = field(default_factory=FakeTime)
    clock: FakeClock = field(default_factory=FakeClock)
    client: DeviceClient | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    def slots(self) -> DirectorySlots:
        return DirectorySlots(self.slots_dir, initial_version="2.3.0")

    def boot_state(self) -> dict[str, Any]:
        return self.slots().state()

    def worker(
        self,
        *,
        hook: Callable[[str], None] | None = None,
        slots: SlotHandler | None = None,
        handler: bool = True,
        config: AgentConfig | None = None,
    ) -> UpdateWorker:
        if self.client is None:
            self.client = self.server.client()
            self.client.device_id = self.server.register(self.client.public_key)
        config = config or AgentConfig(firmware_version="2.3.0", update=self.update)
        return UpdateWorker(
            self.client,
            self.state_dir,
            config,
            slots=slots or (self.slots() if handler else None),
            runner=CommandRunner(config, self.clock),
            connectivity=Connectivity(SERVER, logging.getLogger("test")),
            clock=self.clock,
            sleep=self.time.sleep,
            monotonic=self.time.monotonic,
            rng=random.Random(7),
            measure=lambda: self.readings,
            hook=hook,
        )

    async def started(self, **kwargs: Any) -> UpdateWorker:
        worker = self.worker(**kwargs)
        await worker.start()
        return worker

    async def run(self, job: Job, **kwargs: Any) -> UpdateState:
        worker = await self.started(**kwargs)
        worker.offer([job])
        return await worker.run_next()

    def downloads(self) -> list[Path]:
        return sorted((self.state_dir / "update" / "downloads").glob("*"))

    def update_job(self, data: bytes = b"", version: str = "2.4.0", **fields: Any) -> Job:
        artifact = self.server.publish(data or FIRMWARE, version, self.release_key)
        return self.server.add_job(artifact=artifact, **fields)


FIRMWARE = bytes(range(256)) * 200  # 51,200 bytes: 50 chunks


def make_device(tmp_path: Path) -> Device:
    """A device on slot a (2.3.0) that trusts the fake server's release key."""
    server = OtaServer()
    release_key = Ed25519PrivateKey.generate()
    server.add_release_key(release_key)
    update = UpdateSettings(
        handler="directory",
        slots_dir=tmp_path / "slots",
        trusted_keys=(b64(raw_public(release_key)),),
    )
    return Device(tmp_path, server, release_key, update)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return make_device(tmp_path)


def check_clean(device: Device) -> None:
    assert not (device.state_dir / "update" / "job.json").exists()
    assert device.downloads() == []
    assert device.server.impossible == []


# --- the happy path -----------------------------------------------------------------------


async def test_an_update_lands_in_the_other_slot_and_is_committed(device: Device) -> None:
    job = device.update_job()
    final = await device.run(job)
    assert final.result == "succeeded"
    assert list(dict.fromkeys(device.server.states(job.id))) == [
        "downloading",
        "downloaded",
        "installing",
        "rebooting",
        "verifying",
        "succeeded",
    ]
    assert device.server.finals(job.id) == [{"state": "succeeded", "version": "2.4.0"}]
    assert (device.slots_dir / "b" / "payload").read_bytes() == FIRMWARE
    assert (device.slots_dir / "b" / "VERSION").read_text().strip() == "2.4.0"
    assert (device.slots_dir / "a" / "VERSION").read_text().strip() == "2.3.0"
    boot = device.boot_state()
    assert (boot["running"], boot["committed"], boot["trial"]) == ("b", "b", False)
    check_clean(device)


async def test_progress_is_reported_every_ten_percent(device: Device) -> None:
    job = device.update_job()
    await device.run(job)
    progress = [
        b.get("progress") for jid, b in device.server.reports if b["state"] == "downloading"
    ]
    assert progress[0] == 0 and progress[1:] == sorted(progress[1:])
    assert all(b - a >= 10 for a, b in itertools.pairwise(progress))
    assert 1 < len(progress) <= 10


async def test_a_tar_artifact_is_unpacked_into_the_slot(device: Device) -> None:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as archive:
        info = tarfile.TarInfo("bin/app")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
    job = device.update_job(packed.getvalue())
    await device.run(job)
    assert (device.slots_dir / "b" / "bin" / "app").read_bytes() == b"hello"


async def test_the_worker_reports_the_running_version(device: Device) -> None:
    worker = await device.started()
    assert worker.running_version == "2.3.0"
    worker.offer([device.update_job()])
    await worker.run_next()
    assert worker.running_version == "2.4.0"


# --- downloads ----------------------------------------------------------------------------


async def test_a_broken_download_resumes_where_it_broke(device: Device) -> None:
    job = device.update_job()
    device.server.cut = 20 * CHUNK
    final = await device.run(job)
    assert final.result == "succeeded"
    assert device.server.ranges == [None, f"bytes={20 * CHUNK}-"]
    assert device.server.served == len(FIRMWARE)  # nothing fetched twice
    assert len(device.time.sleeps) == 1  # one backoff between the attempts


async def test_an_answer_that_ends_early_is_continued_after_a_backoff(device: Device) -> None:
    job = device.update_job()
    device.server.short = 5 * CHUNK
    assert (await device.run(job)).result == "succeeded"
    assert device.server.ranges == [None, f"bytes={5 * CHUNK}-"]
    assert len(device.time.sleeps) == 1


async def test_a_download_cut_by_a_restart_resumes_from_the_partial_file(device: Device) -> None:
    job = device.update_job()
    worker = await device.started(hook=PowerCut("sent:downloading", nth=2))
    worker.offer([job])
    with pytest.raises(PowerLoss):
        await worker.run_next()
    [partial] = device.downloads()
    kept = partial.stat().st_size
    assert 0 < kept < len(FIRMWARE)
    final = await device.run(job)
    assert final.result == "succeeded"
    assert device.server.ranges[-1] == f"bytes={kept}-"
    check_clean(device)


async def test_a_server_ignoring_the_range_still_yields_the_right_bytes(device: Device) -> None:
    job = device.update_job()
    device.server.cut = 10 * CHUNK
    device.server.ignore_range = True
    final = await device.run(job)
    assert final.result == "succeeded"
    assert (device.slots_dir / "b" / "payload").read_bytes() == FIRMWARE


async def test_a_download_that_never_gets_through_fails_with_connection_lost(
    device: Device,
) -> None:
    job = device.update_job(timeouts={"download": 60})
    device.server.script(
        f"/artifacts/{job.artifact.id}",  # type: ignore[union-attr]
        *[httpx.ConnectError("down")] * 20,
    )
    final = await device.run(job)
    [report] = device.server.finals(job.id)
    assert (final.result, report["reason"]) == ("failed", "connection_lost")
    assert device.time.now >= 60
    check_clean(device)


async def test_a_missing_artifact_fails_with_invalid_uri(device: Device) -> None:
    job = device.update_job()
    del device.server.blobs[job.artifact.id]  # type: ignore[union-attr]
    await device.run(job)
    assert device.server.finals(job.id)[0]["reason"] == "invalid_uri"


async def test_an_artifact_for_another_model_fails_as_unsupported(device: Device) -> None:
    job = device.update_job()
    device.server.incompatible.add(job.artifact.id)  # type: ignore[union-attr]
    await device.run(job)
    assert device.server.finals(job.id)[0]["reason"] == "unsupported_package"


async def test_a_quarantined_device_keeps_its_reports_and_downloads_until_let_go(
    device: Device,
) -> None:
    job = device.update_job()
    quarantined = problem(403, "device_quarantined")
    device.server.script(f"/jobs/{job.id}", quarantined, quarantined)
    device.server.script(f"/artifacts/{job.artifact.id}", quarantined)  # type: ignore[union-attr]
    assert (await device.run(job)).result == "succeeded"
    assert device.server.states(job.id)[0] == "downloading"
    assert device.server.impossible == []


# --- integrity and trust ------------------------------------------------------------------


async def test_a_download_whose_sha256_differs_fails_and_is_deleted(device: Device) -> None:
    promised = hashlib.sha256(b"something else").hexdigest()
    artifact = device.server.publish(FIRMWARE, "2.4.0", None)
    artifact |= {
        "sha256": promised,
        "signature": sign(device.release_key, promised, "2.4.0"),
        "key_id": key_id(device.release_key),
    }
    job = device.server.add_job(artifact=artifact)
    await device.run(job)
    [report] = device.server.finals(job.id)
    assert (report["state"], report["reason"]) == ("failed", "integrity_check_failure")
    assert "sha256" in report["detail"] and report["version"] == "2.3.0"
    assert not (device.slots_dir / "b" / "payload").exists()
    check_clean(device)


@pytest.mark.parametrize("flaw", ["bad_signature", "unsigned", "untrusted_key", "other_version"])
async def test_an_artifact_without_a_trusted_signature_is_refused_before_downloading(
    device: Device, flaw: str
) -> None:
    stranger = Ed25519PrivateKey.generate()
    artifact = device.server.publish(FIRMWARE, "2.4.0", device.release_key)
    if flaw == "bad_signature":
        artifact["signature"] = b64(b"\x00" * 64)
    elif flaw == "unsigned":
        artifact["signature"] = artifact["key_id"] = None
    elif flaw == "untrusted_key":
        artifact |= {"signature": sign(stranger, artifact["sha256"], "2.4.0")}
        artifact |= {"key_id": key_id(stranger)}
    else:  # an old signed image replayed as a newer release
        artifact["signature"] = sign(device.release_key, artifact["sha256"], "2.3.9")
    job = device.server.add_job(artifact=artifact)
    await device.run(job)
    [report] = device.server.finals(job.id)
    assert (report["state"], report["reason"]) == ("failed", "signature_invalid")
    assert device.server.ranges == []
    check_clean(device)


async def test_without_configured_keys_the_servers_keys_are_pinned_on_first_use(
    device: Device,
) -> None:
    device.update = replace(device.update, trusted_keys=())
    first = device.update_job()
    assert (await device.run(first)).result == "succeeded"
    pinned = json.loads((device.state_dir / "update" / "release-keys.json").read_text())
    assert [k["id"] for k in pinned["keys"]] == [key_id(device.release_key)]
    # A key the server adds later is not trusted: the pin holds.
    newcomer = Ed25519PrivateKey.generate()
    device.server.add_release_key(newcomer, "new")
    artifact = device.server.publish(FIRMWARE, "2.5.0", newcomer)
    second = device.server.add_job(artifact=artifact)
    await device.run(second)
    assert device.server.finals(second.id)[0]["reason"] == "signature_invalid"
    assert device.server.paths().count("/release-keys") == 1


# --- preconditions ------------------------------------------------------------------------


async def test_a_low_battery_off_power_fails_the_precondition_and_downloads_nothing(
    device: Device,
) -> None:
    device.readings = Readings(battery=12, on_power=False)
    job = device.update_job()
    await device.run(job)
    [report] = device.server.finals(job.id)
    assert (report["reason"], report["version"]) == ("precondition_failed", "2.3.0")
    assert "battery at 12 %" in report["detail"]
    assert device.server.ranges == []


async def test_too_little_storage_for_the_download_fails_with_not_enough_storage(
    device: Device,
) -> None:
    device.readings = Readings(free_storage=1000)
    job = device.update_job()
    await device.run(job)
    assert device.server.finals(job.id)[0]["reason"] == "not_enough_storage"


async def test_an_update_without_an_update_handler_fails_unsupported(device: Device) -> None:
    job = device.update_job()
    await device.run(job, config=AgentConfig(firmware_version="1.0"), handler=False)
    [report] = device.server.finals(job.id)
    assert (report["reason"], report["version"]) == ("unsupported_package", "1.0")


# --- health and rollback ------------------------------------------------------------------


def python(code: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code, *args)


async def test_a_failing_health_check_rolls_back_to_the_committed_slot(device: Device) -> None:
    device.update = replace(device.update, health_check=python("raise SystemExit(3)"))
    job = device.update_job()
    final = await device.run(job)
    assert final.result == "rolled_back"
    [report] = device.server.finals(job.id)
    assert (report["state"], report["reason"], report["version"]) == (
        "rolled_back",
        "health_check_failed",
        "2.3.0",
    )
    assert "exit status 3" in report["detail"]
    boot = device.boot_state()
    assert (boot["running"], boot["committed"], boot["trial"]) == ("a", "a", False)
    check_clean(device)


async def test_the_health_check_is_told_the_version(device: Device) -> None:
    code = "import sys; raise SystemExit(sys.argv[1] != '2.4.0')"
    device.update = replace(device.update, health_check=python(code, "{version}"))
    assert (await device.run(device.update_job())).result == "succeeded"


async def test_a_new_slot_that_cannot_reach_the_server_is_rolled_back(device: Device) -> None:
    job = device.update_job(timeouts={"verify": 30})
    outage = [httpx.ConnectError("down")] * 12
    unreachable = At("health", lambda: device.server.script(f"/jobs/{job.id}", *outage))
    final = await device.run(job, hook=unreachable)
    assert final.result == "rolled_back"
    [report] = device.server.finals(job.id)
    assert report["reason"] == "health_check_failed" and "reached" in report["detail"]
    assert "verifying" not in device.server.states(job.id)  # replaced by the final report


# --- power loss ---------------------------------------------------------------------------

CHECKPOINTS = [
    "check",
    "check:done",
    "download",
    "sent:downloading",
    "download:done",
    "verify",
    "verify:done",
    "downloaded",
    "sent:downloaded",
    "downloaded:done",
    "install",
    "sent:installing",
    "install:done",
    "switch",
    "sent:rebooting",
    "switch:done",
    "boot",
    "boot:done",
    "health",
    "sent:verifying",
    "health:done",
    "commit",
    "commit:done",
    "done",
    "sent:succeeded",
]
# Past the first boot of the new slot and before its commit, a restart is a second boot on
# trial: the bootloader returns to the committed slot.
SECOND_BOOT = {"boot:done", "health", "sent:verifying", "health:done", "commit"}


async def test_the_checkpoints_cover_every_point_of_an_update(device: Device) -> None:
    recorder = PowerCut("never")
    await device.run(device.update_job(), hook=recorder)
    assert list(dict.fromkeys(recorder.seen)) == CHECKPOINTS


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
async def test_a_power_loss_at_any_point_ends_in_a_consistent_device(
    device: Device, checkpoint: str
) -> None:
    job = device.update_job()
    first = await device.started(hook=PowerCut(checkpoint))
    first.offer([job])
    with pytest.raises(PowerLoss):
        await first.run_next()

    second = await device.started()
    second.offer([job])  # the server may well repeat it: it is recognised
    final = await second.run_next()

    expected = "rolled_back" if checkpoint in SECOND_BOOT else "succeeded"
    assert final.result == expected
    assert device.server.jobs[job.id]["state"] == expected
    assert len(device.server.finals(job.id)) == 1
    running = "b" if expected == "succeeded" else "a"
    boot = device.boot_state()
    assert (boot["running"], boot["committed"], boot["trial"]) == (running, running, False)
    assert device.server.finals(job.id)[0]["version"] == ("2.4.0" if running == "b" else "2.3.0")
    check_clean(device)


async def test_a_final_report_the_network_ate_is_sent_after_a_restart(device: Device) -> None:
    job = device.update_job()

    def network_down_at_the_end() -> None:
        device.server.script(f"/jobs/{job.id}", httpx.ConnectError("down"))
        device.time.power_loss_at_sleep = len(device.time.sleeps) + 1  # in the backoff

    with pytest.raises(PowerLoss):
        await device.run(job, hook=At("done", network_down_at_the_end))
    assert device.server.finals(job.id) == []
    assert (await device.run(job)).result == "succeeded"
    assert device.server.finals(job.id) == [{"state": "succeeded", "version": "2.4.0"}]


# --- cancel -------------------------------------------------------------------------------


async def test_a_cancel_at_check_in_during_the_download_is_accepted(device: Device) -> None:
    job = device.update_job()
    check_in = At("sent:downloading", lambda: worker.offer([replace(job, cancel=True)]))
    worker = await device.started(hook=check_in)
    worker.offer([job])
    final = await worker.run_next()
    assert final.result == "canceled"
    assert device.server.finals(job.id) == [{"state": "canceled", "version": "2.3.0"}]
    assert not (device.slots_dir / "b" / "payload").exists()
    check_clean(device)


async def test_a_cancel_answered_before_installing_is_accepted(device: Device) -> None:
    device.server.cancel_on = "downloaded"
    job = device.update_job()
    assert (await device.run(job)).result == "canceled"
    assert "installing" not in device.server.states(job.id)
    assert device.boot_state()["running"] == "a"


async def test_a_cancel_once_installing_is_refused_and_the_update_finishes(
    device: Device,
) -> None:
    device.server.cancel_on = "installing"
    job = device.update_job()
    assert (await device.run(job)).result == "succeeded"
    refused = [b["state"] for jid, b in device.server.reports if b.get("cancel_refused")]
    assert refused == ["rebooting"]
    assert device.server.jobs[job.id]["cancel"] is False


# --- the server ending the job ------------------------------------------------------------


async def test_a_closed_job_stops_at_once_and_cleans_up(device: Device) -> None:
    device.server.close_on = "downloading"
    job = device.update_job()
    worker = await device.started()
    worker.offer([job])
    final = await worker.run_next()
    assert final.closed and device.server.states(job.id) == ["downloading"]
    assert device.boot_state()["running"] == "a"
    check_clean(device)
    worker.offer([job])
    assert worker.pending is None  # finished here: never started twice


async def test_a_job_closed_after_the_switch_returns_to_the_committed_slot(
    device: Device,
) -> None:
    device.server.close_on = "rebooting"
    job = device.update_job()
    final = await device.run(job)
    assert final.closed and final.result == "rolled_back"
    assert device.server.states(job.id)[-1] == "rebooting"
    boot = device.boot_state()
    assert (boot["running"], boot["committed"]) == ("a", "a")


async def test_a_report_the_server_finds_impossible_is_dropped_and_the_job_goes_on(
    device: Device,
) -> None:
    job = device.update_job()
    device.server.script(f"/jobs/{job.id}", problem(409, "invalid_transition"))
    assert (await device.run(job)).result == "succeeded"
    assert device.server.reports[0][1].get("progress") != 0  # the refused one is not resent


async def test_a_job_the_server_does_not_know_is_dropped(device: Device) -> None:
    job = device.update_job()
    del device.server.jobs[job.id]
    final = await device.run(job)
    assert final.closed and device.server.reports == [] and device.server.ranges == []
    check_clean(device)


# --- one job at a time, never twice -------------------------------------------------------


async def test_a_finished_job_is_never_started_again_but_a_retried_attempt_is(
    device: Device,
) -> None:
    job = device.update_job()
    worker = await device.started()
    worker.offer([job])
    await worker.run_next()
    restarted = await device.started()
    restarted.offer([job])
    assert restarted.pending is None
    retried = replace(job, attempt=2)
    restarted.offer([retried])
    assert restarted.pending == retried


async def test_a_second_job_waits_while_one_is_under_way(device: Device) -> None:
    first, second = device.update_job(), device.update_job(version="2.5.0")
    offered_meanwhile: list[Job | None] = []

    def check_in() -> None:
        worker.offer([second])
        offered_meanwhile.append(worker.pending)

    worker = await device.started(hook=At("install", check_in))
    worker.offer([first])
    await worker.run_next()
    assert offered_meanwhile == [None]
    worker.offer([second])
    assert worker.pending == second


# --- rollback and command jobs ------------------------------------------------------------


async def test_a_rollback_job_boots_the_previous_version_and_commits_it(device: Device) -> None:
    await device.run(device.update_job())
    job = device.server.add_job("rollback", rollback_to="2.3.0")
    final = await device.run(job)
    assert final.result == "rolled_back"
    [report] = device.server.finals(job.id)
    assert (report["state"], report["version"]) == ("rolled_back", "2.3.0")
    boot = device.boot_state()
    assert (boot["running"], boot["committed"], boot["trial"]) == ("a", "a", False)


async def test_a_rollback_to_a_version_no_slot_holds_is_unavailable(device: Device) -> None:
    job = device.server.add_job("rollback", rollback_to="1.9.0")
    await device.run(job)
    [report] = device.server.finals(job.id)
    assert (report["state"], report["reason"], report["version"]) == (
        "failed",
        "rollback_unavailable",
        "2.3.0",
    )
    assert "slot b holds no known version" in report["detail"]


async def test_a_command_job_runs_through_the_command_runner(device: Device) -> None:
    ok = device.server.add_job("command", command={"name": "ping", "args": {}})
    bad = device.server.add_job("command", command={"name": "format_disk", "args": {}})
    await device.run(ok)
    await device.run(bad)
    assert device.server.finals(ok.id)[0]["state"] == "succeeded"
    [failed] = device.server.finals(bad.id)
    assert (failed["state"], failed["reason"]) == ("failed", "command_failed")
    assert "unknown_command" in failed["detail"]


async def test_a_reboot_command_cut_short_by_the_reboot_succeeded(device: Device) -> None:
    job = device.server.add_job("command", command={"name": "reboot", "args": {}})
    first = await device.started(hook=PowerCut("run"))
    first.offer([job])
    with pytest.raises(PowerLoss):
        await first.run_next()
    await device.run(job)
    assert device.server.finals(job.id)[0]["detail"] == "the device restarted"


# --- the agent ----------------------------------------------------------------------------


async def test_the_agent_takes_jobs_from_check_in_and_reports_the_new_firmware(
    device: Device,
) -> None:
    state = StateDir(device.state_dir)
    agent = Agent(
        SERVER,
        state,
        AgentConfig(firmware_version="2.3.0", update=device.update, checkin_wait=0),
        enroll=EnrollOptions(serial="SN-1", model="thermo-v2", provisioning_token="fkp_t"),
        transport=device.server.transport(),
        clock=device.clock,
        sleep=device.time.sleep,
        monotonic=device.time.monotonic,
        facts=lambda: {"hostname": "box"},
        slots=device.slots(),
    )
    await agent.start()
    assert device.server.inventory["firmware_version"] == "2.3.0"  # the active slot's
    job = device.update_job()
    await agent.checkin_once()
    assert agent.updates.pending == job
    final = await agent.run_next_job()
    await agent.close()
    assert final.result == "succeeded"
    assert device.server.inventory["firmware_version"] == "2.4.0"
    assert agent.inventory()["firmware_version"] == "2.4.0"
