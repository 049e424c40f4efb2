"""Every error leaves the API as application/problem+json (RFC 9457)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetkeeper.errors import FleetkeeperError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "status": status, "title": title, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    return JSONResponse(
        jsonable_encoder(body), status_code=status, media_type=PROBLEM, headers=headers
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetkeeperError)
    if exc.status >= 500:
        log.exception("unexpected error", exc_info=exc)
    return problem(exc.status, exc.title, exc.detail, **exc.extra)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        first = next(e for e in exc.errors() if e.get("type") == "json_invalid")
        where = first.get("ctx", {}).get("error", "")
        return problem(
            400,
            "Malformed JSON",
            f"the request body is not valid JSON: {where}",
            errors=errors,
            code="malformed",
        )
    first_error = errors[0] if errors else {"field": "body", "message": "invalid"}
    detail = f"{first_error['field']}: {first_error['message']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem(422, "Invalid input", detail, errors=errors, code="invalid")


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {
        401: "Unauthenticated",
        404: "Not found",
        405: "Method not allowed",
        413: "Payload too large",
    }
    extra = {"code": "too_large"} if exc.status_code == 413 else {}
    return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail), **extra)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return problem(500, "Internal error", "an unexpected error occurred; see the server log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(FleetkeeperError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
