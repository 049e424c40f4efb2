"""A device in a line: its own key, enrolment and access token, over raw HTTP."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Device:
    http: httpx.AsyncClient
    serial: str
    model: str = "thermo-v2"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    device_id: str | None = None
    token: str | None = None

    @property
    def public_key(self) -> str:
        return b64(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, message: str) -> str:
        return b64(self.key.sign(message.encode()))

    async def enroll(self, token: str | None = None, **extra: Any) -> httpx.Response:
        body = {
            "serial": self.serial,
            "model": self.model,
            "public_key": self.public_key,
            "proof": self.sign(f"enroll:{self.serial}:{self.public_key}"),
            **extra,
        }
        if token:
            body["provisioning_token"] = token
        r = await self.http.post("/device/v1/enroll", json=body, headers={"Authorization": ""})
        if r.status_code == 201:
            self.device_id = r.json()["device_id"]
        return r

    async def login(self) -> httpx.Response:
        headers = {"Authorization": ""}
        r = await self.http.post(
            "/device/v1/auth/challenge", json={"device_id": self.device_id}, headers=headers
        )
        assert r.status_code == 200, r.text
        challenge = r.json()["challenge"]
        r = await self.http.post(
            "/device/v1/auth/token",
            headers=headers,
            json={
                "device_id": self.device_id,
                "challenge": challenge,
                "signature": self.sign(f"auth:{self.device_id}:{challenge}"),
            },
        )
        if r.status_code == 200:
            self.token = r.json()["access_token"]
        return r

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} | kwargs.pop("headers", {})
        return await self.http.request(method, f"/device/v1{path}", headers=headers, **kwargs)


async def provisioning_token(admin: httpx.AsyncClient, **fields: Any) -> str:
    r = await admin.post("/api/v1/provisioning-tokens", json=fields)
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


async def online_device(
    admin: httpx.AsyncClient, serial: str = "DEV-1", **token_fields: Any
) -> Device:
    """An enrolled, accepted, logged-in device (creates the model if needed)."""
    await admin.post("/api/v1/models", json={"name": "thermo-v2"})
    device = Device(admin, serial)
    r = await device.enroll(await provisioning_token(admin, auto_accept=True, **token_fields))
    assert r.status_code == 201, r.text
    r = await device.login()
    assert r.status_code == 200, r.text
    return device
