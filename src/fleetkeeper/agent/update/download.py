"""The bytes of a download: the file they go to, and what the driver waits on meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from typing import IO, Any

from fleetkeeper.agent.update.machine import PROGRESS_STEP


class Sink:
    """The download file, appended to; wakes the driver at each `PROGRESS_STEP` percent."""

    def __init__(self, path: Path, have: int, total: int, wake: asyncio.Event) -> None:
        self.position = have
        self._total = total
        self._wake = wake
        self._band = self._percent() // PROGRESS_STEP
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self._file.close()

    def _percent(self) -> int:
        return self.position * 100 // self._total if self._total > 0 else 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.position += len(chunk)
        band = self._percent() // PROGRESS_STEP
        if band > self._band:
            self._band = band
            self._wake.set()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())


async def first_of(task: asyncio.Future[Any], event: asyncio.Event) -> None:
    """Wait until `task` is done or `event` is set."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


def file_size(path: Path) -> int:
    """The file's size; 0 when there is no file."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
