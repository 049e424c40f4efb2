"""/api/v1/artifacts and /api/v1/release-keys, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from fleet import as_token_client, model, user_token
from fleetkeeper.clock import FakeClock
from fleetkeeper.services.release_keys import raw_public_key, sign_artifact, signature_verifies
from fleetkeeper.settings import Settings
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Deployment

LIMIT = 4096
PAYLOAD = b"thermo firmware 2.4.0\n" * 40
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_artifact_bytes": LIMIT})


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The admin client, with device models thermo-v2 and thermo-v3."""
    await model(client, "thermo-v2")
    await model(client, "thermo-v3")
    return client


def stored_files(app: FastAPI) -> list[str]:
    root: Path = app.state.fleetkeeper.artifacts.root
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def upload(
    client: httpx.AsyncClient,
    data: bytes = PAYLOAD,
    *,
    filename: str = "thermo-fw.bin",
    **form: str,
) -> httpx.Response:
    form.setdefault("version", "2.4.0")
    form.setdefault("models", "thermo-v2")
    return await client.post(
        "/api/v1/artifacts",
        files={"file": (filename, data, "application/octet-stream")},
        data=form,
    )


def new_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, base64.b64encode(raw_public_key(key)).decode()


async def trust(client: httpx.AsyncClient, name: str, public_key: str) -> dict[str, Any]:
    r = await client.post("/api/v1/release-keys", json={"name": name, "public_key": public_key})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def keys_by_name(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    r = await client.get("/api/v1/release-keys")
    assert r.status_code == 200, r.text
    return {k["name"]: k for k in r.json()["items"]}


async def audit_actions(client: httpx.AsyncClient, target: str) -> list[tuple[str, str | None]]:
    r = await client.get("/api/v1/audit", params={"target": target})
    return [(a["action"], a["reason"]) for a in r.json()["items"]]


# --- uploading ---------------------------------------------------------------------------------


async def test_unsigned_upload_is_signed_by_the_server(
    admin: httpx.AsyncClient, app: FastAPI
) -> None:
    r = await upload(
        admin,
        models="thermo-v2, thermo-v3",
        hardware_revisions="rev-a,rev-b",
        release_notes="Faster boot.",
        reason="release 2.4.0",
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert {k: body[k] for k in ("name", "version", "kind", "base_version", "size", "sha256")} == {
        "name": "thermo-fw",
        "version": "2.4.0",
        "kind": "full",
        "base_version": None,
        "size": len(PAYLOAD),
        "sha256": DIGEST,
    }
    assert body["models"] == ["thermo-v2", "thermo-v3"]
    assert body["hardware_revisions"] == ["rev-a", "rev-b"]
    assert body["release_notes"] == "Faster boot."
    assert body["created_by"].startswith("admin")
    server = (await keys_by_name(admin))["server"]
    assert (body["signed_by"], body["key_id"]) == ("server", server["id"])
    assert signature_verifies(server["public_key"], DIGEST, "2.4.0", body["signature"])
    assert stored_files(app) == [body["id"]]
    assert await audit_actions(admin, f"artifact:{body['id']}") == [
        ("artifact.create", "release 2.4.0")
    ]


async def test_upload_signed_offline_with_a_trusted_key(admin: httpx.AsyncClient) -> None:
    key, public = new_key()
    ci = await trust(admin, "ci", public)
    signature = sign_artifact(key, DIGEST, "2.4.0")
    r = await upload(admin, signature=signature)
    assert r.status_code == 201, r.text
    assert (r.json()["signature"], r.json()["key_id"], r.json()["signed_by"]) == (
        signature,
        ci["id"],
        "ci",
    )
    r = await upload(
        admin, version="2.5.0", signature=sign_artifact(key, DIGEST, "2.5.0"), key_id=ci["id"]
    )
    assert r.status_code == 201 and r.json()["signed_by"] == "ci"


@pytest.mark.parametrize(
    "signed",
    ["untrusted key", "other version", "other bytes", "garbage"],
)
async def test_a_signature_that_does_not_verify_is_refused(
    admin: httpx.AsyncClient, app: FastAPI, signed: str
) -> None:
    trusted, public = new_key()
    await trust(admin, "ci", public)
    signature = {
        "untrusted key": sign_artifact(Ed25519PrivateKey.generate(), DIGEST, "2.4.0"),
        "other version": sign_artifact(trusted, DIGEST, "2.3.0"),  # an old release replayed
        "other bytes": sign_artifact(trusted, "0" * 64, "2.4.0"),
        "garbage": "bm90IGEgc2lnbmF0dXJl",
    }[signed]
    r = await upload(admin, signature=signature)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "signature_invalid"
    assert stored_files(app) == []
    assert (await admin.get("/api/v1/artifacts")).json()["items"] == []


async def test_a_signature_by_a_revoked_key_is_refused(
    admin: httpx.AsyncClient, app: FastAPI
) -> None:
    key, public = new_key()
    ci = await trust(admin, "ci", public)
    assert (await admin.delete(f"/api/v1/release-keys/{ci['id']}")).status_code == 200
    r = await upload(admin, signature=sign_artifact(key, DIGEST, "2.4.0"), key_id=ci["id"])
    assert r.status_code == 422 and r.json()["code"] == "signature_invalid"
    assert "revoked" in r.json()["detail"]
    r = await upload(admin, signature=sign_artifact(key, DIGEST, "2.4.0"))
    assert r.status_code == 422 and r.json()["code"] == "signature_invalid"
    assert stored_files(app) == []


async def test_expected_hash_is_checked(admin: httpx.AsyncClient, app: FastAPI) -> None:
    r = await upload(admin, sha256="0" * 64)
    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["sha256"]) == ("hash_mismatch", DIGEST)
    assert stored_files(app) == []
    r = await upload(admin, sha256=DIGEST.upper())
    assert r.status_code == 201, r.text


async def test_too_large_an_artifact_is_refused_and_leaves_nothing(
    admin: httpx.AsyncClient, app: FastAPI
) -> None:
    r = await upload(admin, b"x" * (LIMIT + 1))
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_large"
    assert stored_files(app) == []
    assert (await upload(admin, b"x" * LIMIT)).status_code == 201


async def test_a_body_far_over_the_limit_is_cut_off_while_it_streams(
    admin: httpx.AsyncClient, app: FastAPI, settings: Settings
) -> None:
    boundary = "fk-test-boundary"

    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="version"\r\n\r\n2.4.0\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="models"\r\n\r\nthermo-v2\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.bin"\r\n\r\n'
        ).encode()
        for _ in range((LIMIT + settings.max_body_bytes) // 65536 + 2):
            yield b"x" * 65536

    r = await admin.post(
        "/api/v1/artifacts",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text
    assert stored_files(app) == []


async def test_unknown_model_is_named(admin: httpx.AsyncClient, app: FastAPI) -> None:
    r = await upload(admin, models="thermo-v2,toaster")
    assert r.status_code == 422, r.text
    assert "toaster" in r.json()["detail"] and r.json()["unknown"] == ["toaster"]
    assert stored_files(app) == []


async def test_name_and_version_are_unique(admin: httpx.AsyncClient, app: FastAPI) -> None:
    first = await upload(admin)
    assert first.status_code == 201
    again = await upload(admin, b"other bytes")
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "exists"
    assert stored_files(app) == [first.json()["id"]]
    assert (await upload(admin, name="other-fw")).status_code == 201
    assert (await upload(admin, version="2.4.1")).status_code == 201


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"version": "2.4"}, "version"),
        ({"version": ""}, "version"),
        ({"models": ""}, "models"),
        ({"kind": "image"}, "kind"),
        ({"kind": "delta"}, "base_version"),
        ({"base_version": "2.3.0"}, "base_version"),
        ({"sha256": "abc"}, "sha256"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_metadata_is_refused(
    admin: httpx.AsyncClient, app: FastAPI, form: dict[str, str], field: str
) -> None:
    r = await upload(admin, **form)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert stored_files(app) == []


async def test_a_delta_names_its_base_version(admin: httpx.AsyncClient) -> None:
    r = await upload(admin, kind="delta", base_version="2.3.0", name="thermo-delta")
    assert r.status_code == 201, r.text
    assert (r.json()["kind"], r.json()["base_version"]) == ("delta", "2.3.0")


async def test_an_empty_file_or_none_is_refused(admin: httpx.AsyncClient, app: FastAPI) -> None:
    r = await upload(admin, b"")
    assert r.status_code == 422 and r.json()["field"] == "file"
    r = await admin.post(
        "/api/v1/artifacts",
        data={"version": "2.4.0", "models": "thermo-v2"},
        files={"other": ("x", b"x")},
    )
    assert r.status_code == 422
    r = await admin.post("/api/v1/artifacts", json={"version": "2.4.0"})
    assert r.status_code == 400
    assert stored_files(app) == []


# --- reading -----------------------------------------------------------------------------------


async def test_list_filters_and_pages_newest_first(
    admin: httpx.AsyncClient, clock: FakeClock
) -> None:
    await upload(admin, version="1.0.0")
    clock.advance(1)
    await upload(admin, version="2.0.0", models="thermo-v3")
    clock.advance(1)
    await upload(admin, version="3.0.0", models="thermo-v2,thermo-v3", name="other")

    async def listed(**params: Any) -> list[tuple[str, str]]:
        r = await admin.get("/api/v1/artifacts", params=params)
        assert r.status_code == 200, r.text
        return [(a["name"], a["version"]) for a in r.json()["items"]]

    assert await listed() == [("other", "3.0.0"), ("thermo-fw", "2.0.0"), ("thermo-fw", "1.0.0")]
    assert await listed(model="thermo-v2") == [("other", "3.0.0"), ("thermo-fw", "1.0.0")]
    assert await listed(model="thermo") == []
    assert await listed(version="2.0.0") == [("thermo-fw", "2.0.0")]
    assert await listed(name="thermo-fw", model="thermo-v3") == [("thermo-fw", "2.0.0")]
    first = (await admin.get("/api/v1/artifacts", params={"limit": 2})).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = await admin.get("/api/v1/artifacts", params={"limit": 2, "cursor": first["next_cursor"]})
    assert [a["version"] for a in rest.json()["items"]] == ["1.0.0"]
    assert rest.json()["next_cursor"] is None


async def test_show_and_unknown(admin: httpx.AsyncClient) -> None:
    created = (await upload(admin)).json()
    r = await admin.get(f"/api/v1/artifacts/{created['id']}")
    assert r.status_code == 200 and r.json() == created
    r = await admin.get("/api/v1/artifacts/nope")
    assert r.status_code == 404 and r.json()["code"] == "unknown_artifact"


async def test_management_download_streams_the_bytes_with_ranges(
    admin: httpx.AsyncClient,
) -> None:
    created = (await upload(admin)).json()
    url = f"/api/v1/artifacts/{created['id']}/download"
    r = await admin.get(url)
    assert r.status_code == 200 and r.content == PAYLOAD
    assert r.headers["etag"] == f'"{DIGEST}"'
    assert "thermo-fw-2.4.0" in r.headers["content-disposition"]
    r = await admin.get(url, headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == PAYLOAD[100:]


# --- deleting ----------------------------------------------------------------------------------


async def test_delete_removes_the_row_and_the_bytes(admin: httpx.AsyncClient, app: FastAPI) -> None:
    created = (await upload(admin)).json()
    r = await admin.delete(f"/api/v1/artifacts/{created['id']}", params={"reason": "withdrawn"})
    assert r.status_code == 204, r.text
    assert (await admin.get(f"/api/v1/artifacts/{created['id']}")).status_code == 404
    assert stored_files(app) == []
    assert ("artifact.delete", "withdrawn") in await audit_actions(
        admin, f"artifact:{created['id']}"
    )
    assert (await admin.delete(f"/api/v1/artifacts/{created['id']}")).status_code == 404


async def add_deployment(db: Database, artifact_id: str, state: str) -> str:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    deployment_id = f"dep-{state}"
    async with db.write() as session:
        session.add(
            Deployment(
                id=deployment_id,
                name="rollout",
                tenant_id=None,
                kind="update",
                artifact_id=artifact_id,
                target="model = thermo-v2",
                continuous=False,
                policy={},
                state=state,
                phase=0,
                rate=0.0,
                credit=0.0,
                notified_at_rate=0,
                succeeded_at_rate=0,
                seed=0,
                created_by="admin",
                created_at=now,
                updated_at=now,
            )
        )
    return deployment_id


async def test_delete_is_refused_while_a_deployment_uses_the_artifact(
    admin: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    created = (await upload(admin)).json()
    deployment_id = await add_deployment(db, created["id"], "running")
    r = await admin.delete(f"/api/v1/artifacts/{created['id']}")
    assert r.status_code == 409, r.text
    assert (r.json()["code"], r.json()["deployments"]) == ("artifact_in_use", [deployment_id])
    assert stored_files(app) == [created["id"]]


async def test_delete_keeps_an_artifact_that_finished_deployments_name(
    admin: httpx.AsyncClient, app: FastAPI, db: Database
) -> None:
    created = (await upload(admin)).json()
    await add_deployment(db, created["id"], "finished")
    r = await admin.delete(f"/api/v1/artifacts/{created['id']}")
    assert r.status_code == 409 and r.json()["code"] == "artifact_deployed"
    assert stored_files(app) == [created["id"]]


# --- who may ---------------------------------------------------------------------------------


async def test_viewer_reads_but_cannot_upload(admin: httpx.AsyncClient, app: FastAPI) -> None:
    created = (await upload(admin)).json()
    async with as_token_client(admin, await user_token(admin, "vera", "viewer")) as viewer:
        r = await upload(viewer, version="2.5.0")
        assert r.status_code == 403, r.text
        assert (await viewer.get("/api/v1/artifacts")).json()["items"][0]["id"] == created["id"]
        assert (await viewer.get(f"/api/v1/artifacts/{created['id']}/download")).status_code == 200
        assert (await viewer.delete(f"/api/v1/artifacts/{created['id']}")).status_code == 403
    assert stored_files(app) == [created["id"]]


async def test_release_manager_uploads_and_deletes(admin: httpx.AsyncClient) -> None:
    async with as_token_client(admin, await user_token(admin, "rita", "release_manager")) as rm:
        r = await upload(rm)
        assert r.status_code == 201, r.text
        assert r.json()["created_by"].startswith("rita")
        assert (await rm.delete(f"/api/v1/artifacts/{r.json()['id']}")).status_code == 204


async def test_tenant_users_cannot_change_shared_artifacts(admin: httpx.AsyncClient) -> None:
    await admin.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    token = await user_token(admin, "tara", "release_manager", tenant="acme")
    async with as_token_client(admin, token) as tenant_user:
        assert (await upload(tenant_user)).status_code == 403


# --- release keys --------------------------------------------------------------------------


async def test_release_keys_are_added_listed_and_revoked(admin: httpx.AsyncClient) -> None:
    _, public = new_key()
    ci = await trust(
        admin,
        "ci",
        public,
    )
    assert ci["id"] == hashlib.sha256(base64.b64decode(public)).hexdigest()[:16]
    listed = await keys_by_name(admin)
    assert set(listed) == {"server", "ci"}
    assert listed["ci"]["revoked_at"] is None
    r = await admin.delete(f"/api/v1/release-keys/{ci['id']}", headers={"X-Change-Reason": "leak"})
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert (await keys_by_name(admin))["ci"]["revoked_at"] is not None
    assert await audit_actions(admin, f"release_key:{ci['id']}") == [
        ("release_key.revoke", "leak"),
        ("release_key.create", None),
    ]


@pytest.mark.parametrize(
    "public_key",
    ["not base64!", base64.b64encode(b"too short").decode(), base64.b64encode(b"x" * 33).decode()],
)
async def test_a_release_key_must_be_32_byte_ed25519(
    admin: httpx.AsyncClient, public_key: str
) -> None:
    r = await admin.post("/api/v1/release-keys", json={"name": "ci", "public_key": public_key})
    assert r.status_code == 422 and r.json()["field"] == "public_key"


async def test_release_key_conflicts(admin: httpx.AsyncClient) -> None:
    _, public = new_key()
    await trust(admin, "ci", public)
    r = await admin.post("/api/v1/release-keys", json={"name": "ci-2", "public_key": public})
    assert r.status_code == 409
    r = await admin.post("/api/v1/release-keys", json={"name": "ci", "public_key": new_key()[1]})
    assert r.status_code == 409
    r = await admin.post(
        "/api/v1/release-keys", json={"name": "server", "public_key": new_key()[1]}
    )
    assert r.status_code == 422
    server = (await keys_by_name(admin))["server"]
    r = await admin.delete(f"/api/v1/release-keys/{server['id']}")
    assert r.status_code == 409 and r.json()["code"] == "server_key"
    assert (await admin.delete("/api/v1/release-keys/0000000000000000")).status_code == 404


async def test_only_admins_manage_release_keys(admin: httpx.AsyncClient) -> None:
    async with as_token_client(admin, await user_token(admin, "rita", "release_manager")) as rm:
        r = await rm.post("/api/v1/release-keys", json={"name": "ci", "public_key": new_key()[1]})
        assert r.status_code == 403
        assert set(await keys_by_name(rm)) == {"server"}


async def test_the_server_key_survives_a_restart(
    admin: httpx.AsyncClient, settings: Settings, clock: FakeClock
) -> None:
    from fleetkeeper.api.app import create_app

    before = (await keys_by_name(admin))["server"]
    again = create_app(settings, clock=clock)
    async with again.router.lifespan_context(again):
        assert again.state.fleetkeeper.release_key.key_id == before["id"]
    assert list(await keys_by_name(admin)) == ["server"]
