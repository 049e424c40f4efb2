"""/device/v1/artifacts and /device/v1/release-keys, raw and through the protocol client."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from devicekit import Device, online_device, provisioning_token
from fleet import model
from fleetkeeper.protocol import DeviceClient
from fleetkeeper.protocol.keys import public_key_b64
from fleetkeeper.services.release_keys import signature_verifies

PAYLOAD = bytes(range(256)) * 64  # 16 KiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
SERVER = "http://fleetkeeper.test"


@pytest.fixture
async def artifact(client: httpx.AsyncClient) -> dict[str, Any]:
    await model(client, "thermo-v2")
    r = await client.post(
        "/api/v1/artifacts",
        files={"file": ("thermo-fw.bin", PAYLOAD)},
        data={"version": "2.4.0", "models": "thermo-v2"},
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
async def device(client: httpx.AsyncClient, artifact: dict[str, Any]) -> Device:
    return await online_device(client)


@pytest.fixture
async def protocol_client(app: FastAPI, device: Device) -> AsyncIterator[DeviceClient]:
    assert device.device_id is not None
    async with DeviceClient(
        SERVER, device.key, device.device_id, transport=httpx.ASGITransport(app=app)
    ) as dc:
        yield dc


def url(artifact: dict[str, Any]) -> str:
    return f"/artifacts/{artifact['id']}"


async def test_whole_download_carries_the_integrity_headers(
    device: Device, artifact: dict[str, Any]
) -> None:
    r = await device.call("GET", url(artifact))
    assert r.status_code == 200, r.text
    assert r.content == PAYLOAD
    assert r.headers["content-length"] == str(len(PAYLOAD))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{DIGEST}"'
    assert r.headers["x-artifact-sha256"] == DIGEST
    assert r.headers["x-artifact-signature"] == artifact["signature"]
    assert r.headers["x-artifact-key-id"] == artifact["key_id"]
    assert r.headers["x-artifact-version"] == "2.4.0"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=1000-", 1000, len(PAYLOAD) - 1), ("bytes=10-19", 10, 19), ("bytes=-16", 16368, 16383)],
)
async def test_a_range_is_answered_with_206(
    device: Device, artifact: dict[str, Any], header: str, start: int, end: int
) -> None:
    r = await device.call("GET", url(artifact), headers={"Range": header})
    assert r.status_code == 206, r.text
    assert r.content == PAYLOAD[start : end + 1]
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(PAYLOAD)}"
    assert r.headers["content-length"] == str(end - start + 1)
    assert r.headers["x-artifact-sha256"] == DIGEST


async def test_a_range_past_the_end_is_416(device: Device, artifact: dict[str, Any]) -> None:
    r = await device.call("GET", url(artifact), headers={"Range": f"bytes={len(PAYLOAD)}-"})
    assert r.status_code == 416, r.text
    assert r.headers["content-range"] == f"bytes */{len(PAYLOAD)}"
    assert r.headers["x-artifact-sha256"] == DIGEST
    assert r.json()["code"] == "range_not_satisfiable"


async def test_if_range_resumes_only_the_same_artifact(
    device: Device, artifact: dict[str, Any]
) -> None:
    same = {"Range": "bytes=100-", "If-Range": f'"{DIGEST}"'}
    r = await device.call("GET", url(artifact), headers=same)
    assert r.status_code == 206 and r.content == PAYLOAD[100:]
    changed = {"Range": "bytes=100-", "If-Range": '"' + "0" * 64 + '"'}
    r = await device.call("GET", url(artifact), headers=changed)
    assert r.status_code == 200 and r.content == PAYLOAD


async def test_a_device_of_another_model_is_refused(
    client: httpx.AsyncClient, artifact: dict[str, Any]
) -> None:
    await model(client, "toaster")
    toaster = Device(client, "T-1", model="toaster")
    assert (await toaster.enroll(await provisioning_token(client, auto_accept=True))).is_success
    assert (await toaster.login()).status_code == 200
    r = await toaster.call("GET", url(artifact))
    assert r.status_code == 403 and r.json()["code"] == "incompatible"


async def test_an_unknown_artifact_is_404(device: Device) -> None:
    r = await device.call("GET", "/artifacts/0190aaaa-0000-7000-8000-000000000000")
    assert r.status_code == 404 and r.json()["code"] == "unknown_artifact"


async def test_a_pending_device_cannot_download(
    client: httpx.AsyncClient, artifact: dict[str, Any]
) -> None:
    pending = Device(client, "P-1")
    assert (await pending.enroll(await provisioning_token(client))).json()["state"] == "pending"
    assert (await pending.login()).status_code == 200
    r = await pending.call("GET", url(artifact))
    assert r.status_code == 403 and r.json()["code"] == "device_pending"
    r = await pending.call("GET", "/release-keys")
    assert r.status_code == 200  # an agent pins the keys at enrolment, before acceptance


async def test_downloads_need_a_device_token(
    client: httpx.AsyncClient, artifact: dict[str, Any]
) -> None:
    r = await client.get(f"/device/v1/artifacts/{artifact['id']}")  # an API token is no device's
    assert r.status_code == 401


async def test_devices_learn_the_trusted_release_keys(
    client: httpx.AsyncClient, device: Device
) -> None:
    r = await client.post(
        "/api/v1/release-keys",
        json={"name": "ci", "public_key": public_key_b64(Ed25519PrivateKey.generate())},
    )
    assert r.status_code == 201, r.text
    ci = r.json()
    names = [k["name"] for k in (await device.call("GET", "/release-keys")).json()["keys"]]
    assert names == ["server", "ci"]
    await client.delete(f"/api/v1/release-keys/{ci['id']}")
    keys = (await device.call("GET", "/release-keys")).json()["keys"]
    assert [k["name"] for k in keys] == ["server"]
    assert set(keys[0]) == {"id", "name", "public_key"}


# --- the protocol client -------------------------------------------------------------------


async def test_client_downloads_and_verifies_with_the_servers_keys(
    protocol_client: DeviceClient, artifact: dict[str, Any]
) -> None:
    received = bytearray()
    result = await protocol_client.download(
        f"/device/v1/artifacts/{artifact['id']}", received.extend
    )
    assert bytes(received) == PAYLOAD
    assert (result.received, result.resumed, result.total) == (len(PAYLOAD), False, len(PAYLOAD))
    assert hashlib.sha256(received).hexdigest() == result.sha256 == DIGEST
    keys = {k.id: k for k in await protocol_client.release_keys()}
    assert result.key_id in keys and keys[result.key_id].name == "server"
    assert result.signature is not None
    assert signature_verifies(keys[result.key_id].public_key, DIGEST, "2.4.0", result.signature)


class Interrupted(Exception):
    pass


async def test_client_resumes_an_interrupted_download(
    protocol_client: DeviceClient, artifact: dict[str, Any]
) -> None:
    path = f"/device/v1/artifacts/{artifact['id']}"
    received = bytearray()

    def keep_a_part_then_break(chunk: bytes) -> None:
        received.extend(chunk[:5000])
        raise Interrupted

    with pytest.raises(Interrupted):
        await protocol_client.download(path, keep_a_part_then_break)
    assert len(received) == 5000
    result = await protocol_client.download(path, received.extend, offset=len(received))
    assert (result.resumed, result.received, result.total) == (
        True,
        len(PAYLOAD) - 5000,
        len(PAYLOAD),
    )
    assert bytes(received) == PAYLOAD and result.sha256 == DIGEST


async def test_client_resuming_at_the_end_learns_it_has_everything(
    protocol_client: DeviceClient, artifact: dict[str, Any]
) -> None:
    result = await protocol_client.download(
        f"/device/v1/artifacts/{artifact['id']}", bytearray().extend, offset=len(PAYLOAD)
    )
    assert (result.resumed, result.total, result.sha256) == (True, len(PAYLOAD), DIGEST)
