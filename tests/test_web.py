"""The dashboard's foundation: login, sessions, CSRF, role-aware pages, errors as pages."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from fleet import fleet
from webkit import csrf_of, login, web_user

pytestmark = pytest.mark.asyncio


async def test_a_page_without_a_session_sends_the_browser_to_log_in(
    client: httpx.AsyncClient,
) -> None:
    browser = httpx.AsyncClient(transport=client._transport, base_url=client.base_url)
    r = await browser.get("/?q=x")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2F%3Fq%3Dx"
    r = await browser.get("/login?next=/devices")
    assert r.status_code == 200 and 'name="password"' in r.text


async def test_login_opens_a_session_cookie_and_the_overview_shows_the_fleet(
    client: httpx.AsyncClient,
) -> None:
    await fleet(client, {"serial": "SN-1"}, {"serial": "SN-2"})
    await web_user(client, "alice")
    browser = httpx.AsyncClient(transport=client._transport, base_url=client.base_url)
    r = await browser.post(
        "/login", data={"username": "alice", "password": "s3cret-pass", "next": "/"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    r = await browser.get("/")
    assert r.status_code == 200
    assert "Fleet overview" in r.text and ">2</span> devices" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")


async def test_a_wrong_password_is_refused_and_an_outside_next_is_ignored(
    client: httpx.AsyncClient,
) -> None:
    await web_user(client, "alice")
    browser = httpx.AsyncClient(transport=client._transport, base_url=client.base_url)
    r = await browser.post("/login", data={"username": "alice", "password": "nope-nope"})
    assert r.status_code == 401 and "wrong username or password" in r.text
    r = await browser.post(
        "/login",
        data={"username": "alice", "password": "s3cret-pass", "next": "//evil.example/"},
    )
    assert r.headers["location"] == "/"


async def test_logout_needs_the_csrf_token_and_ends_the_session(
    client: httpx.AsyncClient,
) -> None:
    await web_user(client, "alice")
    browser = await login(client, "alice")
    r = await browser.post("/logout", data={"csrf": "forged"})
    assert r.status_code == 403
    assert (await browser.get("/")).status_code == 200  # still logged in
    page = (await browser.get("/")).text
    r = await browser.post("/logout", data={"csrf": csrf_of(page)})
    assert r.status_code == 303
    assert (await browser.get("/")).status_code == 303  # the session is gone


async def test_the_navigation_offers_only_what_the_role_may_see(
    client: httpx.AsyncClient,
) -> None:
    await web_user(client, "vera", role="viewer")
    browser = await login(client, "vera")
    page = (await browser.get("/")).text
    assert 'href="/devices"' in page and 'href="/audit"' not in page


async def test_vendor_assets_are_served_locally(client: httpx.AsyncClient) -> None:
    r = await client.get("/static/vendor/plotly.min.js")
    assert r.status_code == 200 and len(r.content) > 1_000_000
    r = await client.get("/static/vendor/leaflet/leaflet.js")
    assert r.status_code == 200 and b"Leaflet" in r.content
    r = await client.get("/static/app/fk.js")
    assert r.status_code == 200


async def test_an_expired_session_sends_the_browser_to_log_in_again(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await web_user(client, "alice")
    browser = await login(client, "alice")
    app.state.fleetkeeper.clock.advance(hours=13)  # idle longer than 12 h
    assert (await browser.get("/")).status_code == 303


async def test_the_overview_map_draws_the_located_devices_the_query_selects(
    client: httpx.AsyncClient,
) -> None:
    await fleet(
        client,
        {"serial": "SN-1", "location": {"lat": 52.52, "lon": 13.40}, "attributes": {"site": "b"}},
        {"serial": "SN-2", "location": {"lat": 59.91, "lon": 10.75}, "attributes": {"site": "o"}},
        {"serial": "SN-3"},  # no position: not on the map
    )
    await web_user(client, "alice")
    browser = await login(client, "alice")
    r = await browser.get("/ui/data/map")
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    body = r.json()
    assert sorted(f["properties"]["serial"] for f in body["features"]) == ["SN-1", "SN-2"]
    [berlin] = [f for f in body["features"] if f["properties"]["serial"] == "SN-1"]
    assert berlin["geometry"]["coordinates"] == [13.40, 52.52]
    assert berlin["properties"]["online"] is False and body["truncated"] is False
    r = await browser.get("/ui/data/map", params={"q": "attributes.site = o"})
    assert [f["properties"]["serial"] for f in r.json()["features"]] == ["SN-2"]
