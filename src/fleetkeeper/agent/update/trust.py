"""Which release keys the device trusts, and whether an artifact's signature verifies.

The signed message is `artifact:<sha256 hex>:<version>` (Ed25519, base64 signature); a key's id
is the first 16 hex digits of the sha256 of its 32 raw bytes (docs/ota.md, "Signatures").

Trusted keys come from the config (`[update] trusted_keys`). Without any, the device pins the
server's list the first time it needs it and keeps it in `release-keys.json`: trust on first
use. From then on a key the server adds later is not trusted until the file is removed (or the
key is configured) — the price of a server that cannot talk a device into new keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetkeeper.protocol.keys import artifact_message, write_private
from fleetkeeper.protocol.keys import release_key_id as key_id
from fleetkeeper.protocol.messages import ArtifactRef, ReleaseKey

log = logging.getLogger("fleetkeeper.agent.update")
PIN_FILE = "release-keys.json"


@dataclass(frozen=True)
class TrustedKey:
    id: str
    public_key: str  # base64 of the 32 raw bytes
    name: str = ""


def trusted_key(public_key: str, name: str = "") -> TrustedKey | None:
    """The key with its computed id, or None when `public_key` is not an Ed25519 key."""
    try:
        raw = base64.b64decode(public_key.strip(), validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        return None
    return TrustedKey(key_id(raw), public_key.strip(), name)


def check_signature(artifact: ArtifactRef, keys: Mapping[str, TrustedKey]) -> str | None:
    """Why `artifact` is not to be trusted, or None when its signature verifies."""
    if not artifact.signature:
        return "the artifact is not signed"
    key = keys.get(artifact.key_id)
    if key is None:
        return f"the artifact is signed with key {artifact.key_id or '(none)'}, not a trusted one"
    try:
        signature = base64.b64decode(artifact.signature, validate=True)
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key))
        public.verify(signature, artifact_message(artifact.sha256, artifact.version))
    except (binascii.Error, ValueError, InvalidSignature):
        return (
            f"the signature of {artifact.name or 'the artifact'} {artifact.version} does not "
            f"verify with key {key.id}"
        )
    return None


class TrustStore:
    """The trusted release keys: configured ones, else the server's, pinned on first use."""

    def __init__(self, configured: Sequence[str], pin_path: Path) -> None:
        self.pin_path = pin_path
        self._configured = _by_id(trusted_key(k) for k in configured)
        self._pinned: dict[str, TrustedKey] | None = None

    @property
    def pinning(self) -> bool:
        return not self._configured

    async def keys(
        self, fetch: Callable[[], Awaitable[Sequence[ReleaseKey]]]
    ) -> Mapping[str, TrustedKey]:
        """The trusted keys; `fetch` asks the server when there is nothing pinned yet.

        Raises what `fetch` raises (the caller retries a network error).
        """
        if self._configured:
            return self._configured
        if self._pinned is None:
            self._pinned = self._load()
        if self._pinned is not None:
            return self._pinned
        keys = _by_id(trusted_key(k.public_key, k.name) for k in await fetch())
        if keys:  # an empty list is not pinned: the next job asks again
            self._save(keys)
            self._pinned = keys
            log.warning(
                "trusting the server's release keys from now on (trust on first use): %s",
                ", ".join(sorted(keys)),
            )
        return keys

    def _load(self) -> dict[str, TrustedKey] | None:
        """The pinned keys; None when nothing is pinned yet."""
        try:
            data: Any = json.loads(self.pin_path.read_text(encoding="utf-8"))
            entries = data["keys"]
            if not isinstance(entries, list):
                raise TypeError("'keys' is not a list")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Pinning afresh over a damaged file would let whoever damaged it choose the keys.
            log.error("%s is unreadable (%s): no release key is trusted", self.pin_path, exc)
            return {}
        return _by_id(
            trusted_key(str(e.get("public_key") or ""), str(e.get("name") or ""))
            for e in entries
            if isinstance(e, dict)
        )

    def _save(self, keys: Mapping[str, TrustedKey]) -> None:
        body = {
            "keys": [
                {"id": k.id, "name": k.name, "public_key": k.public_key} for k in keys.values()
            ]
        }
        self.pin_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.pin_path, (json.dumps(body, indent=2) + "\n").encode("utf-8"))


def _by_id(keys: Iterable[TrustedKey | None]) -> dict[str, TrustedKey]:
    return {k.id: k for k in keys if k is not None}
