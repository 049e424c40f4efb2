"""/api/v1/artifacts and /api/v1/release-keys: update payloads and the keys that sign them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from fleetkeeper.api.deps import PrincipalDep, ReasonHeader, ReasonQuery, StateDep, make_change
from fleetkeeper.api.downloads import artifact_response
from fleetkeeper.api.multipart import FormReader
from fleetkeeper.errors import Invalid
from fleetkeeper.schemas.artifacts import ArtifactOut, ReleaseKeyCreate, ReleaseKeyOut
from fleetkeeper.schemas.common import Page
from fleetkeeper.services import artifacts, release_keys
from fleetkeeper.services.artifacts import ArtifactMeta, Received
from fleetkeeper.store.models import ReleaseKey

router = APIRouter(prefix="/api/v1", tags=["artifacts"])

FILE_FIELD = "file"
MAX_FIELD_BYTES = 128 * 1024
_TEXT_FIELDS: dict[str, str] = {
    "version": "semantic version, e.g. 2.4.0 or 2.4.0-rc.1 (required)",
    "models": "comma-separated device model names (required)",
    "name": "default: the file name without its extension",
    "kind": "full (default), package or delta",
    "base_version": "delta: the version it applies on top of",
    "hardware_revisions": "comma-separated; empty: any",
    "release_notes": "free text",
    "sha256": "what the file should hash to: refused (hash_mismatch) when it does not",
    "signature": "base64 Ed25519 over artifact:<sha256>:<version>; without it the server signs",
    "key_id": "the release key that made `signature` (default: any trusted key)",
    "reason": "why: lands in the audit record",
}
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, "version", "models"],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        **{
                            name: {"type": "string", "description": text}
                            for name, text in _TEXT_FIELDS.items()
                        },
                    },
                }
            }
        },
    }
}

Cursor = Annotated[
    str | None, Query(max_length=400, description="`next_cursor` of the page before.")
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def _meta(fields: dict[str, str]) -> ArtifactMeta:
    given = {k: v for k, v in fields.items() if v.strip()}  # a blank form field is no field
    for required in ("version", "models"):
        if required not in given:
            raise Invalid(f"{required}: field required", field=required)
    return ArtifactMeta(
        version=given["version"].strip(),
        models=_split(given["models"]),
        name=given.get("name", "").strip() or None,
        kind=given.get("kind", "full").strip(),
        base_version=given.get("base_version", "").strip() or None,
        hardware_revisions=_split(given.get("hardware_revisions")),
        release_notes=given.get("release_notes"),
        sha256=given.get("sha256", "").strip() or None,
        signature=given.get("signature", "").strip() or None,
        key_id=given.get("key_id", "").strip() or None,
    )


@router.post(
    "/artifacts",
    status_code=201,
    response_model=ArtifactOut,
    summary="Upload an artifact (multipart/form-data, streamed)",
    openapi_extra=_UPLOAD_BODY,
)
async def upload(
    request: Request, state: StateDep, principal: PrincipalDep, x_change_reason: ReasonHeader = None
) -> ArtifactOut:
    artifacts.require_upload(principal)
    fields: dict[str, str] = {}
    received: Received | None = None
    filename: str | None = None
    try:
        async for part in FormReader(request.headers.get("content-type", ""), request.stream()):
            if part.name == FILE_FIELD:
                if received is not None:
                    raise Invalid("send one file per upload", field=FILE_FIELD)
                filename = part.filename
                received = await artifacts.receive(
                    state.artifacts, part, limit=state.settings.max_artifact_bytes
                )
            elif part.name in _TEXT_FIELDS:
                if part.name in fields:
                    raise Invalid(f"{part.name}: given twice", field=part.name)
                fields[part.name] = await part.text(limit=MAX_FIELD_BYTES)
            else:
                raise Invalid(f"unknown form field {part.name!r}", field=part.name)
        if received is None:
            raise Invalid(f"{FILE_FIELD}: the artifact's bytes are missing", field=FILE_FIELD)
        meta = _meta(fields)
        change = make_change(state, principal, fields.get("reason"), x_change_reason)
    except BaseException:
        if received is not None:
            await received.pending.discard()
        raise
    return await artifacts.create(
        state.db, state.artifacts, state.release_key, change, received, meta, filename
    )


@router.get("/artifacts", response_model=Page[ArtifactOut], summary="List artifacts, newest first")
async def list_artifacts(
    state: StateDep,
    principal: PrincipalDep,
    model: Annotated[str | None, Query(max_length=100, description="Only for this model.")] = None,
    version: Annotated[str | None, Query(max_length=100)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[ArtifactOut]:
    async with state.db.read() as session:
        rows, next_cursor = await artifacts.list_artifacts(
            session, principal, model=model, version=version, name=name, limit=limit, cursor=cursor
        )
        return Page(items=await artifacts.render(session, rows), next_cursor=next_cursor)


@router.get("/artifacts/{artifact_id}", response_model=ArtifactOut, summary="Show an artifact")
async def get_artifact(state: StateDep, principal: PrincipalDep, artifact_id: str) -> ArtifactOut:
    async with state.db.read() as session:
        artifact = await artifacts.get_artifact(session, principal, artifact_id)
        return (await artifacts.render(session, [artifact]))[0]


@router.get(
    "/artifacts/{artifact_id}/download",
    response_class=Response,
    summary="Download an artifact's bytes (Range requests resume)",
    responses={
        206: {"description": "The byte range asked for"},
        416: {"description": "Past the end"},
    },
)
async def download(
    request: Request, state: StateDep, principal: PrincipalDep, artifact_id: str
) -> Response:
    async with state.db.read() as session:
        artifact = await artifacts.get_artifact(session, principal, artifact_id)
    return await artifact_response(
        request, state.artifacts, artifact, filename=f"{artifact.name}-{artifact.version}"
    )


@router.delete(
    "/artifacts/{artifact_id}",
    status_code=204,
    summary="Delete an artifact no deployment refers to",
)
async def delete_artifact(
    state: StateDep,
    principal: PrincipalDep,
    artifact_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    await artifacts.delete(state.db, state.artifacts, change, artifact_id)
    return Response(status_code=204)


# --- release keys -------------------------------------------------------------------------


def _key_view(key: ReleaseKey) -> ReleaseKeyOut:
    return ReleaseKeyOut.model_validate(key, from_attributes=True)


@router.get(
    "/release-keys",
    response_model=Page[ReleaseKeyOut],
    summary="List release keys (the server's own is named `server`), revoked ones too",
)
async def list_release_keys(state: StateDep, principal: PrincipalDep) -> Page[ReleaseKeyOut]:
    async with state.db.read() as session:
        rows = await release_keys.list_keys(session, principal)
    return Page(items=[_key_view(k) for k in rows])


@router.post(
    "/release-keys",
    status_code=201,
    response_model=ReleaseKeyOut,
    summary="Trust a release key (its public half)",
)
async def add_release_key(
    state: StateDep,
    principal: PrincipalDep,
    body: ReleaseKeyCreate,
    x_change_reason: ReasonHeader = None,
) -> ReleaseKeyOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        return _key_view(await release_keys.add_key(session, change, body.name, body.public_key))


@router.delete(
    "/release-keys/{key_id}",
    response_model=ReleaseKeyOut,
    summary="Revoke a release key: signatures made with it are no longer accepted",
)
async def revoke_release_key(
    state: StateDep,
    principal: PrincipalDep,
    key_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> ReleaseKeyOut:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        return _key_view(await release_keys.revoke_key(session, change, key_id))
