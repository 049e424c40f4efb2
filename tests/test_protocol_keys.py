"""The device key: Ed25519, in a file only its owner may read, written atomically."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetkeeper.protocol import (
    KeyFileError,
    generate_key,
    load_key,
    load_or_create_key,
    public_key_b64,
    save_key,
    sign_b64,
)
from fleetkeeper.protocol.keys import write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_public_key_is_32_raw_bytes_in_padded_base64() -> None:
    text = public_key_b64(generate_key())
    assert len(base64.b64decode(text, validate=True)) == 32
    assert text.endswith("=")


def test_signature_verifies_over_the_utf8_message() -> None:
    key = generate_key()
    signature = base64.b64decode(sign_b64(key, "auth:dev-1:chällenge"))
    assert len(signature) == 64
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64(key)))
    public.verify(signature, "auth:dev-1:chällenge".encode())


def test_saved_key_is_mode_0600_and_loads_back(tmp_path: Path) -> None:
    key = generate_key()
    save_key(key, tmp_path / "device.key")
    assert mode(tmp_path / "device.key") == 0o600
    assert public_key_b64(load_key(tmp_path / "device.key")) == public_key_b64(key)


def test_saving_leaves_no_temporary_file(tmp_path: Path) -> None:
    save_key(generate_key(), tmp_path / "device.key")
    save_key(generate_key(), tmp_path / "device.key")
    assert [p.name for p in tmp_path.iterdir()] == ["device.key"]


def test_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "secret", b"x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "secret") == 0o600


def test_replacing_a_file_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600


@pytest.mark.parametrize("permissions", [0o640, 0o604, 0o644, 0o660])
def test_a_key_others_may_read_is_refused(tmp_path: Path, permissions: int) -> None:
    path = tmp_path / "device.key"
    save_key(generate_key(), path)
    path.chmod(permissions)
    with pytest.raises(KeyFileError, match=r"chmod 600"):
        load_key(path)


def test_a_file_that_is_no_key_is_refused(tmp_path: Path) -> None:
    write_private(tmp_path / "device.key", b"not a key")
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_key(tmp_path / "device.key")


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        load_key(tmp_path / "device.key")


def test_load_or_create_makes_a_key_once(tmp_path: Path) -> None:
    first, created = load_or_create_key(tmp_path / "device.key")
    again, created_again = load_or_create_key(tmp_path / "device.key")
    assert created and not created_again
    assert public_key_b64(first) == public_key_b64(again)
