"""Device models and groups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from fleetkeeper.schemas.common import Input, Name, Reason
from fleetkeeper.services.rollout.policy import Window


class ModelCreate(Input):
    name: Name
    manufacturer: str | None = Field(default=None, max_length=200)
    hardware_revision: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=4000)
    capabilities: list[str] = Field(default_factory=list, max_length=100)
    config_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema (draft 2020-12) for this model's configuration."
    )
    reason: Reason = None


class ModelPatch(Input):
    manufacturer: str | None = Field(default=None, max_length=200)
    hardware_revision: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=4000)
    capabilities: list[str] | None = Field(default=None, max_length=100)
    config_schema: dict[str, Any] | None = None
    reason: Reason = None


class ModelOut(BaseModel):
    id: int
    name: str
    manufacturer: str | None
    hardware_revision: str | None
    description: str | None
    capabilities: list[str]
    config_schema: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


WindowsField = Field(
    default=None,
    max_length=20,
    description="The members' maintenance windows ({cron, duration, timezone}): deployments "
    "start a member only inside one of them (docs/ota.md).",
)


class GroupCreate(Input):
    name: Name
    query: str | None = Field(
        default=None,
        max_length=4000,
        description="A fleet query: the group is dynamic and its membership always current.",
    )
    description: str | None = Field(default=None, max_length=4000)
    maintenance_windows: list[Window] | None = WindowsField
    tenant: Name | None = None
    reason: Reason = None


class GroupPatch(Input):
    query: str | None = Field(default=None, max_length=4000)
    description: str | None = Field(default=None, max_length=4000)
    maintenance_windows: list[Window] | None = WindowsField
    reason: Reason = None


class Members(Input):
    devices: list[str] = Field(min_length=1, max_length=10_000, description="Device ids.")
    reason: Reason = None


class GroupOut(BaseModel):
    id: int
    name: str
    tenant: str
    kind: str = Field(description="`static` (members added by hand) or `dynamic` (by query).")
    query: str | None
    description: str | None
    member_count: int | None = None
    maintenance_windows: list[dict[str, Any]] | None = None
    created_at: datetime
    updated_at: datetime
