"""The domain's exceptions. The API turns each into an application/problem+json answer.

FleetkeeperError            500  something the operator cannot fix by changing the request
├── BadRequest              400  malformed input (query syntax, CSV structure)
│   └── QuerySyntaxError    400  a fleet query that does not parse (carries the position)
├── Unauthenticated         401
├── Forbidden               403
├── NotFound                404
├── Conflict                409  duplicate serial, name taken, state does not allow it
├── PayloadTooLarge         413
├── Invalid                 422  well-formed but wrong (unknown model, per-row import errors)
└── Unavailable             503  the server cannot do it now; the same request may work later
"""

from __future__ import annotations

from typing import Any


class FleetkeeperError(Exception):
    status = 500
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(FleetkeeperError):
    status = 400
    title = "Bad request"


class QuerySyntaxError(BadRequest):
    title = "Invalid fleet query"

    def __init__(self, detail: str, *, query: str, position: int, line: int, column: int) -> None:
        super().__init__(detail, query=query, position=position, line=line, column=column)
        self.position = position


class Unauthenticated(FleetkeeperError):
    status = 401
    title = "Unauthenticated"


class Forbidden(FleetkeeperError):
    status = 403
    title = "Forbidden"


class NotFound(FleetkeeperError):
    status = 404
    title = "Not found"


class Conflict(FleetkeeperError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(FleetkeeperError):
    status = 413
    title = "Payload too large"


class Invalid(FleetkeeperError):
    status = 422
    title = "Invalid input"


class Unavailable(FleetkeeperError):
    status = 503
    title = "Service unavailable"
