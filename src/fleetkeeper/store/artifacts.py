"""Where artifact bytes live: the `ArtifactStore` interface and the local-folder store.

The interface is deliberately small, so that an S3-compatible store can implement it later
(`begin` → a multipart upload, `commit` → complete it under the key, `discard` → abort it,
`read` → a ranged GET, `size` → HEAD, `delete` → DELETE):

    pending = await store.begin()
    await pending.write(chunk)            # as often as needed
    await pending.commit(key)             # or: await pending.discard()
    async for chunk in store.read(key, start, end): ...

A write is invisible until it is committed, and a store never shows a partial object under a
key: readers see the whole object or nothing. Keys are flat names (letters, digits, `._-`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

from fleetkeeper.durable import sync_directory

CHUNK_SIZE = 256 * 1024
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_INCOMING = ".incoming"


class MissingObject(LookupError):
    """No object is stored under the key."""


class PendingWrite(Protocol):
    """An object being written; nobody sees it before `commit`."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self, key: str) -> None:
        """Make the bytes written so far the object `key` (atomically)."""

    async def discard(self) -> None:
        """Throw the bytes away; harmless after commit or a previous discard."""


class ArtifactStore(Protocol):
    async def begin(self) -> PendingWrite: ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes `start` up to (not including) `end` (default: the end), in chunks."""

    async def size(self, key: str) -> int:
        """The object's size in bytes; MissingObject when there is none."""

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""


def check_key(key: str) -> str:
    if not _KEY.match(key) or key.startswith("."):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class LocalArtifactStore:
    """Objects as files in `root`; writes go to `root/.incoming` and are renamed into place.

    File I/O runs in worker threads so a large upload or download never stalls the event loop.
    """

    def __init__(self, root: Path, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.chunk_size = chunk_size

    @property
    def incoming(self) -> Path:
        return self.root / _INCOMING

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    async def begin(self) -> _LocalWrite:
        return await asyncio.to_thread(self._open_incoming)

    def _open_incoming(self) -> _LocalWrite:
        self.incoming.mkdir(parents=True, exist_ok=True)
        path = self.incoming / f"{secrets.token_hex(12)}.part"
        return _LocalWrite(self, path, path.open("xb"))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        try:
            handle = await asyncio.to_thread(self.path_of(key).open, "rb")
        except FileNotFoundError:
            raise MissingObject(key) from None
        with handle:
            await asyncio.to_thread(handle.seek, start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                want = self.chunk_size if remaining is None else min(self.chunk_size, remaining)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def size(self, key: str) -> int:
        try:
            return (await asyncio.to_thread(os.stat, self.path_of(key))).st_size
        except FileNotFoundError:
            raise MissingObject(key) from None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_of(key).unlink, missing_ok=True)

    def sweep_incoming(self, older_than: float = 86_400.0) -> int:
        """Remove writes abandoned by a crash (older than `older_than` seconds, by file time).

        Only old files go: another replica sharing the folder may be receiving a new one."""
        if not self.incoming.is_dir():
            return 0
        limit = time.time() - older_than
        removed = 0
        for path in self.incoming.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
        return removed


class _LocalWrite:
    def __init__(self, store: LocalArtifactStore, path: Path, handle: BinaryIO) -> None:
        self._store = store
        self._path = path
        self._handle = handle
        self._done = False

    async def write(self, chunk: bytes) -> None:
        if self._done:
            raise RuntimeError("this write was committed or discarded already")
        await asyncio.to_thread(self._handle.write, chunk)

    async def commit(self, key: str) -> None:
        if self._done:
            raise RuntimeError("this write was committed or discarded already")
        try:
            await asyncio.to_thread(self._finish, self._store.path_of(key))
        except BaseException:
            await self.discard()
            raise
        self._done = True

    def _finish(self, target: Path) -> None:
        # Durable bytes first, then the rename: after a crash the key holds all or nothing.
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._path, target)
        sync_directory(target.parent)

    async def discard(self) -> None:
        if self._done:
            return
        self._done = True
        await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        self._handle.close()
        self._path.unlink(missing_ok=True)
