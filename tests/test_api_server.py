from __future__ import annotations

import httpx


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "fleetkeeper_http_requests_total" in r.text


async def test_openapi_documents_every_route_with_schemas(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/devices/import",
        "/api/v1/devices/aggregate",
        "/api/v1/models",
        "/api/v1/groups",
        "/api/v1/groups/{name}/members",
        "/api/v1/audit",
        "/api/v1/tokens",
    ):
        assert path in spec["paths"], path
    assert "DeviceOut" in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["DeviceCreate"].get("examples")


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
