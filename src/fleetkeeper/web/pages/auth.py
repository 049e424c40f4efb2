"""Logging in and out: a user's password opens a session cookie."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleetkeeper.api.deps import StateDep
from fleetkeeper.errors import Unauthenticated
from fleetkeeper.services import auth
from fleetkeeper.web import sessions
from fleetkeeper.web.common import ActionDep, render, safe_next

router = APIRouter(include_in_schema=False)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", None, next=safe_next(next))


@router.post("/login")
async def login(
    request: Request,
    state: StateDep,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=200)],
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    now = state.clock.now()
    try:
        async with state.db.write() as session:
            user = await auth.authenticate_password(session, username, password)
            value, _ = await sessions.open_session(session, user, now)
    except Unauthenticated as exc:
        return render(
            request,
            "login.html",
            None,
            status_code=401,
            next=safe_next(next),
            username=username,
            error=exc.detail,
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=int(sessions.ABSOLUTE.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(state: StateDep, user: ActionDep) -> Response:
    async with state.db.write() as session:
        await sessions.close(session, user.session_hash)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response
