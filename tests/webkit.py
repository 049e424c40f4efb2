"""Logging a test client into the dashboard, and reading what a page says."""

from __future__ import annotations

import re

import httpx

PASSWORD = "s3cret-pass"


async def web_user(client: httpx.AsyncClient, username: str, role: str = "admin") -> None:
    r = await client.post(
        "/api/v1/users",
        json={"username": username, "role": role, "password": PASSWORD},
    )
    assert r.status_code == 201, r.text


async def login(
    app_client: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> httpx.AsyncClient:
    """A browser-like client (cookies, no bearer token) logged in as `username`."""
    browser = httpx.AsyncClient(transport=app_client._transport, base_url=app_client.base_url)
    r = await browser.post("/login", data={"username": username, "password": password})
    assert r.status_code == 303, r.text
    return browser


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)
