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
class CheckinResult:
    state: str
    commands: tuple[Command, ...] = ()
    next_checkin: float = 30.0
    wipe: bool = False


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
    return CheckinResult(
        state=_text(data, "state", "check-in"),
        commands=tuple(read_command(c) for c in commands),
        next_checkin=max(0.0, _number(data.get("next_checkin"), 30.0)),
        wipe=data.get("wipe") is True,
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
