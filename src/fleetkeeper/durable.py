"""Making file changes survive a power cut: shared by the server, the agent and the protocol."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def sync_directory(directory: Path) -> None:
    """Flush a directory's entries, so a rename or a new file in it is on disk.

    Not every platform or file system lets a directory be opened or synced; there it is skipped.
    """
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
