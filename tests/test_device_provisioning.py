from __future__ import annotations

import httpx
from cryptography import x509

from devicekit import Device, online_device, provisioning_token
from fleetkeeper.clock import FakeClock


async def _events(admin: httpx.AsyncClient) -> list[str]:
    return [e["kind"] for e in (await admin.get("/api/v1/security-events")).json()["items"]]


async def test_token_enrolment_lands_in_pending_until_accepted(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    dev = Device(client, "P-1")
    r = await dev.enroll(await provisioning_token(client))
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "pending"
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    ca = x509.load_pem_x509_certificate(r.json()["ca_certificate"].encode())
    cert.verify_directly_issued_by(ca)
    assert (await dev.login()).status_code == 200
    r = await dev.call("POST", "/checkin", json={})
    assert r.json()["state"] == "pending"
    r = await dev.call("POST", "/telemetry", json={"points": []})
    assert r.status_code == 403 and r.json()["code"] == "device_pending"
    r = await client.post(f"/api/v1/devices/{dev.device_id}/accept", json={"reason": "ok"})
    assert r.status_code == 200 and r.json()["state"] == "active"
    assert (await dev.call("POST", "/telemetry", json={"points": []})).status_code == 200


async def test_rejected_device_is_retired_and_refused(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    dev = Device(client, "P-1")
    await dev.enroll(await provisioning_token(client))
    await dev.login()
    r = await client.post(f"/api/v1/devices/{dev.device_id}/reject")
    assert r.json()["state"] == "retired"
    r = await dev.call("POST", "/checkin", json={})
    assert r.status_code == 403 and r.json()["code"] == "device_retired"


async def test_auto_accept_token_makes_the_device_active(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    r = await client.get(f"/api/v1/devices/{dev.device_id}")
    assert r.json()["state"] == "active" and r.json()["serial"] == "DEV-1"


async def test_preauthorised_device_enrols_without_a_token(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    dev = Device(client, "ZT-1")
    r = await client.post(
        "/api/v1/devices",
        json={"serial": "ZT-1", "model": "thermo-v2", "public_key": dev.public_key},
    )
    assert r.status_code == 201, r.text
    r = await dev.enroll()
    assert r.status_code == 201 and r.json()["state"] == "active"
    assert (
        r.json()["device_id"]
        == (await client.get("/api/v1/devices", params={"q": "serial = ZT-1"})).json()["items"][0][
            "id"
        ]
    )


async def test_preauthorised_serial_with_another_key_is_refused(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    real = Device(client, "ZT-1")
    await client.post(
        "/api/v1/devices",
        json={"serial": "ZT-1", "model": "thermo-v2", "public_key": real.public_key},
    )
    r = await Device(client, "ZT-1").enroll()
    assert r.status_code == 403 and r.json()["code"] == "not_preauthorised"
    assert "enroll_key_mismatch" in await _events(client)


async def test_no_token_and_no_preauthorisation_is_refused(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    r = await Device(client, "X-1").enroll()
    assert r.status_code == 403 and r.json()["code"] == "not_preauthorised"


async def test_enrolling_twice_is_refused(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    r = await dev.enroll(await provisioning_token(client, auto_accept=True))
    assert r.status_code == 409 and r.json()["code"] == "already_enrolled"
    assert r.json()["device_id"] == dev.device_id  # same key: the id comes back
    r = await Device(client, dev.serial).enroll(await provisioning_token(client, auto_accept=True))
    assert r.status_code == 409 and "device_id" not in r.json()


async def test_token_use_limit_expiry_and_scope(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    await client.post("/api/v1/models", json={"name": "other"})
    once = await provisioning_token(client, max_uses=1)
    assert (await Device(client, "A-1").enroll(once)).status_code == 201
    r = await Device(client, "A-2").enroll(once)
    assert r.status_code == 403 and "used up" in r.json()["detail"]
    scoped = await provisioning_token(client, model="other", serial_pattern="OT-*")
    assert (await Device(client, "A-3").enroll(scoped)).status_code == 403
    assert (await Device(client, "OT-3", model="other").enroll(scoped)).status_code == 201
    short = await provisioning_token(
        client, expires_at=clock.now().replace(year=2026, month=1, day=2).isoformat()
    )
    clock.advance(days=2)
    r = await Device(client, "A-4").enroll(short)
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    assert (await _events(client)).count("provisioning_refused") == 3


async def test_bad_proof_is_refused_and_recorded(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    dev = Device(client, "B-1")
    token = await provisioning_token(client)
    r = await client.post(
        "/device/v1/enroll",
        json={
            "serial": "B-1",
            "model": "thermo-v2",
            "public_key": dev.public_key,
            "proof": dev.sign("enroll:SOMETHING-ELSE"),
            "provisioning_token": token,
        },
    )
    assert r.status_code == 401 and r.json()["code"] == "signature_invalid"
    assert "signature_invalid" in await _events(client)


async def test_replayed_challenge_and_wrong_signature_are_refused(
    client: httpx.AsyncClient,
) -> None:
    dev = await online_device(client)
    r = await client.post("/device/v1/auth/challenge", json={"device_id": dev.device_id})
    challenge = r.json()["challenge"]
    good = {
        "device_id": dev.device_id,
        "challenge": challenge,
        "signature": dev.sign(f"auth:{dev.device_id}:{challenge}"),
    }
    assert (await client.post("/device/v1/auth/token", json=good)).status_code == 200
    replay = await client.post("/device/v1/auth/token", json=good)
    assert replay.status_code == 401 and replay.json()["code"] == "challenge_invalid"
    r = await client.post("/device/v1/auth/challenge", json={"device_id": dev.device_id})
    bad = {
        "device_id": dev.device_id,
        "challenge": r.json()["challenge"],
        "signature": dev.sign("auth:someone-else"),
    }
    r = await client.post("/device/v1/auth/token", json=bad)
    assert r.status_code == 401 and r.json()["code"] == "signature_invalid"
    kinds = await _events(client)
    assert "challenge_invalid" in kinds and "signature_invalid" in kinds


async def test_expired_challenge_is_refused(client: httpx.AsyncClient, clock: FakeClock) -> None:
    dev = await online_device(client)
    r = await client.post("/device/v1/auth/challenge", json={"device_id": dev.device_id})
    challenge = r.json()["challenge"]
    clock.advance(seconds=61)
    r = await client.post(
        "/device/v1/auth/token",
        json={
            "device_id": dev.device_id,
            "challenge": challenge,
            "signature": dev.sign(f"auth:{dev.device_id}:{challenge}"),
        },
    )
    assert r.status_code == 401 and r.json()["code"] == "challenge_invalid"


async def test_access_token_expires(client: httpx.AsyncClient, clock: FakeClock) -> None:
    dev = await online_device(client)
    assert (await dev.call("POST", "/checkin", json={})).status_code == 200
    clock.advance(hours=2)
    r = await dev.call("POST", "/checkin", json={})
    assert r.status_code == 401 and r.json()["code"] == "token_expired"
    assert (await dev.login()).status_code == 200
    assert (await dev.call("POST", "/checkin", json={})).status_code == 200


async def test_forged_token_is_refused(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    assert dev.token is not None
    parts = dev.token.split(".")
    parts[2] = "7"  # another credential generation
    dev.token = ".".join(parts)
    r = await dev.call("POST", "/checkin", json={})
    assert r.status_code == 401 and r.json()["code"] == "token_invalid"


async def test_retirement_revokes_credentials_and_asks_for_a_wipe(
    client: httpx.AsyncClient,
) -> None:
    dev = await online_device(client)
    r = await client.post(f"/api/v1/devices/{dev.device_id}/retire", json={"reason": "end of life"})
    assert r.status_code == 200 and r.json()["state"] == "retired"
    r = await dev.call("POST", "/checkin", json={})
    assert r.status_code == 403
    assert r.json()["code"] == "device_retired" and r.json()["wipe"] is True
    assert (await dev.login()).status_code == 403
    assert "retired_device_call" in await _events(client)
    audit = (await client.get("/api/v1/audit", params={"action": "device.retire"})).json()
    assert audit["items"][0]["reason"] == "end of life"


async def test_quarantined_device_may_check_in_but_not_send_data(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    await client.patch(f"/api/v1/devices/{dev.device_id}", json={"state": "quarantined"})
    assert (await dev.call("POST", "/checkin", json={})).status_code == 200
    r = await dev.call("POST", "/telemetry", json={"points": []})
    assert r.status_code == 403 and r.json()["code"] == "device_quarantined"
    assert "quarantined_device_call" in await _events(client)


async def test_replacement_moves_identity_and_retires_the_old(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    old = (
        await client.post(
            "/api/v1/devices",
            json={
                "serial": "OLD",
                "model": "thermo-v2",
                "tenant": "acme",
                "tags": ["roof"],
                "attributes": {"site": "x"},
                "location": {"lat": 1, "lon": 2},
            },
        )
    ).json()
    new = (
        await client.post("/api/v1/devices", json={"serial": "NEW", "model": "thermo-v2"})
    ).json()
    await client.post("/api/v1/groups", json={"name": "lab", "tenant": "acme"})
    await client.post("/api/v1/groups/lab/members", json={"devices": [old["id"]]})
    r = await client.post(
        f"/api/v1/devices/{old['id']}/replace",
        json={"new_device": new["id"], "reason": "broken display"},
    )
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["tenant"] == "acme" and moved["tags"] == ["roof"] and moved["groups"] == ["lab"]
    assert moved["attributes"] == {"site": "x"} and moved["location"]["lat"] == 1
    retired = (await client.get(f"/api/v1/devices/{old['id']}")).json()
    assert retired["state"] == "retired" and retired["groups"] == []
    actions = [
        i["action"]
        for i in (await client.get("/api/v1/audit", params={"limit": 5})).json()["items"]
    ]
    assert actions[:2] == ["device.retire", "device.replace"]


async def test_customer_claims_a_device_once(client: httpx.AsyncClient) -> None:
    from fleet import as_token_client, user_token

    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    await client.post("/api/v1/tenants", json={"id": "cust", "name": "Customer"})
    await client.post(
        "/api/v1/devices",
        json={"serial": "LBL-1", "model": "thermo-v2", "claim_code": "K7Q2-M9XP-4TZA-8WRN"},
    )
    async with as_token_client(
        client, await user_token(client, "carol", "operator", "cust")
    ) as carol:
        r = await carol.post("/api/v1/claims", json={"serial": "LBL-1", "claim_code": "wrong-code"})
        assert r.status_code == 404
        r = await carol.post(
            "/api/v1/claims", json={"serial": "LBL-1", "claim_code": "K7Q2-M9XP-4TZA-8WRN"}
        )
        assert r.status_code == 200 and r.json()["tenant"] == "cust"
        r = await carol.post(
            "/api/v1/claims", json={"serial": "LBL-1", "claim_code": "K7Q2-M9XP-4TZA-8WRN"}
        )
        assert r.status_code in (404, 409)


async def test_client_certificate_from_a_trusted_proxy_authenticates(
    settings,
    clock: FakeClock,
    db,  # type: ignore[no-untyped-def]
) -> None:
    from urllib.parse import quote

    from conftest import ADMIN_TOKEN
    from fleetkeeper.api.app import create_app

    app = create_app(
        settings.model_copy(update={"client_cert_header": "X-Client-Cert"}), clock=clock
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as admin:
            await admin.post("/api/v1/models", json={"name": "thermo-v2"})
            dev = Device(admin, "CERT-1")
            r = await dev.enroll(await provisioning_token(admin, auto_accept=True))
            cert = quote(r.json()["certificate"])
            headers = {"Authorization": "", "X-Client-Cert": cert}
            ok = await admin.post("/device/v1/checkin", json={}, headers=headers)
            assert ok.status_code == 200, ok.text
            ca = (await admin.get("/api/v1/device-ca")).text
            assert "BEGIN CERTIFICATE" in ca
            forged = await admin.post(
                "/device/v1/checkin",
                json={},
                headers={"Authorization": "", "X-Client-Cert": quote(ca)},
            )
            assert forged.status_code == 401
            await admin.post(f"/api/v1/devices/{dev.device_id}/retire")
            gone = await admin.post("/device/v1/checkin", json={}, headers=headers)
            assert gone.status_code == 403


async def test_certificate_header_is_ignored_unless_configured(client: httpx.AsyncClient) -> None:
    from urllib.parse import quote

    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    dev = Device(client, "CERT-1")
    r = await dev.enroll(await provisioning_token(client, auto_accept=True))
    headers = {"Authorization": "", "X-Client-Cert": quote(r.json()["certificate"])}
    r = await client.post("/device/v1/checkin", json={}, headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "token_missing"


async def test_a_token_expiry_without_a_time_zone_is_refused_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/api/v1/provisioning-tokens", json={"expires_at": "2026-01-02T00:00:00"})
    assert r.status_code == 422, r.text
    assert "expires_at" in r.text
