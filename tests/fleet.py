"""Builders that make a fleet in a line, through the public API."""

from __future__ import annotations

from typing import Any

import httpx


async def model(
    client: httpx.AsyncClient, name: str = "thermo-v2", **fields: Any
) -> dict[str, Any]:
    r = await client.post("/api/v1/models", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def device(client: httpx.AsyncClient, serial: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("model", "thermo-v2")
    r = await client.post("/api/v1/devices", json={"serial": serial, **fields})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def fleet(client: httpx.AsyncClient, *specs: dict[str, Any]) -> list[dict[str, Any]]:
    """One device per spec; each spec needs at least `serial`. Creates the default model."""
    await model(client)
    return [await device(client, **spec) for spec in specs]


async def user_token(
    client: httpx.AsyncClient, username: str, role: str, tenant: str | None = None
) -> str:
    r = await client.post(
        "/api/v1/users",
        json={"username": username, "role": role, "tenant": tenant, "password": "s3cret-pass"},
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/tokens", json={"name": f"{username}-token", "user": username})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def serials(page: dict[str, Any]) -> list[str]:
    return sorted(d["serial"] for d in page["items"])


def as_token_client(client: httpx.AsyncClient, token: str) -> httpx.AsyncClient:
    """Another client on the same app, acting with `token`."""
    return httpx.AsyncClient(
        transport=client._transport,
        base_url=client.base_url,
        headers={"Authorization": f"Bearer {token}"},
    )
