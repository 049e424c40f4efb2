"""Artifact bytes over HTTP: whole, or one byte range (RFC 9110 §14) to resume a download."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from fleetkeeper.api.problems import problem
from fleetkeeper.errors import FleetkeeperError
from fleetkeeper.store.artifacts import ArtifactStore, MissingObject
from fleetkeeper.store.models import Artifact

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$", re.ASCII)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as Content-Range counts


class Unsatisfiable(Exception):
    """The range starts past the end: answer 416."""


def requested_range(
    range_header: str | None, if_range: str | None, etag: str, size: int
) -> ByteRange | None:
    """The one range to send, or None for the whole; Unsatisfiable for 416.

    What this server cannot serve as asked is answered whole, as RFC 9110 allows: other units,
    several ranges, malformed ranges, and an `If-Range` that does not name the current ETag (a
    date never does: there is no Last-Modified)."""
    if not range_header:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None
    match = _RANGE.match(range_header.strip().replace(" ", ""))
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        if int(last) == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - int(last)), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)


def etag_of(artifact: Artifact) -> str:
    return f'"{artifact.sha256}"'


def artifact_headers(artifact: Artifact) -> dict[str, str]:
    """The headers every answer about an artifact's bytes carries (docs/ota.md)."""
    return {
        "Accept-Ranges": "bytes",
        "ETag": etag_of(artifact),
        "X-Artifact-Sha256": artifact.sha256,
        "X-Artifact-Signature": artifact.signature,
        "X-Artifact-Key-Id": artifact.key_id,
        "X-Artifact-Version": artifact.version,
    }


async def artifact_response(
    request: Request, store: ArtifactStore, artifact: Artifact, *, filename: str | None = None
) -> Response:
    """200 with the whole artifact, 206 with the range asked for, or 416."""
    headers = artifact_headers(artifact)
    try:
        stored = await store.size(artifact.storage_key)
    except MissingObject:
        stored = -1
    if stored != artifact.size:
        raise FleetkeeperError(
            f"the bytes of artifact {artifact.id} are missing or damaged in the artifact store"
        )
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    size = artifact.size
    try:
        wanted = requested_range(
            request.headers.get("range"), request.headers.get("if-range"), etag_of(artifact), size
        )
    except Unsatisfiable:
        refusal = problem(
            416,
            "Range not satisfiable",
            f"the artifact has {size} bytes",
            code="range_not_satisfiable",
            size=size,
        )
        refusal.headers.update({**headers, "Content-Range": f"bytes */{size}"})
        return refusal
    if wanted is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            store.read(artifact.storage_key),
            headers=headers,
            media_type="application/octet-stream",
        )
    headers["Content-Length"] = str(wanted.end - wanted.start + 1)
    headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{size}"
    return StreamingResponse(
        store.read(artifact.storage_key, wanted.start, wanted.end + 1),
        status_code=206,
        headers=headers,
        media_type="application/octet-stream",
    )
