"""What the agent keeps between runs, in its state dir.

    device.key        the Ed25519 private key (0600, made on first start)
    identity.json     device_id, serial, model, certificate (written once enrolment succeeded)
    telemetry.sqlite3 the telemetry queue (and its -wal / -shm companions)
    update/           the job under way, finished jobs, pinned release keys, downloads
                      (agent/update/journal.py)
    slots/            the directory install handler's slots, unless [update] slots_dir says

identity.json present means enrolled: the agent authenticates with its key and never enrols
again, whatever happens to the server in between.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper.protocol.keys import load_or_create_key, write_private

KEY_FILE = "device.key"
IDENTITY_FILE = "identity.json"
QUEUE_FILE = "telemetry.sqlite3"


class StateError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    device_id: str
    serial: str
    model: str
    certificate: str = ""
    ca_certificate: str = ""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def queue_path(self) -> Path:
        return self.path / QUEUE_FILE

    def prepare(self) -> None:
        """Create the directory (0700) if it is not there."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state dir {self.path}: {exc.strerror}") from None
        if not self.path.is_dir():
            raise StateError(f"state dir {self.path} is not a directory")

    def load_key(self) -> tuple[Ed25519PrivateKey, bool]:
        return load_or_create_key(self.key_path)

    def load_identity(self) -> Identity | None:
        try:
            text = self.identity_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.identity_path}: {exc.strerror}") from None
        try:
            data: Any = json.loads(text)
            return Identity(
                device_id=str(data["device_id"]),
                serial=str(data["serial"]),
                model=str(data.get("model") or ""),
                certificate=str(data.get("certificate") or ""),
                ca_certificate=str(data.get("ca_certificate") or ""),
            )
        except (ValueError, KeyError, TypeError) as exc:
            # Never silently re-enrol over a damaged identity: the server would refuse the
            # serial anyway (already_enrolled), and a person must decide.
            raise StateError(
                f"{self.identity_path} is damaged ({exc}); restore it, or remove the state dir "
                "and have an operator re-register the device"
            ) from None

    def save_identity(self, identity: Identity) -> None:
        text = json.dumps(asdict(identity), indent=2) + "\n"
        write_private(self.identity_path, text.encode("utf-8"))

    def wipe(self, *, local_data: bool) -> list[Path]:
        """Delete the credentials (key, identity) and, with `local_data`, the queue too."""
        doomed = [self.key_path, self.identity_path]
        if local_data:
            doomed += [self.queue_path, *self.path.glob(f"{QUEUE_FILE}-*")]
        removed = []
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed
