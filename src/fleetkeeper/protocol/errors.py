"""What can go wrong when a device talks to the server (docs/protocol.md, "Error codes").

ProtocolError                   the request got no useful answer
├── Unavailable                 network error, timeout or 5xx: retry with backoff
│   └── RateLimited             429 rate_limited: wait `retry_after` seconds, then retry
└── Refused                     the server said no: `code`, `status`, `detail` of the problem
    ├── AuthenticationFailed    401 the device could not prove who it is
    ├── Restricted              403 device_pending / device_quarantined: only check-in works
    ├── Stopped                 403 the device must stop
    │   ├── Revoked             credentials_revoked
    │   └── Retired             device_retired; `wipe`: erase local data too
    ├── EnrollmentRefused       403 provisioning_refused / not_preauthorised
    ├── AlreadyEnrolled         409 already_enrolled (`device_id` when the server names it)
    ├── CommandClosed           409 command_closed: the result came too late
    ├── JobClosed               409 job_closed: the server ended the execution; stop it
    └── InvalidTransition       409 invalid_transition: the report does not fit the job's state

Branch on the class (or on `code`); show `detail` to people.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    pass


class Unavailable(ProtocolError):
    """No answer, or an answer that says "not now" (5xx): the same request may work later."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RateLimited(Unavailable):
    def __init__(self, retry_after: float, detail: str = "") -> None:
        super().__init__(f"rate limited: retry in {retry_after:g} s", status=429)
        self.retry_after = retry_after
        self.detail = detail


class Refused(ProtocolError):
    """An error answer: repeating the same request will not help."""

    def __init__(
        self, code: str, status: int, detail: str, problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}" if detail else f"{status} {code}")
        self.code = code
        self.status = status
        self.detail = detail
        self.problem: dict[str, Any] = problem or {}


class AuthenticationFailed(Refused):
    pass


class Restricted(Refused):
    pass


class Stopped(Refused):
    pass


class Revoked(Stopped):
    pass


class Retired(Stopped):
    def __init__(
        self,
        code: str,
        status: int,
        detail: str,
        problem: dict[str, Any] | None = None,
        *,
        wipe: bool = False,
    ) -> None:
        super().__init__(code, status, detail, problem)
        self.wipe = wipe


class EnrollmentRefused(Refused):
    pass


class AlreadyEnrolled(Refused):
    @property
    def device_id(self) -> str | None:
        found = self.problem.get("device_id")
        return found if isinstance(found, str) else None


class CommandClosed(Refused):
    pass


class JobClosed(Refused):
    pass


class InvalidTransition(Refused):
    pass


_BY_CODE: dict[str, type[Refused]] = {
    "challenge_invalid": AuthenticationFailed,
    "signature_invalid": AuthenticationFailed,
    "unknown_device": AuthenticationFailed,
    "token_missing": AuthenticationFailed,
    "token_invalid": AuthenticationFailed,
    "token_expired": AuthenticationFailed,
    "device_pending": Restricted,
    "device_quarantined": Restricted,
    "credentials_revoked": Revoked,
    "provisioning_refused": EnrollmentRefused,
    "not_preauthorised": EnrollmentRefused,
    "already_enrolled": AlreadyEnrolled,
    "command_closed": CommandClosed,
    "job_closed": JobClosed,
    "invalid_transition": InvalidTransition,
}


def refusal(status: int, problem: dict[str, Any]) -> Refused:
    """The exception for an error answer (4xx other than 429) with its problem body."""
    code = problem.get("code")
    if not isinstance(code, str) or not code:
        code = f"http_{status}"
    detail = problem.get("detail")
    detail = detail if isinstance(detail, str) else str(problem.get("title") or "")
    if code == "device_retired":
        return Retired(code, status, detail, problem, wipe=problem.get("wipe") is True)
    cls = _BY_CODE.get(code, AuthenticationFailed if status == 401 else Refused)
    return cls(code, status, detail, problem)
