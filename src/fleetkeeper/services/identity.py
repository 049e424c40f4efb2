"""Device identity: the device CA, signature checks, challenges and device access tokens.

Devices own Ed25519 keys; the server keeps only public keys. A device proves itself by
signing a one-time challenge and receives a short-lived access token. Access tokens are
HMAC-signed and carry the device's credential generation, so checking one costs no hash
table lookup, and bumping the generation revokes every token a device holds at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Invalid
from fleetkeeper.store.models import DeviceChallenge, ServerSecret

TOKEN_TTL = timedelta(hours=1)
CHALLENGE_TTL = timedelta(seconds=60)
CERT_TTL = timedelta(days=3650)
_TOKEN_PREFIX = "fkd"


def decode_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise Invalid(
            "public_key must be a base64-encoded 32-byte Ed25519 public key",
            field="public_key",
            code="invalid",
        ) from None


def signature_valid(public_key: str, message: str, signature: str) -> bool:
    try:
        sig = base64.b64decode(signature, validate=True)
        decode_public_key(public_key).verify(sig, message.encode())
    except (binascii.Error, ValueError, InvalidSignature, Invalid):
        return False
    return True


@dataclass(frozen=True)
class ServerKeys:
    """Key material every replica shares, kept in the database (table server_secrets)."""

    token_key: bytes
    ca_key: Ed25519PrivateKey
    ca_certificate: x509.Certificate

    @property
    def ca_pem(self) -> str:
        return self.ca_certificate.public_bytes(serialization.Encoding.PEM).decode()


async def load_server_keys(session: AsyncSession, now: datetime) -> ServerKeys:
    """Load the keys, creating them on the first start."""
    stored = dict((await session.execute(select(ServerSecret.name, ServerSecret.value))).all())
    if "device_token_key" not in stored:
        stored["device_token_key"] = secrets.token_hex(32)
        session.add(
            ServerSecret(name="device_token_key", value=stored["device_token_key"], created_at=now)
        )
    if "device_ca_key" not in stored:
        key = Ed25519PrivateKey.generate()
        cert = _ca_certificate(key, now)
        stored["device_ca_key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        stored["device_ca_cert"] = cert.public_bytes(serialization.Encoding.PEM).decode()
        session.add_all(
            [
                ServerSecret(name="device_ca_key", value=stored["device_ca_key"], created_at=now),
                ServerSecret(name="device_ca_cert", value=stored["device_ca_cert"], created_at=now),
            ]
        )
    await session.flush()
    ca_key = serialization.load_pem_private_key(stored["device_ca_key"].encode(), password=None)
    assert isinstance(ca_key, Ed25519PrivateKey)
    return ServerKeys(
        token_key=bytes.fromhex(stored["device_token_key"]),
        ca_key=ca_key,
        ca_certificate=x509.load_pem_x509_certificate(stored["device_ca_cert"].encode()),
    )


def _ca_certificate(key: Ed25519PrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fleetkeeper device CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=20 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, None)
    )


def issue_certificate(
    keys: ServerKeys, public_key: str, *, serial: str, device_id: str, now: datetime
) -> x509.Certificate:
    """An X.509 certificate binding the device's key to its id and serial."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(keys.ca_certificate.subject)
        .public_key(decode_public_key(public_key))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERT_TTL)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(keys.ca_key, None)
    )


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def hash_claim_code(code: str) -> str:
    """Salted SHA-256. A slow hash would make importing 100,000 labelled devices take hours,
    so claim codes should carry their own strength: 16+ random base32 characters."""
    salt = secrets.token_hex(16)
    return f"s256${salt}${hashlib.sha256((salt + code).encode()).hexdigest()}"


def claim_code_matches(stored: str | None, code: str) -> bool:
    if not stored or stored.count("$") != 2:
        return False
    _, salt, digest = stored.split("$")
    return hmac.compare_digest(hashlib.sha256((salt + code).encode()).hexdigest(), digest)


def certificate_device(keys: ServerKeys, pem: str, now: datetime) -> tuple[str, str]:
    """(device id, certificate serial in hex) of a client certificate the device CA issued.

    Raises TokenError when the certificate is malformed, foreign or out of its validity."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        cert.verify_directly_issued_by(keys.ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise TokenError(
            "certificate_invalid", "client certificate not issued by the device CA"
        ) from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise TokenError("certificate_invalid", "client certificate outside its validity")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise TokenError("certificate_invalid", "client certificate names no device")
    return str(names[0].value), format(cert.serial_number, "x")


# --- challenges -------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def new_challenge(
    session: AsyncSession, device_id: str, now: datetime
) -> tuple[str, datetime]:
    challenge = base64.b64encode(secrets.token_bytes(32)).decode()
    expires = now + CHALLENGE_TTL
    # Old challenges are swept as new ones are made, so the table stays small.
    await session.execute(delete(DeviceChallenge).where(DeviceChallenge.expires_at < now))
    session.add(
        DeviceChallenge(challenge_hash=_digest(challenge), device_id=device_id, expires_at=expires)
    )
    return challenge, expires


async def consume_challenge(
    session: AsyncSession, device_id: str, challenge: str, now: datetime
) -> bool:
    """True once for a live challenge issued to this device; it is gone afterwards."""
    row = await session.get(DeviceChallenge, _digest(challenge))
    if row is None:
        return False
    await session.delete(row)
    return row.device_id == device_id and row.expires_at > now


# --- access tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenClaims:
    device_id: str
    generation: int
    expires_at: datetime


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue_token(key: bytes, device_id: str, generation: int, now: datetime) -> tuple[str, int]:
    expires = int((now + TOKEN_TTL).timestamp())
    body = f"{_TOKEN_PREFIX}.{device_id}.{generation}.{expires}"
    return f"{body}.{_mac(key, body)}", int(TOKEN_TTL.total_seconds())


class TokenError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def verify_token(key: bytes, token: str, now: datetime) -> TokenClaims:
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != _TOKEN_PREFIX:
        raise TokenError("token_invalid", "not a device access token")
    body, mac = ".".join(parts[:4]), parts[4]
    if not hmac.compare_digest(_mac(key, body), mac):
        raise TokenError("token_invalid", "device access token signature does not verify")
    _, device_id, generation, expires = parts[:4]
    if not (generation.isdigit() and expires.isdigit()):
        raise TokenError("token_invalid", "malformed device access token")
    expires_at = datetime.fromtimestamp(int(expires), tz=now.tzinfo)
    if expires_at <= now:
        raise TokenError("token_expired", "device access token expired: authenticate again")
    return TokenClaims(device_id=device_id, generation=int(generation), expires_at=expires_at)
