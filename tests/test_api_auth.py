from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from fleet import device, fleet, model, serials, user_token
from fleetkeeper.clock import FakeClock


def as_token(client: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=client._transport,
        base_url=client.base_url,
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_missing_token_is_401_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/devices", headers={"Authorization": ""})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"] == "Bearer"


async def test_unknown_token_is_401(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/devices", headers={"Authorization": "Bearer fkt_nope"})
    assert r.status_code == 401


async def test_viewer_may_read_but_not_write(client: httpx.AsyncClient) -> None:
    await fleet(client, {"serial": "SN-1"})
    async with as_token(client, await user_token(client, "vera", "viewer")) as viewer:
        assert (await viewer.get("/api/v1/devices")).status_code == 200
        r = await viewer.post("/api/v1/devices", json={"serial": "SN-2", "model": "thermo-v2"})
        assert r.status_code == 403
        assert "devices:write" in r.json()["detail"]


async def test_auditor_reads_audit_but_operator_does_not(client: httpx.AsyncClient) -> None:
    async with as_token(client, await user_token(client, "aud", "auditor")) as auditor:
        assert (await auditor.get("/api/v1/audit")).status_code == 200
    async with as_token(client, await user_token(client, "op", "operator")) as operator:
        assert (await operator.get("/api/v1/audit")).status_code == 403


async def test_token_cannot_exceed_its_users_role(client: httpx.AsyncClient) -> None:
    async with as_token(client, await user_token(client, "op", "operator")) as operator:
        r = await operator.post("/api/v1/tokens", json={"name": "x", "role": "admin"})
        assert r.status_code == 403


async def test_token_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    from sqlalchemy import select

    from fleetkeeper.store.models import ApiToken

    r = await client.post("/api/v1/tokens", json={"name": "ci"})
    secret = r.json()["token"]
    listed = (await client.get("/api/v1/tokens")).json()["items"]
    assert all("token" not in t for t in listed)
    async with app.state.fleetkeeper.db.read() as session:
        hashes = (await session.scalars(select(ApiToken.token_hash))).all()
    assert secret not in hashes and all(secret not in h for h in hashes)


async def test_revoked_token_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/tokens", json={"name": "ci"})
    token = r.json()
    async with as_token(client, token["token"]) as c:
        assert (await c.get("/api/v1/devices")).status_code == 200
        assert (await client.delete(f"/api/v1/tokens/{token['id']}")).status_code == 200
        r = await c.get("/api/v1/devices")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


async def test_token_expires(client: httpx.AsyncClient, clock: FakeClock) -> None:
    r = await client.post("/api/v1/tokens", json={"name": "short", "expires_in_days": 1})
    async with as_token(client, r.json()["token"]) as c:
        assert (await c.get("/api/v1/devices")).status_code == 200
        clock.advance(days=2)
        r = await c.get("/api/v1/devices")
        assert r.status_code == 401 and "expired" in r.json()["detail"]


async def test_tenant_users_see_only_their_tenant(client: httpx.AsyncClient) -> None:
    assert (
        await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    ).status_code == 201
    await model(client)
    await device(client, "MINE", tenant="acme")
    other = await device(client, "THEIRS")
    async with as_token(client, await user_token(client, "ann", "operator", "acme")) as ann:
        assert serials((await ann.get("/api/v1/devices")).json()) == ["MINE"]
        assert (
            serials((await ann.get("/api/v1/devices", params={"q": "serial = THEIRS"})).json())
            == []
        )
        assert (await ann.get(f"/api/v1/devices/{other['id']}")).status_code == 404
        agg = (await ann.get("/api/v1/devices/aggregate", params={"by": "tenant"})).json()
        assert agg["total"] == 1
        r = await ann.post(
            "/api/v1/devices", json={"serial": "X", "model": "thermo-v2", "tenant": "default"}
        )
        assert r.status_code == 403
        r = await ann.post("/api/v1/devices", json={"serial": "X", "model": "thermo-v2"})
        assert r.json()["tenant"] == "acme"


async def test_env_admin_token_is_ensured_and_changes_revoke_the_old(
    settings,
    clock: FakeClock,
    db,  # type: ignore[no-untyped-def]
) -> None:
    from fleetkeeper.api.app import create_app

    for value in ("fkt_first-env-token-value", "fkt_second-env-token-value"):
        app = create_app(settings.model_copy(update={"admin_token": value}), clock=clock)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                ok = await c.get("/api/v1/devices", headers={"Authorization": f"Bearer {value}"})
                old = await c.get(
                    "/api/v1/devices", headers={"Authorization": "Bearer fkt_first-env-token-value"}
                )
        assert ok.status_code == 200
    assert old.status_code == 401


async def test_first_start_without_env_token_makes_one_admin_token(
    settings,
    clock: FakeClock,
    db,  # type: ignore[no-untyped-def]
) -> None:
    from fleetkeeper.api.app import create_app

    app = create_app(settings.model_copy(update={"admin_token": None}), clock=clock)
    async with app.router.lifespan_context(app):
        token = app.state.new_admin_token
        assert token and token.startswith("fkt_")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
    again = create_app(settings.model_copy(update={"admin_token": None}), clock=clock)
    async with again.router.lifespan_context(again):
        assert again.state.new_admin_token is None


@pytest.mark.parametrize("role", ["admin", "operator", "viewer", "auditor"])
async def test_each_builtin_role_can_read_devices(client: httpx.AsyncClient, role: str) -> None:
    async with as_token(client, await user_token(client, f"u-{role}", role)) as c:
        assert (await c.get("/api/v1/devices")).status_code == 200
