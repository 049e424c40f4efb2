"""Artifacts: update payloads with their metadata, signature and bytes (docs/ota.md).

An upload runs in three steps so that nothing stays behind when any of them fails and no
database transaction stays open while gigabytes arrive:

1. `receive` streams the bytes into a pending store write, hashing and counting them;
2. `create` checks the metadata, the expected hash and the signature (or signs with the
   server's release key), commits the bytes under the new artifact's id, and records the row
   and its audit record in one transaction;
3. on any failure the pending write is discarded, or the committed bytes deleted.

Artifacts are shared by every tenant, like device models: anyone with `artifacts:read` sees
them, only platform users with `artifacts:write` add or delete them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Forbidden, Invalid, NotFound, PayloadTooLarge
from fleetkeeper.ids import uuid7
from fleetkeeper.schemas.artifacts import ArtifactOut
from fleetkeeper.services import audit, release_keys
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.release_keys import SERVER_KEY_NAME, ServerReleaseKey
from fleetkeeper.services.rollout.planner import DEPLOYMENT_FINAL
from fleetkeeper.services.selection import decode_cursor, encode_cursor
from fleetkeeper.store.artifacts import ArtifactStore, PendingWrite
from fleetkeeper.store.db import Database, dialect_of
from fleetkeeper.store.models import Artifact, Deployment, Device, DeviceModel, ReleaseKey
from fleetkeeper.versions import InvalidVersion, version_key

log = logging.getLogger(__name__)

KINDS = ("full", "package", "delta")
MAX_NOTES = 20_000

_NUMBER = r"(?:0|[1-9]\d*)"
_PRE_PART = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"^{_NUMBER}\.{_NUMBER}\.{_NUMBER}"
    rf"(?:-{_PRE_PART}(?:\.{_PRE_PART})*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class ArtifactMeta:
    """What an upload says about its bytes (the multipart form fields)."""

    version: str
    models: tuple[str, ...]
    name: str | None = None
    kind: str = "full"
    base_version: str | None = None
    hardware_revisions: tuple[str, ...] = ()
    release_notes: str | None = None
    sha256: str | None = None  # what the uploader expects the bytes to hash to
    signature: str | None = None
    key_id: str | None = None


def is_semver(text: str) -> bool:
    if len(text) > 100 or not _SEMVER.match(text):
        return False
    try:
        version_key(text)
    except InvalidVersion:
        return False
    return True


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i.strip() for i in items if i.strip()))


def default_name(filename: str | None) -> str | None:
    """The file's name without its folder and last extension (`thermo-fw.bin` → `thermo-fw`)."""
    if not filename:
        return None
    base = PureWindowsPath(PurePosixPath(filename).name).name
    return PurePosixPath(base).stem or None


def check_meta(meta: ArtifactMeta, filename: str | None = None) -> ArtifactMeta:
    """`meta` made tidy (name defaulted, lists de-duplicated), or Invalid naming the field."""
    name = meta.name or default_name(filename)
    if not name:
        raise Invalid("name is required when the file has no name", field="name")
    if len(name) > 200 or not _NAME.match(name):
        raise Invalid(
            f"name {name!r} may hold letters, digits and _.:+- (at most 200), "
            "starting with a letter or digit",
            field="name",
        )
    if not is_semver(meta.version):
        raise Invalid(
            f"version {meta.version!r} is not a semantic version (e.g. 2.4.0 or 2.4.0-rc.1)",
            field="version",
        )
    if meta.kind not in KINDS:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if meta.kind == "delta":
        if not meta.base_version:
            raise Invalid("a delta artifact needs base_version", field="base_version")
        if not is_semver(meta.base_version):
            raise Invalid(
                f"base_version {meta.base_version!r} is not a semantic version",
                field="base_version",
            )
        if meta.base_version == meta.version:
            raise Invalid("a delta cannot apply on top of its own version", field="base_version")
    elif meta.base_version:
        raise Invalid("base_version applies to delta artifacts only", field="base_version")
    models = _unique(meta.models)
    if not models:
        raise Invalid("models: name at least one device model", field="models")
    revisions = _unique(meta.hardware_revisions)
    for field, values in (("models", models), ("hardware_revisions", revisions)):
        if any(len(v) > 100 for v in values) or len(values) > 100:
            raise Invalid(f"{field}: at most 100 entries of at most 100 characters", field=field)
    if meta.release_notes is not None and len(meta.release_notes) > MAX_NOTES:
        raise Invalid(f"release_notes: at most {MAX_NOTES} characters", field="release_notes")
    if meta.sha256 is not None and not _SHA256.match(meta.sha256):
        raise Invalid("sha256 must be 64 hex digits", field="sha256")
    if meta.key_id is not None and not meta.signature:
        raise Invalid("key_id names the key of a signature: give signature too", field="key_id")
    return replace(
        meta,
        name=name,
        models=models,
        hardware_revisions=revisions,
        sha256=meta.sha256.lower() if meta.sha256 else None,
        release_notes=meta.release_notes or None,
    )


