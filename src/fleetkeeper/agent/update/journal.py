"""What survives a power loss in the middle of a job, in `<state-dir>/update/`:

    job.json            the job being worked on: its step, slots and unsent reports (rewritten
                        at every step: a new file, fsync, rename, so it is old or new, never half)
    finished.json       the jobs finished here lately (id, attempt, result): never started twice
    release-keys.json   the release keys pinned on first use (trust.py)
    downloads/          <sha256>.download, the artifact as far as it got (kept for a resume)

Nothing is written before the first job arrives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetkeeper.agent.update.machine import Report, Step, UpdateState
from fleetkeeper.protocol.keys import write_private
from fleetkeeper.protocol.messages import ArtifactRef, Job, read_job

log = logging.getLogger("fleetkeeper.agent.update")
JOB_FILE = "job.json"
FINISHED_FILE = "finished.json"
DOWNLOADS = "downloads"
MAX_FINISHED = 200  # far more than a device sees between two rounds of the same deployment
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def valid_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


def job_to_json(job: Job) -> dict[str, Any]:
    """`job` as the check-in answer carried it (protocol.messages.read_job reads it back)."""
    command = job.command
    return {
        "id": job.id,
        "deployment_id": job.deployment_id,
        "kind": job.kind,
        "state": job.state,
        "attempt": job.attempt,
        "cancel": job.cancel,
        "artifact": asdict(job.artifact) if job.artifact else None,
        "rollback_to": job.rollback_to,
        "command": (
            {"name": command.name, "args": command.args, "timeout": command.timeout}
            if command
            else None
        ),
        "preconditions": job.preconditions,
        "timeouts": job.timeouts,
        "not_after": job.not_after.isoformat() if job.not_after else None,
    }


def state_to_json(state: UpdateState) -> dict[str, Any]:
    return {
        "job": job_to_json(state.job),
        "step": str(state.step),
        "from_slot": state.from_slot,
        "from_version": state.from_version,
        "target": state.target,
        "progress": state.progress,
        "reason": state.reason,
        "detail": state.detail,
        "cancel_refused": state.cancel_refused,
        "closed": state.closed,
        "outbox": [asdict(r) for r in state.outbox],
        "result": state.result,
    }


def state_from_json(data: dict[str, Any]) -> UpdateState:
    """Raises ValueError, KeyError or TypeError for a document that is not one."""
    return UpdateState(
        job=read_job(data["job"]),
        step=Step(data["step"]),
        from_slot=data.get("from_slot"),
        from_version=data.get("from_version"),
        target=data.get("target"),
        progress=data.get("progress"),
        reason=data.get("reason"),
        detail=data.get("detail"),
        cancel_refused=bool(data.get("cancel_refused")),
        closed=bool(data.get("closed")),
        outbox=tuple(Report(**r) for r in data.get("outbox") or ()),
        result=data.get("result"),
    )


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def job_path(self) -> Path:
        return self.path / JOB_FILE

    @property
    def finished_path(self) -> Path:
        return self.path / FINISHED_FILE

    @property
    def downloads(self) -> Path:
        return self.path / DOWNLOADS

    def load(self) -> UpdateState | None:
        """The job in progress, if any. A damaged file is set aside: the job is not resumed
        (the server times it out and may retry it), and the agent keeps working."""
        try:
            text = self.job_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return state_from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.job_path.with_name(f"{JOB_FILE}.damaged")
            self.job_path.replace(aside)
            log.error("the update state was damaged (%s): moved to %s", exc, aside)
            return None

    def save(self, state: UpdateState) -> None:
        self._write(self.job_path, state_to_json(state))

    def download_path(self, artifact: ArtifactRef) -> Path:
        """Where `artifact` is downloaded to; named by its digest, so a partial file is only
        ever continued with the same bytes."""
        if not valid_sha256(artifact.sha256):
            raise ValueError(f"not a sha256: {artifact.sha256!r}")
        self.downloads.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.downloads / f"{artifact.sha256}.download"

    def is_finished(self, job: Job) -> bool:
        return any(
            entry.get("id") == job.id and entry.get("attempt") == job.attempt
            for entry in self._finished()
        )

    def finish(self, state: UpdateState, now: datetime | None = None) -> None:
        """Remember the job as finished, then forget its state and downloads.

        In this order: a power loss in between leaves a finished job whose state is still
        there, and finishing it again is harmless.
        """
        entry = {
            "id": state.job.id,
            "attempt": state.job.attempt,
            "result": state.result,
            "closed": state.closed,
            "at": (now or datetime.now(UTC)).isoformat(),
        }
        entries = [
            e
            for e in self._finished()
            if (e.get("id"), e.get("attempt")) != (state.job.id, state.job.attempt)
        ]
        self._write(self.finished_path, {"jobs": [*entries, entry][-MAX_FINISHED:]})
        with contextlib.suppress(FileNotFoundError):
            self.job_path.unlink()
        shutil.rmtree(self.downloads, ignore_errors=True)

    def _finished(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.finished_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): starting a new list", self.finished_path, exc)
            return []
        jobs = data.get("jobs") if isinstance(data, dict) else None
        return [e for e in jobs if isinstance(e, dict)] if isinstance(jobs, list) else []

    def _write(self, path: Path, body: dict[str, Any]) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, (json.dumps(body, indent=1) + "\n").encode("utf-8"))
