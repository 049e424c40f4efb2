"""Release keys: the Ed25519 keys whose signatures make an artifact trusted (docs/ota.md).

The signed message is `artifact:<sha256 hex>:<version>`: binding the version stops an old
signed image from being replayed as a newer release. A key's id is the first 16 hex digits of
the sha256 of its 32 raw public-key bytes, so anyone holding the public key can compute it.

The server has a release key of its own (private half in `server_secrets`, shared by replicas)
and signs every artifact uploaded without a signature; its public half is a trusted key named
`server` like any other, so devices learn it from the same list.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Forbidden, Invalid, NotFound
from fleetkeeper.protocol.keys import artifact_message, release_key_id
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.store.models import ReleaseKey, ServerSecret

SERVER_KEY_NAME = "server"
_SECRET_NAME = "release_key"


def raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_artifact(key: Ed25519PrivateKey, sha256: str, version: str) -> str:
    """The base64 Ed25519 signature of an artifact (what `fleetkeeper artifacts sign` prints)."""
    return base64.b64encode(key.sign(artifact_message(sha256, version))).decode()


def signature_verifies(public_key: str, sha256: str, version: str, signature: str) -> bool:
    try:
        raw = base64.b64decode(public_key, validate=True)
        sig = base64.b64decode(signature, validate=True)
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, artifact_message(sha256, version))
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of a base64 Ed25519 public key; Invalid otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise Invalid(
            "public_key must be a base64-encoded 32-byte Ed25519 public key", field="public_key"
        ) from None
    return raw


@dataclass(frozen=True)
class ServerReleaseKey:
    """The server's own release key: it signs artifacts uploaded without a signature."""

    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        return base64.b64encode(raw_public_key(self.key)).decode()

    @property
    def key_id(self) -> str:
        return release_key_id(raw_public_key(self.key))

    def sign(self, sha256: str, version: str) -> str:
        return sign_artifact(self.key, sha256, version)


async def load_server_key(session: AsyncSession, change: Change) -> ServerReleaseKey:
    """The server's release key, created (and trusted as `server`) on the first start."""
    secret = await session.get(ServerSecret, _SECRET_NAME)
    if secret is None:
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        secret = ServerSecret(name=_SECRET_NAME, value=pem.decode(), created_at=change.now())
        session.add(secret)
    key = serialization.load_pem_private_key(secret.value.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    server = ServerReleaseKey(key)
    if await session.get(ReleaseKey, server.key_id) is None:
        session.add(
            ReleaseKey(
                id=server.key_id,
                name=SERVER_KEY_NAME,
                public_key=server.public_key,
                created_by=change.principal.actor,
                created_at=change.now(),
            )
        )
        await session.flush()
        await audit.append(
            session,
            change,
            action="release_key.create",
            target=f"release_key:{server.key_id}",
            tenant_id=None,
            after={"name": SERVER_KEY_NAME, "public_key": server.public_key},
        )
    await session.flush()
    return server


_ORDER = (ReleaseKey.name != SERVER_KEY_NAME, ReleaseKey.created_at, ReleaseKey.id)


def _require_manage(principal: Principal) -> None:
    principal.require("release_keys:manage")
    if principal.tenant_id is not None:
        raise Forbidden(
            "release keys are trusted by the whole fleet: only platform users manage them"
        )


async def list_keys(session: AsyncSession, principal: Principal) -> list[ReleaseKey]:
    """Every release key, revoked ones too: the server's first, then oldest first."""
    principal.require("artifacts:read")
    return list((await session.scalars(select(ReleaseKey).order_by(*_ORDER))).all())


async def trusted_keys(session: AsyncSession) -> list[ReleaseKey]:
    """The keys an artifact may be signed with: every key not revoked."""
    stmt = select(ReleaseKey).where(ReleaseKey.revoked_at.is_(None)).order_by(*_ORDER)
    return list((await session.scalars(stmt)).all())


async def add_key(session: AsyncSession, change: Change, name: str, public_key: str) -> ReleaseKey:
    _require_manage(change.principal)
    raw = parse_public_key(public_key)
    if name == SERVER_KEY_NAME:
        raise Invalid(f"the name {SERVER_KEY_NAME!r} is the server's own key", field="name")
    key_id = release_key_id(raw)
    existing = await session.get(ReleaseKey, key_id)
    if existing is not None:
        state = "revoked" if existing.revoked_at else "trusted"
        raise Conflict(
            f"this key is known already as {existing.name!r} ({state})", field="public_key"
        )
    if await session.scalar(select(ReleaseKey.id).where(ReleaseKey.name == name)):
        raise Conflict(f"a release key named {name!r} exists already", field="name")
    key = ReleaseKey(
        id=key_id,
        name=name,
        public_key=base64.b64encode(raw).decode(),
        created_by=change.principal.actor,
        created_at=change.now(),
    )
    session.add(key)
    await session.flush()
    await audit.append(
        session,
        change,
        action="release_key.create",
        target=f"release_key:{key_id}",
        tenant_id=None,
        after={"name": name, "public_key": key.public_key},
    )
    return key


async def revoke_key(session: AsyncSession, change: Change, key_id: str) -> ReleaseKey:
    """Stop trusting a key: uploads signed with it are refused, devices stop accepting it."""
    _require_manage(change.principal)
    key = await session.get(ReleaseKey, key_id)
    if key is None:
        raise NotFound(f"no release key {key_id!r}")
    if key.name == SERVER_KEY_NAME:
        raise Conflict(
            "the server's own release key cannot be revoked: it signs unsigned uploads",
            code="server_key",
        )
    if key.revoked_at is None:
        key.revoked_at = change.now()
        await audit.append(
            session,
            change,
            action="release_key.revoke",
            target=f"release_key:{key.id}",
            tenant_id=None,
            before={"name": key.name, "revoked_at": None},
            after={"name": key.name, "revoked_at": key.revoked_at},
        )
    return key


async def verify_signature(
    session: AsyncSession, sha256: str, version: str, signature: str, key_id: str | None
) -> ReleaseKey:
    """The trusted key that made `signature`; Invalid (`signature_invalid`) when none did."""
    keys = await trusted_keys(session)
    if key_id is not None:
        keys = [k for k in keys if k.id == key_id]
        if not keys:
            known = await session.get(ReleaseKey, key_id)
            why = "was revoked" if known else "is not a trusted release key"
            raise Invalid(
                f"the signature's key {key_id!r} {why}",
                field="key_id",
                code="signature_invalid",
                key_id=key_id,
            )
    for key in keys:
        if signature_verifies(key.public_key, sha256, version, signature):
            return key
    raise Invalid(
        "the signature does not verify with "
        + (f"key {key_id!r}" if key_id else "any trusted release key")
        + f" over artifact:{sha256}:{version}",
        field="signature",
        code="signature_invalid",
    )
