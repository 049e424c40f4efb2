"""Request and response bodies of /api/v1/deployments and the device's jobs (docs/ota.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from fleetkeeper.schemas.common import Input, Reason
from fleetkeeper.schemas.devices import Version


class CommandSpec(Input):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    args: dict[str, Any] = Field(default_factory=dict)


class DeploymentCreate(Input):
    name: str | None = Field(default=None, max_length=200)
    target: str = Field(min_length=1, max_length=4000, description="a fleet query")
    artifact_id: str | None = Field(default=None, max_length=36)
    command: CommandSpec | None = Field(
        default=None, description="a bulk operation instead of an artifact"
    )
    continuous: bool = Field(default=False, description="devices that match later join too")
    supersede: bool = Field(
        default=False,
        description="cancel the targeted devices' older executions that have not started "
        "installing, instead of queueing behind them",
    )
    rollout: dict[str, Any] | None = Field(
        default=None, description="the rollout policy (docs/ota.md); omitted keys take defaults"
    )
    seed: int | None = Field(
        default=None, ge=0, description="fixes the order devices are picked in (tests, demos)"
    )
    reason: Reason = None


class ActionIn(Input):
    reason: Reason = None
    rollback: bool = Field(default=False, description="abort/cancel: roll updated devices back")


class PhaseOut(BaseModel):
    index: int
    percent: float | None
    count: int | None
    size: int
    counts: dict[str, int]
    state: str


class DeploymentOut(BaseModel):
    id: str
    name: str
    kind: str
    state: str
    reason: str | None
    target: str
    continuous: bool
    tenant: str | None
    artifact_id: str | None
    version: str | None
    command: dict[str, Any] | None
    rollout: dict[str, Any]
    phase: int
    phases: list[PhaseOut]
    total: int
    counts: dict[str, int] = Field(description="executions per state")
    skipped: dict[str, int] = Field(description="skipped executions per reason")
    failure_reasons: dict[str, int]
    rate_per_minute: float
    eta: datetime | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    actor: str
    detail: dict[str, Any]


class ExecutionOut(BaseModel):
    id: str
    device_id: str
    serial: str
    phase: int
    state: str
    reason: str | None
    detail: str | None
    progress: int | None
    attempt: int
    from_version: str | None
    to_version: str | None
    notified_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class RetryOut(BaseModel):
    requeued: int


# --- the device's side ------------------------------------------------------------------------


class ArtifactRefOut(BaseModel):
    id: str
    name: str
    version: str
    kind: str
    base_version: str | None
    size: int
    sha256: str
    signature: str
    key_id: str
    url: str


class JobOut(BaseModel):
    id: str
    deployment_id: str
    kind: str = Field(description="update, rollback or command")
    state: str
    attempt: int
    cancel: bool
    artifact: ArtifactRefOut | None
    rollback_to: str | None
    command: dict[str, Any] | None
    preconditions: dict[str, Any]
    timeouts: dict[str, float]
    not_after: datetime | None


class JobReportIn(Input):
    state: str = Field(max_length=16)
    progress: int | None = Field(default=None, ge=0, le=100)
    reason: str | None = Field(default=None, max_length=40)
    detail: str | None = Field(default=None, max_length=4096)
    version: Version | None = None
    cancel_refused: bool = False


class JobAnswerOut(BaseModel):
    state: str
    cancel: bool
