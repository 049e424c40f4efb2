"""The answers of the device API as plain dataclasses, and how they are read from JSON.

Readers accept fields they do not know (a newer server may add some) and raise `Unavailable`
for an answer that lacks what the protocol promises: that is a broken proxy or server, and
trying again later is the best a device can do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetkeeper.protocol.errors import Unavailable


@dataclass(frozen=True)
class Enrollment:
    device_id: str
    state: str
    certificate: str
    ca_certificate: str


@dataclass(frozen=True)
class Command:
    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    timeout: float = 30.0
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ArtifactRef:
    """What a job installs: enough to download, verify and describe it (docs/ota.md)."""

    id: str
    version: str
    sha256: str
    signature: str
    key_id: str
    url: str
    size: int = 0
    name: str = ""
    kind: str = "full"
    base_version: str | None = None


@dataclass(frozen=True)
class Job:
    """One execution of a deployment, as handed out at check-in (docs/ota.md, "Jobs")."""

    id: str
    deployment_id: str
    kind: str  # update, rollback, command
    state: str
    attempt: int = 1
    cancel: bool = False
    artifact: ArtifactRef | None = None
    rollback_to: str | None = None
    command: Command | None = None
    preconditions: dict[str, Any] = field(default_factory=dict)
    timeouts: dict[str, float] = field(default_factory=dict)
    not_after: datetime | None = None


@dataclass(frozen=True)
class JobAnswer:
    state: str
    cancel: bool = False


@dataclass(frozen=True)
class ReleaseKey:
    id: str
    public_key: str
    name: str = ""


@dataclass(frozen=True)
class CheckinResult:
    state: str
    commands: tuple[Command, ...] = ()
    next_checkin: float = 30.0
    wipe: bool = False
    jobs: tuple[Job, ...] = ()


@dataclass(frozen=True)
class Point:
    """One telemetry value; `ts` in Unix seconds."""

    metric: str
    value: float
    ts: float

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "ts": self.ts}


@dataclass(frozen=True)
class Rejection:
    index: int
    reason: str


@dataclass(frozen=True)
class TelemetryResult:
    accepted: int
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True)
class Location:
    lat: float
    lon: float
    alt: float | None = None
    accuracy: float | None = None

    def to_json(self) -> dict[str, float]:
        out = {"lat": self.lat, "lon": self.lon, "alt": self.alt, "accuracy": self.accuracy}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class DeviceView:
    """The device as the server sees it (the answer to an inventory report)."""

    device_id: str
    serial: str
    state: str
    firmware_version: str | None
    attributes: dict[str, Any]
    location: dict[str, Any] | None


@dataclass(frozen=True)
class LogUpload:
    id: str
    bytes: int


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Unavailable(f"the server's {what} answer is not a JSON object")
    return body


def _text(body: dict[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise Unavailable(f"the server's {what} answer has no {key!r}")
    return value


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def read_enrollment(body: Any) -> Enrollment:
    data = _object(body, "enrolment")
    return Enrollment(
        device_id=_text(data, "device_id", "enrolment"),
        state=str(data.get("state") or "pending"),
        certificate=str(data.get("certificate") or ""),
        ca_certificate=str(data.get("ca_certificate") or ""),
    )


def read_command(body: Any) -> Command:
    data = _object(body, "command")
    args = data.get("args")
    return Command(
        id=_text(data, "id", "command"),
        name=_text(data, "name", "command"),
        args=args if isinstance(args, dict) else {},
        timeout=_number(data.get("timeout"), 30.0),
        expires_at=_time(data.get("expires_at")),
    )


def read_checkin(body: Any) -> CheckinResult:
    data = _object(body, "check-in")
    commands = data.get("commands") or []
    if not isinstance(commands, list):
        raise Unavailable("the server's check-in answer has commands that are not a list")
    jobs = data.get("jobs") or []
    if not isinstance(jobs, list):
        raise Unavailable("the server's check-in answer has jobs that are not a list")
    return CheckinResult(
        state=_text(data, "state", "check-in"),
        commands=tuple(read_command(c) for c in commands),
        next_checkin=max(0.0, _number(data.get("next_checkin"), 30.0)),
        wipe=data.get("wipe") is True,
        jobs=tuple(read_job(j) for j in jobs),
    )


def read_artifact(body: Any) -> ArtifactRef:
    data = _object(body, "artifact")
    base = data.get("base_version")
    return ArtifactRef(
        id=_text(data, "id", "artifact"),
        version=_text(data, "version", "artifact"),
        sha256=_text(data, "sha256", "artifact").lower(),
        signature=str(data.get("signature") or ""),
        key_id=str(data.get("key_id") or ""),
        url=_text(data, "url", "artifact"),
        size=int(_number(data.get("size"), 0)),
        name=str(data.get("name") or ""),
        kind=str(data.get("kind") or "full"),
        base_version=base if isinstance(base, str) else None,
    )


def read_job(body: Any) -> Job:
    data = _object(body, "job")
    artifact = data.get("artifact")
    command = data.get("command")
    rollback_to = data.get("rollback_to")
    pre = data.get("preconditions")
    timeouts = data.get("timeouts")
    job_id = _text(data, "id", "job")
    return Job(
        id=job_id,
        deployment_id=str(data.get("deployment_id") or ""),
        kind=_text(data, "kind", "job"),
        state=str(data.get("state") or "notified"),
        attempt=int(_number(data.get("attempt"), 1)),
        cancel=data.get("cancel") is True,
        artifact=read_artifact(artifact) if isinstance(artifact, dict) else None,
        rollback_to=rollback_to if isinstance(rollback_to, str) else None,
        command=read_command({"id": job_id, **command}) if isinstance(command, dict) else None,
        preconditions=pre if isinstance(pre, dict) else {},
        timeouts={
            str(k): _number(v, 0.0)
            for k, v in (timeouts.items() if isinstance(timeouts, dict) else ())
        },
        not_after=_time(data.get("not_after")),
    )


def read_job_answer(body: Any) -> JobAnswer:
    data = _object(body, "job report")
    return JobAnswer(state=_text(data, "state", "job report"), cancel=data.get("cancel") is True)


def read_release_keys(body: Any) -> tuple[ReleaseKey, ...]:
    data = _object(body, "release keys")
    keys = data.get("keys")
    if not isinstance(keys, list):
        raise Unavailable("the server's release keys answer has no 'keys' list")
    return tuple(
        ReleaseKey(
            id=str(k.get("id") or ""),
            public_key=str(k.get("public_key") or ""),
            name=str(k.get("name") or ""),
        )
        for k in keys
        if isinstance(k, dict) and k.get("public_key")
    )


def read_telemetry(body: Any) -> TelemetryResult:
    data = _object(body, "telemetry")
    rejected = data.get("rejected") or []
    return TelemetryResult(
        accepted=int(_number(data.get("accepted"), 0)),
        rejected=tuple(
            Rejection(int(_number(r.get("index"), -1)), str(r.get("reason") or ""))
            for r in rejected
            if isinstance(r, dict)
        )
        if isinstance(rejected, list)
        else (),
    )


def read_device(body: Any) -> DeviceView:
    data = _object(body, "inventory")
    attributes = data.get("attributes")
    location = data.get("location")
    firmware = data.get("firmware_version")
    return DeviceView(
        device_id=_text(data, "device_id", "inventory"),
        serial=str(data.get("serial") or ""),
        state=str(data.get("state") or ""),
        firmware_version=firmware if isinstance(firmware, str) else None,
        attributes=attributes if isinstance(attributes, dict) else {},
        location=location if isinstance(location, dict) else None,
    )


def read_log_upload(body: Any) -> LogUpload:
    data = _object(body, "log upload")
    return LogUpload(id=str(data.get("id") or ""), bytes=int(_number(data.get("bytes"), 0)))
