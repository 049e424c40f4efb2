"""`fleetkeeper artifacts ...` against the real app, in-process (see test_cli.py)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper.services.release_keys import signature_verifies
from test_cli import ok, run, servers, thermo  # noqa: F401 - fixtures used below

pytestmark = pytest.mark.usefixtures("thermo")

PAYLOAD = b"thermo firmware\n" * 1000


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "thermo-fw.bin"
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def release_key(tmp_path: Path) -> dict[str, Any]:
    """A new key pair made by `keygen`, its public half trusted as `ci`."""
    made: dict[str, Any] = ok("artifacts", "keygen", str(tmp_path / "release.key"))
    ok("artifacts", "keys", "add", "ci", made["public_key"], "--reason", "CI signs releases")
    return made


def test_upload_list_show_and_delete(firmware: Path) -> None:
    created = ok(
        "artifacts",
        "upload",
        str(firmware),
        "--version",
        "2.4.0",
        "--models",
        "thermo-v2",
        "--hardware-revisions",
        "rev-a,rev-b",
        "--notes",
        "Faster boot.",
        "--reason",
        "release",
    )
    assert (created["name"], created["version"], created["signed_by"]) == (
        "thermo-fw",
        "2.4.0",
        "server",
    )
    assert created["size"] == len(PAYLOAD)
    assert created["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert created["hardware_revisions"] == ["rev-a", "rev-b"]
    assert ok("artifacts", "show", created["id"]) == created
    assert [a["id"] for a in ok("artifacts", "list", "--model", "thermo-v2")["items"]] == [
        created["id"]
    ]
    assert ok("artifacts", "list", "--version", "9.9.9")["items"] == []
    table = run("artifacts", "list")
    assert table.exit_code == 0 and "thermo-fw" in table.stdout and "1 artifacts" in table.stdout
    deleted = run("artifacts", "delete", created["id"], "--reason", "withdrawn")
    assert deleted.exit_code == 0, deleted.output
    missing = run("artifacts", "show", created["id"])
    assert missing.exit_code == 1 and "Not found" in missing.stderr


def test_upload_refusals_are_reported(firmware: Path) -> None:
    result = run("artifacts", "upload", str(firmware), "--version", "2.4", "--models", "thermo-v2")
    assert result.exit_code == 1
    assert "semantic version" in result.stderr
    result = run("artifacts", "upload", str(firmware), "--version", "2.4.0", "--models", "toaster")
    assert result.exit_code == 1 and "toaster" in result.stderr


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    out = tmp_path / "release.key"
    made = ok("artifacts", "keygen", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(made["key_id"]) == 16 and made["path"] == str(out)
    again = run("artifacts", "keygen", str(out))
    assert again.exit_code == 2 and "--force" in again.output
    assert ok("artifacts", "keygen", str(out), "--force")["key_id"] != made["key_id"]


def test_sign_offline_then_upload_with_the_signature(
    firmware: Path, tmp_path: Path, release_key: dict[str, Any]
) -> None:
    key_file = str(tmp_path / "release.key")
    made = ok("artifacts", "sign", str(firmware), "--key", key_file, "--version", "2.4.0")
    assert made["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert made["key_id"] == release_key["key_id"]
    assert signature_verifies(release_key["public_key"], made["sha256"], "2.4.0", made["signature"])
    plain = run("artifacts", "sign", str(firmware), "--key", key_file, "--version", "2.4.0")
    assert plain.exit_code == 0 and plain.stdout.strip() == made["signature"]
    created = ok(
        "artifacts",
        "upload",
        str(firmware),
        "--version",
        "2.4.0",
        "--models",
        "thermo-v2",
        "--signature",
        made["signature"],
        "--key-id",
        made["key_id"],
    )
    assert (created["signed_by"], created["signature"]) == ("ci", made["signature"])


def test_upload_signs_with_a_key_file(
    firmware: Path, tmp_path: Path, release_key: dict[str, Any]
) -> None:
    created = ok(
        "artifacts",
        "upload",
        str(firmware),
        "--version",
        "2.4.0",
        "--models",
        "thermo-v2",
        "--sign-key",
        str(tmp_path / "release.key"),
    )
    assert (created["signed_by"], created["key_id"]) == ("ci", release_key["key_id"])
    both = run(
        "artifacts",
        "upload",
        str(firmware),
        "--version",
        "2.5.0",
        "--models",
        "thermo-v2",
        "--sign-key",
        str(tmp_path / "release.key"),
        "--signature",
        created["signature"],
    )
    assert both.exit_code == 2


def test_a_signature_by_an_untrusted_key_is_refused(firmware: Path, tmp_path: Path) -> None:
    ok("artifacts", "keygen", str(tmp_path / "rogue.key"))
    result = run(
        "artifacts",
        "upload",
        str(firmware),
        "--version",
        "2.4.0",
        "--models",
        "thermo-v2",
        "--sign-key",
        str(tmp_path / "rogue.key"),
    )
    assert result.exit_code == 1
    assert "signature" in result.stderr
    assert ok("artifacts", "list")["items"] == []


def test_release_keys_are_listed_and_revoked(release_key: dict[str, Any]) -> None:
    listed = {k["name"]: k for k in ok("artifacts", "keys", "list")["items"]}
    assert set(listed) == {"server", "ci"}
    assert listed["ci"]["id"] == release_key["key_id"]
    revoked = ok("artifacts", "keys", "revoke", release_key["key_id"], "--reason", "leaked")
    assert revoked["revoked_at"] is not None
    refused = run("artifacts", "keys", "revoke", listed["server"]["id"])
    assert refused.exit_code == 1 and "server" in refused.stderr