def require_upload(principal: Principal) -> None:
    """Who may add or delete artifacts; asked before a byte of an upload is read."""
    principal.require("artifacts:write")
    if principal.tenant_id is not None:
        raise Forbidden("artifacts are shared by all tenants: only platform users change them")


# --- uploads ------------------------------------------------------------------------------


@dataclass
class Received:
    """Bytes waiting in the store, not yet an artifact."""

    pending: PendingWrite
    size: int
    sha256: str


async def receive(store: ArtifactStore, source: AsyncIterable[bytes], *, limit: int) -> Received:
    """Stream `source` into a pending write, hashing it; PayloadTooLarge past `limit` bytes.

    On any failure (too large, the client going away) the pending write is discarded."""
    pending = await store.begin()
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in source:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"the artifact is larger than the limit of {limit} bytes",
                    code="too_large",
                    limit=limit,
                )
            digest.update(chunk)
            await pending.write(chunk)
    except BaseException:
        await pending.discard()
        raise
    return Received(pending, size, digest.hexdigest())


async def _check_models(session: AsyncSession, models: Sequence[str]) -> None:
    known = set(await session.scalars(select(DeviceModel.name).where(DeviceModel.name.in_(models))))
    unknown = [m for m in models if m not in known]
    if unknown:
        raise Invalid(
            f"unknown device model {unknown[0]!r}: create it first (POST /api/v1/models)",
            field="models",
            unknown=unknown,
        )


async def _check_new(session: AsyncSession, name: str, version: str) -> None:
    taken = await session.scalar(
        select(Artifact.id).where(Artifact.name == name, Artifact.version == version)
    )
    if taken:
        raise Conflict(
            f"artifact {name} {version} exists already ({taken})", field="version", code="exists"
        )


async def _signed(
    session: AsyncSession, server_key: ServerReleaseKey, meta: ArtifactMeta, sha256: str
) -> tuple[str, str, str]:
    """(signature, key id, key name): the uploader's verified signature, or the server's."""
    if meta.signature is None:
        return server_key.sign(sha256, meta.version), server_key.key_id, SERVER_KEY_NAME
    key = await release_keys.verify_signature(
        session, sha256, meta.version, meta.signature, meta.key_id
    )
    return meta.signature, key.id, key.name


async def create(
    db: Database,
    store: ArtifactStore,
    server_key: ServerReleaseKey,
    change: Change,
    received: Received,
    meta: ArtifactMeta,
    filename: str | None = None,
) -> ArtifactOut:
    """Turn received bytes into an artifact, or discard them and raise."""
    committed: str | None = None
    try:
        require_upload(change.principal)
        meta = check_meta(meta, filename)
        assert meta.name is not None
        if received.size == 0:
            raise Invalid("the file is empty", field="file")
        if meta.sha256 is not None and meta.sha256 != received.sha256:
            raise Invalid(
                f"the file's sha256 is {received.sha256}, not {meta.sha256}",
                field="sha256",
                code="hash_mismatch",
                sha256=received.sha256,
            )
        # Everything that can refuse the upload is asked before the bytes are committed.
        async with db.read() as session:
            await _check_models(session, meta.models)
            await _check_new(session, meta.name, meta.version)
            signature, key_id, signed_by = await _signed(session, server_key, meta, received.sha256)
        now = change.now()
        artifact = Artifact(
            id=uuid7(now),
            name=meta.name,
            version=meta.version,
            kind=meta.kind,
            base_version=meta.base_version,
            models=list(meta.models),
            hardware_revisions=list(meta.hardware_revisions),
            size=received.size,
            sha256=received.sha256,
            signature=signature,
            key_id=key_id,
            release_notes=meta.release_notes,
            created_by=change.principal.actor,
            created_at=now,
        )
        # Committed outside the transaction: making a large file durable takes a while, and
        # SQLite would hold its one writer for that long.
        artifact.storage_key = artifact.id
        await received.pending.commit(artifact.storage_key)
        committed = artifact.storage_key
        async with db.write() as session:
            if key_id != server_key.key_id:
                await _still_trusted(session, key_id)
            session.add(artifact)
            try:
                await session.flush()
            except IntegrityError:
                raise Conflict(
                    f"artifact {meta.name} {meta.version} exists already",
                    field="version",
                    code="exists",
                ) from None
            await audit.append(
                session,
                change,
                action="artifact.create",
                target=f"artifact:{artifact.id}",
                tenant_id=None,
                after=_summary(artifact, signed_by),
            )
    except BaseException:
        if committed is None:
            await received.pending.discard()
        else:
            await store.delete(committed)
        raise
    return view(artifact, signed_by)


async def _still_trusted(session: AsyncSession, key_id: str) -> None:
    key = await session.get(ReleaseKey, key_id)
    if key is None or key.revoked_at is not None:
        raise Invalid(
            f"key {key_id!r} was revoked during the upload",
            field="key_id",
            code="signature_invalid",
        )


# --- reading ------------------------------------------------------------------------------


def view(artifact: Artifact, signed_by: str) -> ArtifactOut:
    return ArtifactOut(
        id=artifact.id,
        name=artifact.name,
        version=artifact.version,
        kind=artifact.kind,
        base_version=artifact.base_version,
        models=list(artifact.models),
        hardware_revisions=list(artifact.hardware_revisions),
        size=artifact.size,
        sha256=artifact.sha256,
        signature=artifact.signature,
        key_id=artifact.key_id,
        signed_by=signed_by,
        release_notes=artifact.release_notes,
        created_by=artifact.created_by,
        created_at=artifact.created_at,
    )


def _summary(artifact: Artifact, signed_by: str) -> dict[str, Any]:
    return view(artifact, signed_by).model_dump(
        mode="json", exclude={"id", "release_notes", "created_by", "created_at"}
    )


async def render(session: AsyncSession, rows: Sequence[Artifact]) -> list[ArtifactOut]:
    """Views of `rows`, each naming the release key that signed it."""
    ids = {a.key_id for a in rows}
    stmt = select(ReleaseKey.id, ReleaseKey.name).where(ReleaseKey.id.in_(ids))
    names = {key_id: name for key_id, name in await session.execute(stmt)}
    return [view(a, names.get(a.key_id, a.key_id)) for a in rows]


async def get_artifact(session: AsyncSession, principal: Principal, artifact_id: str) -> Artifact:
    principal.require("artifacts:read")
    artifact = await session.get(Artifact, artifact_id)
    if artifact is None:
        raise NotFound(f"no artifact {artifact_id!r}", code="unknown_artifact")
    return artifact


def _has_model(session: AsyncSession, model: str) -> ColumnElement[bool]:
    if dialect_of(session) == "postgresql":
        return type_coerce(Artifact.models, JSONB).contains([model])
    entries = func.json_each(Artifact.models).table_valued("value")
    return exists().select_from(entries).where(entries.c.value == model)


async def list_artifacts(
    session: AsyncSession,
    principal: Principal,
    *,
    model: str | None = None,
    version: str | None = None,
    name: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Artifact], str | None]:
    """A page of artifacts, newest first, and the cursor of the next page."""
    principal.require("artifacts:read")
    stmt = select(Artifact)
    if model is not None:
        stmt = stmt.where(_has_model(session, model))
    if version is not None:
        stmt = stmt.where(Artifact.version == version)
    if name is not None:
        stmt = stmt.where(Artifact.name == name)
    if cursor:
        stmt = stmt.where(Artifact.id < decode_cursor(cursor))
    rows = list((await session.scalars(stmt.order_by(Artifact.id.desc()).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].id) if more and rows else None


async def for_device(session: AsyncSession, device: Device, artifact_id: str) -> Artifact:
    """The artifact if `device` may download it: 404 `unknown_artifact`, 403 `incompatible`."""
    artifact = await session.get(Artifact, artifact_id)
    if artifact is None:
        raise NotFound(f"no artifact {artifact_id!r}", code="unknown_artifact")
    model = await session.scalar(select(DeviceModel.name).where(DeviceModel.id == device.model_id))
    if model not in artifact.models:
        raise Forbidden(
            f"artifact {artifact.name} {artifact.version} is not for model {model!r}",
            code="incompatible",
        )
    return artifact


# --- deleting -----------------------------------------------------------------------------


async def delete(db: Database, store: ArtifactStore, change: Change, artifact_id: str) -> None:
    """Delete an artifact no deployment refers to: the row, then its bytes."""
    require_upload(change.principal)
    async with db.write() as session:
        artifact = await get_artifact(session, change.principal, artifact_id)
        deployments = (
            await session.execute(
                select(Deployment.id, Deployment.state).where(Deployment.artifact_id == artifact.id)
            )
        ).all()
        active = sorted(d for d, state in deployments if state not in DEPLOYMENT_FINAL)
        if active:
            raise Conflict(
                f"artifact {artifact.name} {artifact.version} is in use by "
                f"{len(active)} deployment(s) not over yet: stop or cancel them first",
                code="artifact_in_use",
                deployments=active,
            )
        if deployments:
            # deployments.artifact_id has no ON DELETE rule: a finished deployment keeps its
            # artifact, or its history would lose what it deployed.
            raise Conflict(
                f"artifact {artifact.name} {artifact.version} is kept for the history of "
                f"{len(deployments)} finished deployment(s)",
                code="artifact_deployed",
                deployments=sorted(d for d, _ in deployments),
            )
        signed_by = (await render(session, [artifact]))[0].signed_by
        await session.delete(artifact)
        await session.flush()
        await audit.append(
            session,
            change,
            action="artifact.delete",
            target=f"artifact:{artifact.id}",
            tenant_id=None,
            before=_summary(artifact, signed_by),
        )
    try:
        await store.delete(artifact.storage_key)
    except OSError:
        # The row is gone, so nothing refers to the bytes any more: log, do not fail.
        log.exception(
            "artifact %s deleted, but not its bytes %s", artifact.id, artifact.storage_key
        )
