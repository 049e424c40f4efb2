from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from fleetkeeper.schemas.common import Input, Name, Reason

Serial = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"),
]
Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
State = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Version = Annotated[str, StringConstraints(min_length=1, max_length=100)]
MAX_ATTRIBUTES_BYTES = 16_384


def _check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    import json
    import re

    for key in value:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$", key):
            raise ValueError(
                f"attribute name {key!r} must start with a letter or _ and hold only "
                "letters, digits, _ and - (at most 100)"
            )
    if len(json.dumps(value)) > MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"attributes larger than {MAX_ATTRIBUTES_BYTES} bytes as JSON")
    return value


Attributes = Annotated[dict[str, Any], AfterValidator(_check_attributes)]


def _unique_tags(tags: list[str]) -> list[str]:
    return sorted(set(tags))


Tags = Annotated[list[Tag], Field(max_length=50), AfterValidator(_unique_tags)]


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    alt: float | None = Field(default=None, description="Metres above sea level.")
    accuracy: float | None = Field(default=None, ge=0, description="Radius in metres.")


class DeviceCreate(Input):
    serial: Serial
    model: Name = Field(description="Name of an existing device model.")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    tenant: Name | None = None
    state: State | None = None
    firmware_version: Version | None = None
    hardware_revision: str | None = Field(default=None, max_length=100)
    attributes: Attributes = Field(default_factory=dict)
    tags: Tags = Field(default_factory=list)
    location: Location | None = None
    public_key: str | None = Field(
        default=None,
        max_length=64,
        description="The device's Ed25519 public key (base64, 32 bytes), from the manufacturer's "
        "list: the device is pre-authorised and enrols without a provisioning token.",
    )
    claim_code: str | None = Field(
        default=None,
        min_length=8,
        max_length=128,
        description="The code on the device's label that lets a customer claim it (stored hashed).",
    )
    reason: Reason = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "serial": "SN-000123",
                    "model": "thermo-v2",
                    "firmware_version": "1.4.2",
                    "attributes": {"site": "berlin-1", "floor": 3},
                    "tags": ["pilot"],
                    "location": {"lat": 52.52, "lon": 13.405},
                }
            ]
        },
    )


class DevicePatch(Input):
    """Fields to change. `attributes` merges: a key set to null is removed."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    model: Name | None = None
    tenant: Name | None = None
    state: State | None = None
    firmware_version: Version | None = None
    hardware_revision: str | None = Field(default=None, max_length=100)
    attributes: Attributes | None = None
    tags: Tags | None = None
    location: Location | None = None
    reason: Reason = None

    @field_validator("name", "model", "tenant", "state", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value


class MetricReading(BaseModel):
    value: float
    ts: datetime = Field(description="When the device measured it.")


class DeviceOut(BaseModel):
    id: str
    serial: str
    name: str
    model: str
    tenant: str
    state: str
    firmware_version: str | None
    hardware_revision: str | None
    attributes: dict[str, Any]
    tags: list[str]
    groups: list[str]
    location: Location | None
    online: bool
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime
    health: list[str] = Field(
        default_factory=list,
        description="The health flags the device carries now, e.g. faulty_sensor, flood.",
    )
    metrics: dict[str, MetricReading] = Field(
        default_factory=dict, description="The latest reading of each metric, by name."
    )


class AggregateBucket(BaseModel):
    value: Any
    count: int


class Aggregate(BaseModel):
    by: str
    total: int
    buckets: list[AggregateBucket]
