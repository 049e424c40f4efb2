"""Artifacts below the API: the store, uploads, metadata rules, signatures, ranges, multipart."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from fleetkeeper.api.downloads import ByteRange, Unsatisfiable, requested_range
from fleetkeeper.api.multipart import FormReader
from fleetkeeper.clock import FakeClock
from fleetkeeper.errors import BadRequest, Invalid, PayloadTooLarge
from fleetkeeper.protocol.keys import release_key_id
from fleetkeeper.services import release_keys
from fleetkeeper.services.artifacts import ArtifactMeta, check_meta, default_name, receive
from fleetkeeper.services.context import SYSTEM, Change
from fleetkeeper.store.artifacts import LocalArtifactStore, MissingObject
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import AuditRecord, ReleaseKey


def files_in(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(
    store: LocalArtifactStore, key: str, start: int = 0, end: int | None = None
) -> bytes:
    return b"".join([c async for c in store.read(key, start, end)])


# --- the local store -------------------------------------------------------------------------


async def test_committed_write_is_readable_whole_and_in_ranges(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path, chunk_size=4)
    pending = await store.begin()
    await pending.write(b"0123456789")
    await pending.write(b"abc")
    await pending.commit("a1")
    assert await store.size("a1") == 13
    assert await read_all(store, "a1") == b"0123456789abc"
    assert await read_all(store, "a1", 3, 9) == b"345678"
    assert await read_all(store, "a1", 10) == b"abc"
    assert await read_all(store, "a1", 13) == b""
    assert files_in(tmp_path) == ["a1"]


async def test_write_is_invisible_until_committed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    pending = await store.begin()
    await pending.write(b"half")
    with pytest.raises(MissingObject):
        await store.size("a1")
    await pending.commit("a1")
    assert await store.size("a1") == 4


async def test_discarded_write_leaves_no_file(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    pending = await store.begin()
    await pending.write(b"partial")
    await pending.discard()
    await pending.discard()  # twice is harmless
    assert files_in(tmp_path) == []


async def test_failed_commit_leaves_no_file(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    pending = await store.begin()
    await pending.write(b"bytes")
    with pytest.raises(ValueError):
        await pending.commit("../escape")
    assert files_in(tmp_path) == []
    assert not (tmp_path.parent / "escape").exists()


async def test_missing_object_and_idempotent_delete(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(MissingObject):
        await store.size("nothing")
    with pytest.raises(MissingObject):
        await read_all(store, "nothing")
    await store.delete("nothing")
    pending = await store.begin()
    await pending.write(b"x")
    await pending.commit("k")
    await store.delete("k")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("key", ["", ".incoming", "a/b", "../x", "a b", "x" * 201])
def test_keys_are_flat_names(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        LocalArtifactStore(tmp_path).path_of(key)


async def test_sweep_removes_only_old_abandoned_writes(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    old = await store.begin()
    (stale,) = list(store.incoming.iterdir())
    os.utime(stale, (0, 0))  # abandoned in 1970
    new = await store.begin()
    assert store.sweep_incoming(older_than=3600) == 1
    assert not stale.exists()
    assert len(list(store.incoming.iterdir())) == 1
    await old.discard()
    await new.discard()
    assert files_in(tmp_path) == []


# --- receiving bytes -------------------------------------------------------------------------


async def test_receive_hashes_and_counts(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    received = await receive(store, chunks(b"abc", b"def"), limit=6)
    assert (received.size, received.sha256) == (6, hashlib.sha256(b"abcdef").hexdigest())
    await received.pending.commit("k")
    assert await read_all(store, "k") == b"abcdef"


async def test_receive_past_the_limit_leaves_nothing(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(PayloadTooLarge):
        await receive(store, chunks(b"abc", b"defg"), limit=6)
    assert files_in(tmp_path) == []


async def test_receive_from_a_broken_source_leaves_nothing(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"some"
        raise ConnectionResetError("client went away")

    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        await receive(store, broken(), limit=100)
    assert files_in(tmp_path) == []


# --- metadata --------------------------------------------------------------------------------


def meta(**fields: Any) -> ArtifactMeta:
    return ArtifactMeta(**{"version": "2.4.0", "models": ("thermo-v2",), **fields})


@pytest.mark.parametrize("version", ["2.4.0", "2.4.0-rc.1", "0.0.1", "1.0.0+build.7", "10.20.30"])
def test_semantic_versions_are_accepted(version: str) -> None:
    assert check_meta(meta(version=version), "fw.bin").version == version


@pytest.mark.parametrize("version", ["2.4", "v2.4.0", "02.4.0", "2.4.0-", "latest", "2.4.0 "])
def test_other_versions_are_refused(version: str) -> None:
    with pytest.raises(Invalid) as caught:
        check_meta(meta(version=version), "fw.bin")
    assert caught.value.extra["field"] == "version"


def test_name_defaults_to_the_file_name_without_extension() -> None:
    assert check_meta(meta(), "thermo-fw.bin").name == "thermo-fw"
    assert check_meta(meta(name="given"), "thermo-fw.bin").name == "given"
    assert default_name("C:\\builds\\thermo.img") == "thermo"
    assert default_name("/tmp/dir/fw.tar.gz") == "fw.tar"
    with pytest.raises(Invalid):
        check_meta(meta(), None)


def test_delta_needs_a_base_version_and_only_delta_has_one() -> None:
    with pytest.raises(Invalid, match="base_version"):
        check_meta(meta(kind="delta"), "fw.bin")
    with pytest.raises(Invalid, match="delta"):
        check_meta(meta(base_version="2.3.0"), "fw.bin")
    delta = check_meta(meta(kind="delta", base_version="2.3.0"), "fw.bin")
    assert delta.base_version == "2.3.0"
    with pytest.raises(Invalid, match="kind"):
        check_meta(meta(kind="image"), "fw.bin")


def test_lists_are_tidied_and_models_required() -> None:
    tidy = check_meta(meta(models=("a", " b", "a"), hardware_revisions=("r1", "", "r1")), "f.bin")
    assert (tidy.models, tidy.hardware_revisions) == (("a", "b"), ("r1",))
    with pytest.raises(Invalid, match="models"):
        check_meta(meta(models=()), "f.bin")


def test_expected_hash_must_be_hex_and_is_lowercased() -> None:
    digest = "AB" * 32
    assert check_meta(meta(sha256=digest), "f.bin").sha256 == digest.lower()
    with pytest.raises(Invalid, match="sha256"):
        check_meta(meta(sha256="xyz"), "f.bin")


# --- signatures and keys ---------------------------------------------------------------------


def test_signature_covers_hash_and_version() -> None:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(release_keys.raw_public_key(key)).decode()
    digest = hashlib.sha256(b"image").hexdigest()
    signature = release_keys.sign_artifact(key, digest, "2.4.0")
    message = f"artifact:{digest}:2.4.0".encode()
    key.public_key().verify(base64.b64decode(signature), message)  # the documented message
    assert release_keys.signature_verifies(public, digest, "2.4.0", signature)
    assert not release_keys.signature_verifies(public, digest, "2.5.0", signature)
    assert not release_keys.signature_verifies(public, "0" * 64, "2.4.0", signature)
    assert not release_keys.signature_verifies(public, digest, "2.4.0", "not base64!")


def test_key_id_is_a_prefix_of_the_public_key_hash() -> None:
    key = Ed25519PrivateKey.generate()
    raw = release_keys.raw_public_key(key)
    assert release_key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize("text", ["", "not base64", base64.b64encode(b"short").decode()])
def test_public_keys_must_be_32_byte_ed25519(text: str) -> None:
    with pytest.raises(Invalid):
        release_keys.parse_public_key(text)


async def test_server_key_is_created_once_and_trusted_as_server(db: Database) -> None:
    change = Change(principal=SYSTEM, reason="server start", clock=FakeClock())
    async with db.write() as session:
        first = await release_keys.load_server_key(session, change)
    async with db.write() as session:
        again = await release_keys.load_server_key(session, change)
    assert again.key_id == first.key_id
    async with db.read() as session:
        rows = list(await session.scalars(select(ReleaseKey)))
        audits = await session.scalar(
            select(func.count()).where(AuditRecord.action == "release_key.create")
        )
    assert [(r.id, r.name, r.public_key) for r in rows] == [
        (first.key_id, "server", first.public_key)
    ]
    assert audits == 1


# --- byte ranges -----------------------------------------------------------------------------

ETAG = '"abc"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", ByteRange(0, 99)),
        ("bytes=40-", ByteRange(40, 99)),
        ("bytes=10-19", ByteRange(10, 19)),
        ("bytes=90-500", ByteRange(90, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-500", ByteRange(0, 99)),
        ("bytes=20-10", None),  # malformed: ignored, the whole is sent
        ("bytes=0-1,5-6", None),  # several ranges: the whole
        ("items=0-5", None),
        ("bytes=x-", None),
    ],
)
def test_ranges(header: str | None, expected: ByteRange | None) -> None:
    assert requested_range(header, None, ETAG, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        requested_range(header, None, ETAG, 100)


def test_if_range_must_name_the_current_etag() -> None:
    assert requested_range("bytes=5-", ETAG, ETAG, 100) == ByteRange(5, 99)
    assert requested_range("bytes=5-", '"other"', ETAG, 100) is None
    assert requested_range("bytes=5-", 'W/"abc"', ETAG, 100) is None
    assert requested_range("bytes=5-", "Wed, 21 Oct 2026 07:28:00 GMT", ETAG, 100) is None


# --- multipart ---------------------------------------------------------------------------------

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def split(body: bytes, size: int) -> AsyncIterator[bytes]:
    return chunks(*(body[i : i + size] for i in range(0, len(body), size)))


@pytest.mark.parametrize("chunk", [1, 7, 4096])
async def test_parts_stream_in_order_whatever_the_chunking(chunk: int) -> None:
    payload = bytes(range(256)) * 20
    body = form(("version", None, b"2.4.0"), ("file", "fw.bin", payload), ("notes", None, b"hi"))
    seen: list[tuple[str, str | None, bytes]] = []
    async for part in FormReader(CONTENT_TYPE, split(body, chunk)):
        data = (
            b"".join([c async for c in part]) if part.filename else (await part.text(100)).encode()
        )
        seen.append((part.name, part.filename, data))
    assert seen == [
        ("version", None, b"2.4.0"),
        ("file", "fw.bin", payload),
        ("notes", None, b"hi"),
    ]


async def test_unread_parts_are_skipped() -> None:
    body = form(("file", "fw.bin", b"x" * 1000), ("version", None, b"2.4.0"))
    names = [part.name async for part in FormReader(CONTENT_TYPE, split(body, 64))]
    assert names == ["file", "version"]


async def test_a_field_over_its_limit_is_refused() -> None:
    body = form(("notes", None, b"x" * 200))
    with pytest.raises(Invalid, match="notes"):
        async for part in FormReader(CONTENT_TYPE, chunks(body)):
            await part.text(100)


async def test_truncated_body_is_malformed() -> None:
    body = form(("file", "fw.bin", b"x" * 100))[:-30]
    with pytest.raises(BadRequest, match="malformed"):
        async for part in FormReader(CONTENT_TYPE, chunks(body)):
            _ = [c async for c in part]


def test_only_multipart_with_a_boundary_is_read() -> None:
    for content_type in ("application/json", "multipart/form-data", ""):
        with pytest.raises(BadRequest):
            FormReader(content_type, chunks())
