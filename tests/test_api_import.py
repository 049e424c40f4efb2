from __future__ import annotations

import httpx

from fleet import model

CSV = (
    "serial,model,firmware_version,tags,attributes.site,attributes.floor,location.lat,location.lon\n"
    "SN-1,thermo-v2,1.0.0,pilot;north,berlin,3,52.5,13.4\n"
    "SN-2,thermo-v2,1.1.0,,hamburg,007,,\n"
)


async def test_csv_import_creates_every_row(client: httpx.AsyncClient) -> None:
    await model(client)
    r = await client.post(
        "/api/v1/devices/import", content=CSV, headers={"content-type": "text/csv"}
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"created": 2}
    page = (await client.get("/api/v1/devices", params={"q": "attributes.site = berlin"})).json()
    (d,) = page["items"]
    assert d["tags"] == ["north", "pilot"]
    assert d["attributes"] == {"site": "berlin", "floor": 3}
    assert d["location"]["lat"] == 52.5
    other = (await client.get("/api/v1/devices", params={"q": "serial = SN-2"})).json()["items"][0]
    assert other["attributes"]["floor"] == "007"


async def test_json_import_creates_every_row(client: httpx.AsyncClient) -> None:
    await model(client)
    rows = [{"serial": f"J-{i}", "model": "thermo-v2"} for i in range(50)]
    r = await client.post("/api/v1/devices/import", json=rows)
    assert r.status_code == 201 and r.json()["created"] == 50


async def test_one_bad_row_imports_nothing_and_names_every_problem(
    client: httpx.AsyncClient,
) -> None:
    await model(client)
    await client.post("/api/v1/devices", json={"serial": "TAKEN", "model": "thermo-v2"})
    body = (
        "serial,model,firmware_version\n"
        "OK-1,thermo-v2,1.0\n"
        "OK-2,nope,1.0\n"
        "TAKEN,thermo-v2,1.0\n"
        "OK-1,thermo-v2,1.0\n"
        ",thermo-v2,1.0\n"
    )
    r = await client.post(
        "/api/v1/devices/import", content=body, headers={"content-type": "text/csv"}
    )
    assert r.status_code == 422
    problems = {(e["row"], e["field"]) for e in r.json()["errors"]}
    assert problems == {(2, "model"), (3, "serial"), (4, "serial"), (5, "serial")}
    assert r.json()["error_count"] == 4
    page = (await client.get("/api/v1/devices")).json()
    assert [d["serial"] for d in page["items"]] == ["TAKEN"]


async def test_unknown_csv_column_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/devices/import",
        content="serial,model,colour\n",
        headers={"content-type": "text/csv"},
    )
    assert r.status_code == 400 and "colour" in r.json()["detail"]


async def test_wrong_content_type_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/devices/import", content="x", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400


async def test_import_is_one_audit_record_per_tenant(client: httpx.AsyncClient) -> None:
    await model(client)
    await client.post("/api/v1/devices/import", content=CSV, headers={"content-type": "text/csv"})
    items = (await client.get("/api/v1/audit", params={"action": "device.import"})).json()["items"]
    assert len(items) == 1 and items[0]["after"]["count"] == 2
