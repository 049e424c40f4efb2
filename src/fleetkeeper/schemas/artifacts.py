"""Artifacts (update payloads) and release keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from fleetkeeper.schemas.common import Input, Reason


class ArtifactOut(BaseModel):
    id: str
    name: str
    version: str
    kind: str = Field(description="full, package or delta")
    base_version: str | None = Field(description="delta: the version it applies on top of")
    models: list[str]
    hardware_revisions: list[str] = Field(description="empty: any hardware revision")
    size: int
    sha256: str
    signature: str = Field(description="base64 Ed25519 over artifact:<sha256>:<version>")
    key_id: str
    signed_by: str = Field(description='the release key\'s name ("server": the server signed it)')
    release_notes: str | None
    created_by: str
    created_at: datetime


class ReleaseKeyCreate(Input):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:@-]*$")
    public_key: str = Field(
        min_length=1, max_length=64, description="base64 of the 32-byte Ed25519 public key"
    )
    reason: Reason = None


class ReleaseKeyOut(BaseModel):
    id: str = Field(description="the first 16 hex digits of sha256(public key bytes)")
    name: str
    public_key: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class DeviceReleaseKey(BaseModel):
    id: str
    name: str
    public_key: str


class DeviceReleaseKeys(BaseModel):
    keys: list[DeviceReleaseKey]
