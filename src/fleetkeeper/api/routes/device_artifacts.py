"""/device/v1/artifacts and /device/v1/release-keys: what a device needs to update itself."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from fleetkeeper.api.deps import StateDep
from fleetkeeper.api.device_auth import ActiveDeviceDep, DeviceDep
from fleetkeeper.api.downloads import artifact_response
from fleetkeeper.schemas.artifacts import DeviceReleaseKey, DeviceReleaseKeys
from fleetkeeper.services import artifacts, release_keys

router = APIRouter(prefix="/device/v1", tags=["device API"])


@router.get(
    "/artifacts/{artifact_id}",
    response_class=Response,
    summary="Download an artifact compatible with the device's model (Range resumes)",
    responses={
        206: {"description": "The byte range asked for (`Range: bytes=N-`)"},
        403: {"description": "`incompatible`: not for this device's model"},
        404: {"description": "`unknown_artifact`"},
        416: {"description": "The range starts past the end (`Content-Range: bytes */size`)"},
    },
)
async def download(
    request: Request, state: StateDep, device: ActiveDeviceDep, artifact_id: str
) -> Response:
    async with state.db.read() as session:
        artifact = await artifacts.for_device(session, device, artifact_id)
    return await artifact_response(request, state.artifacts, artifact)


@router.get(
    "/release-keys",
    response_model=DeviceReleaseKeys,
    summary="The release keys artifacts may be signed with (trusted, not revoked)",
)
async def trusted_release_keys(state: StateDep, device: DeviceDep) -> DeviceReleaseKeys:
    async with state.db.read() as session:
        keys = await release_keys.trusted_keys(session)
    return DeviceReleaseKeys(
        keys=[DeviceReleaseKey(id=k.id, name=k.name, public_key=k.public_key) for k in keys]
    )
