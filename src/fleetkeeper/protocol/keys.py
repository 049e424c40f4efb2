"""The device's Ed25519 key: made on the device, kept in a file only its owner can read.

Files holding secrets are written atomically: a new file, created 0600 under a temporary name
(so it never exists with wider permissions, not even for a moment), synced, then renamed over
the old one. A reader therefore sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper.durable import sync_directory


class KeyFileError(Exception):
    """A key file that is missing, unreadable, too open or not an Ed25519 key."""


def release_key_id(raw_public_key: bytes) -> str:
    """A release key's id: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def artifact_message(sha256: str, version: str) -> bytes:
    """What a release key signs for an artifact (docs/ota.md, "Signatures")."""
    return f"artifact:{sha256}:{version}".encode("ascii", errors="replace")


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key, base64 with padding (the protocol's `public_key`)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def sign_b64(key: Ed25519PrivateKey, message: str) -> str:
    """The Ed25519 signature over the UTF-8 bytes of `message`, base64 with padding."""
    return base64.b64encode(key.sign(message.encode("utf-8"))).decode("ascii")


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically; the file is mode 0600 from its first byte."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    sync_directory(path.parent)


def check_private(path: Path) -> None:
    """Refuse a secret file that anyone but its owner may read or write."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"{path} is accessible to group or others (mode {mode:04o}); a device key must "
            f"be readable by its owner only: run `chmod 600 {path}`"
        )


def save_key(key: Ed25519PrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, pem)


def load_key(path: Path) -> Ed25519PrivateKey:
    check_private(path)
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key in `path`, or a new one saved there; the flag says whether it is new."""
    if Path(path).exists():
        return load_key(path), False
    key = generate_key()
    save_key(key, path)
    return key, True
