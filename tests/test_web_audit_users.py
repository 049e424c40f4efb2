"""The dashboard's audit log (filters, pages, chain check), one's account (API tokens shown
once, revoked; password) and the users page (create, disable, enable, everyone's tokens)."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from fleetkeeper.clock import FakeClock
from fleetkeeper.store.models import ApiToken, AuditRecord, User
from fleetkeeper.web.pages import audit as audit_pages
from webkit import PASSWORD, csrf_of, login, web_user

pytestmark = pytest.mark.asyncio


def rows_of(page: str, marker: str = "<tbody>") -> str:
    return page.split(marker, 1)[1].split("</tbody>", 1)[0] if marker in page else ""


async def models(client: httpx.AsyncClient, clock: FakeClock, *names: str) -> None:
    """One audited change per name, an hour apart."""
    for name in names:
        clock.advance(hours=1)
        r = await client.post("/api/v1/models", json={"name": name})
        assert r.status_code == 201, r.text


# --- audit ---------------------------------------------------------------------------------------


async def test_the_audit_log_filters_by_actor_action_target_and_time(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    await web_user(client, "ada", role="auditor")
    start = clock.now()
    await models(client, clock, "thermo-v1", "thermo-v2", "thermo-v3")
    browser = await login(client, "ada")
    page = (await browser.get("/audit")).text
    body = rows_of(page)
    positions = [body.find(f"model:{n}") for n in ("thermo-v3", "thermo-v2", "thermo-v1")]
    assert -1 not in positions and positions == sorted(positions)  # newest first
    assert "user.create" in body
    only = rows_of((await browser.get("/audit", params={"action": "model.create"})).text)
    assert only.count("model.create") >= 3 and "user.create" not in only
    one = rows_of((await browser.get("/audit", params={"target": "model:thermo-v2"})).text)
    assert "model:thermo-v2" in one and "model:thermo-v1" not in one
    nobody = (await browser.get("/audit", params={"actor": "nobody"})).text
    assert "No audit records match." in nobody
    window = {"from": f"{start.replace(hour=1):%Y-%m-%dT%H:%M}", "to": "2026-01-01T02:30"}
    timed = rows_of((await browser.get("/audit", params=window)).text)
    assert "model:thermo-v1" in timed and "model:thermo-v2" in timed
    assert "model:thermo-v3" not in timed
    relative = rows_of((await browser.get("/audit", params={"from": "-30m"})).text)
    assert "model:thermo-v3" in relative and "model:thermo-v2" not in relative
    bad = await browser.get("/audit", params={"from": "yesterday"})
    assert bad.status_code == 200 and 'class="flash error"' in bad.text


async def test_the_audit_log_pages_newest_first(
    client: httpx.AsyncClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await web_user(client, "ada", role="auditor")
    names = [f"m-{i}" for i in range(5)]
    await models(client, clock, *names)
    monkeypatch.setattr(audit_pages, "PAGE", 2)
    browser = await login(client, "ada")
    seen: list[str] = []
    url: str | None = "/audit?action=model.create"
    while url:
        page = (await browser.get(url)).text
        seen += re.findall(r"model:(m-\d)</a>", rows_of(page))
        found = re.search(r'<a href="([^"]+)" rel="next"', page)
        url = html.unescape(found.group(1)) if found else None
    assert seen == list(reversed(names))


async def test_the_audit_log_is_for_audit_readers_only(client: httpx.AsyncClient) -> None:
    await web_user(client, "olga", role="operator")
    browser = await login(client, "olga")
    assert 'href="/audit"' not in (await browser.get("/")).text
    assert (await browser.get("/audit")).status_code == 403


async def test_verifying_the_chain_says_intact_and_names_a_tampered_record(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    await models(client, clock, "thermo-v1", "thermo-v2")
    await web_user(client, "alice")
    browser = await login(client, "alice")
    page = (await browser.get("/audit")).text
    assert 'href="/audit?verify=1"' in page and "Intact" not in page
    assert "Intact:" in (await browser.get("/audit", params={"verify": 1})).text
    async with app.state.fleetkeeper.db.write() as session:
        victim = await session.scalar(
            select(AuditRecord.id).where(AuditRecord.target == "model:thermo-v1")
        )
        await session.execute(
            update(AuditRecord).where(AuditRecord.id == victim).values(actor="mallory")
        )
    page = (await browser.get("/audit", params={"verify": 1})).text
    assert f"Broken at record {victim}" in page and "altered after it was written" in page


async def test_a_tenant_auditor_sees_only_its_tenant_and_cannot_walk_the_chain(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    assert r.status_code == 201
    r = await client.post(
        "/api/v1/users",
        json={"username": "amy", "role": "auditor", "password": PASSWORD, "tenant": "acme"},
    )
    assert r.status_code == 201
    await client.post("/api/v1/models", json={"name": "thermo-v2"})  # no tenant's
    browser = await login(client, "amy")
    page = (await browser.get("/audit")).text
    body = rows_of(page)
    assert "user:amy" in body and "tenant:acme" in body
    assert "model:thermo-v2" not in body and "user:admin" not in body
    assert "verify=1" not in page
    assert "Intact" not in (await browser.get("/audit", params={"verify": 1})).text


# --- the account: API tokens and password --------------------------------------------------------


async def test_a_token_made_on_the_account_page_is_shown_once_works_and_can_be_revoked(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await web_user(client, "olga", role="operator")
    browser = await login(client, "olga")
    page = (await browser.get("/account")).text
    r = await browser.post(
        "/account/tokens",
        data={"csrf": csrf_of(page), "name": "ci", "role": "viewer", "expires_in_days": "30"},
    )
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    secret = re.search(r'id="new-token" class="secret" value="(fkt_[^"]+)"', r.text)
    assert secret, "the new token is shown"
    api = httpx.AsyncClient(
        transport=client._transport,
        base_url=client.base_url,
        headers={"Authorization": f"Bearer {secret.group(1)}"},
    )
    assert (await api.get("/api/v1/devices")).status_code == 200
    assert (await api.post("/api/v1/models", json={"name": "x"})).status_code == 403  # viewer
    page = (await browser.get("/account")).text
    assert secret.group(1) not in page and secret.group(1)[:8] in page  # never again
    async with app.state.fleetkeeper.db.read() as session:
        token = await session.scalar(select(ApiToken).where(ApiToken.name == "ci"))
    assert token is not None and token.role == "viewer"
    r = await browser.post(
        f"/tokens/{token.id}/revoke", data={"csrf": csrf_of(page), "next": "/account"}
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/account?ok=")
    assert (await api.get("/api/v1/devices")).status_code == 401
    actions = (await client.get("/api/v1/audit", params={"target": f"token:{token.id}"})).json()
    assert [(i["action"], i["actor"]) for i in actions["items"]] == [
        ("token.revoke", "olga/web"),
        ("token.create", "olga/web"),
    ]


async def test_a_token_never_exceeds_its_user_and_needs_the_csrf_token(
    client: httpx.AsyncClient,
) -> None:
    await web_user(client, "olga", role="operator")
    browser = await login(client, "olga")
    page = (await browser.get("/account")).text
    assert '<option value="admin"' not in page and '<option value="operator"' in page
    r = await browser.post(
        "/account/tokens", data={"csrf": csrf_of(page), "name": "root", "role": "admin"}
    )
    assert r.status_code == 403
    r = await browser.post("/account/tokens", data={"name": "ci"})
    assert r.status_code == 403
    r = await browser.post("/account/tokens", data={"csrf": "forged", "name": "ci"})
    assert r.status_code == 403
    assert "You have no usable API tokens." in (await browser.get("/account")).text


async def test_a_viewer_holds_no_tokens_and_is_refused_when_asking_anyway(
    client: httpx.AsyncClient,
) -> None:
    await web_user(client, "vera", role="viewer")
    browser = await login(client, "vera")
    page = (await browser.get("/account")).text
    assert "holds no API tokens" in page and 'action="/account/tokens"' not in page
    r = await browser.post("/account/tokens", data={"csrf": csrf_of(page), "name": "x"})
    assert r.status_code == 403
    assert (await browser.get("/users")).status_code == 403


@pytest.mark.parametrize("role", ["admin", "viewer"])
async def test_any_user_changes_their_password_after_proving_the_current_one(
    client: httpx.AsyncClient, role: str
) -> None:
    await web_user(client, "alice", role=role)
    browser = await login(client, "alice")
    csrf = csrf_of((await browser.get("/account")).text)
    new = "an0ther-pass"
    r = await browser.post(
        "/account/password",
        data={"csrf": csrf, "current": "wrong-one", "password": new, "confirm": new},
    )
    assert "error=" in r.headers["location"]
    r = await browser.post(
        "/account/password",
        data={"csrf": csrf, "current": PASSWORD, "password": new, "confirm": new},
    )
    assert "ok=" in r.headers["location"]
    await login(client, "alice", new)


# --- users ---------------------------------------------------------------------------------------


async def test_an_administrator_creates_disables_and_enables_users(
    client: httpx.AsyncClient,
) -> None:
    await web_user(client, "alice")
    admin = await login(client, "alice")
    page = (await admin.get("/users")).text
    assert 'id="user-alice"' in page
    assert 'action="/users/alice/disable"' not in page  # not oneself
    r = await admin.post(
        "/users",
        data={
            "csrf": csrf_of(page),
            "username": "bob",
            "role": "operator",
            "tenant": "default",
            "password": PASSWORD,
        },
    )
    assert r.status_code == 303 and "ok=" in r.headers["location"]
    bob = await login(client, "bob")
    assert (await bob.get("/alerts")).status_code == 200
    page = (await admin.get("/users")).text
    assert 'id="user-bob"' in page and 'action="/users/bob/disable"' in page
    r = await admin.post("/users/bob/disable", data={"csrf": csrf_of(page), "reason": "left"})
    assert r.status_code == 303 and "ok=" in r.headers["location"]
    assert (await bob.get("/alerts")).status_code == 303  # the session no longer opens
    page = (await admin.get("/users")).text
    assert 'action="/users/bob/enable"' in page
    r = await admin.post("/users/bob/enable", data={"csrf": csrf_of(page)})
    assert (await bob.get("/alerts")).status_code == 200
    r = await admin.post("/users/alice/disable", data={"csrf": csrf_of(page)})
    assert "error=" in r.headers["location"]
    users = (await client.get("/api/v1/users")).json()["items"]
    assert {u["username"]: u["tenant"] for u in users}["bob"] == "default"
    trail = (await client.get("/api/v1/audit", params={"target": "user:bob"})).json()["items"]
    assert [(i["action"], i["reason"]) for i in trail] == [
        ("user.update", None),
        ("user.update", "left"),
        ("user.create", None),
    ]
    r = await admin.post(
        "/users", data={"csrf": csrf_of(page), "username": "bob", "role": "viewer"}
    )
    assert "error=" in r.headers["location"]  # taken


async def test_an_administrator_sees_and_revokes_everyones_tokens(
    client: httpx.AsyncClient,
) -> None:
    await web_user(client, "alice")
    await web_user(client, "olga", role="operator")
    olga = await login(client, "olga")
    r = await olga.post(
        "/account/tokens", data={"csrf": csrf_of((await olga.get("/account")).text), "name": "ci"}
    )
    secret = re.search(r'value="(fkt_[^"]+)"', r.text)
    assert secret
    admin = await login(client, "alice")
    page = (await admin.get("/users")).text
    section = page.split("Everyone's API tokens", 1)[1]
    [token_id] = re.findall(r'<tr id="token-([^"]+)">\s*<td>ci</td>\s*<td>olga</td>', section)
    r = await admin.post(
        f"/tokens/{token_id}/revoke", data={"csrf": csrf_of(page), "next": "/users"}
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/users?ok=")
    api = httpx.AsyncClient(
        transport=client._transport,
        base_url=client.base_url,
        headers={"Authorization": f"Bearer {secret.group(1)}"},
    )
    assert (await api.get("/api/v1/devices")).status_code == 401
    assert f'id="token-{token_id}"' not in (await admin.get("/users")).text
    assert f'id="token-{token_id}"' in (await admin.get("/users?revoked=1")).text


async def test_users_are_for_user_managers_and_stay_in_their_tenant(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await web_user(client, "olga", role="operator")
    olga = await login(client, "olga")
    csrf = csrf_of((await olga.get("/account")).text)
    assert (await olga.get("/users")).status_code == 403
    r = await olga.post("/users", data={"csrf": csrf, "username": "eve", "role": "admin"})
    assert r.status_code == 403
    assert (await olga.post("/users/olga/disable", data={"csrf": csrf})).status_code == 403
    r = await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    assert r.status_code == 201
    r = await client.post(
        "/api/v1/users",
        json={"username": "tess", "role": "admin", "password": PASSWORD, "tenant": "acme"},
    )
    assert r.status_code == 201
    tess = await login(client, "tess")
    page = (await tess.get("/users")).text
    assert 'id="user-tess"' in page and 'id="user-olga"' not in page
    assert "all tenants (platform user)" not in page
    r = await tess.post("/users/olga/disable", data={"csrf": csrf_of(page)})
    assert r.status_code == 404
    r = await tess.post(
        "/users",
        data={"csrf": csrf_of(page), "username": "tim", "role": "viewer", "tenant": "acme"},
    )
    assert "ok=" in r.headers["location"]
    async with app.state.fleetkeeper.db.read() as session:
        tim = await session.scalar(select(User).where(User.username == "tim"))
        olga_row = await session.scalar(select(User).where(User.username == "olga"))
    assert tim is not None and tim.tenant_id == "acme"
    assert olga_row is not None and not olga_row.disabled
