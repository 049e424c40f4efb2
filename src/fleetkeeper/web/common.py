"""What every page needs: the logged-in user, CSRF checks, rendering and flash messages.

A page declares `user: UserDep` and gets the `WebUser`, or the browser is sent to the login
page (and back afterwards). An action (a POST form) declares `user: ActionDep` instead: the
same, plus the form's `csrf` field (or the `X-CSRF-Token` header of a fetch) checked against
the session's token. Actions answer with a redirect (`back`) carrying a flash message, so
reloading a page never repeats an action.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData

from fleetkeeper import __version__
from fleetkeeper.api.deps import StateDep
from fleetkeeper.api.state import AppState
from fleetkeeper.errors import FleetkeeperError
from fleetkeeper.services.context import Change
from fleetkeeper.web import sessions
from fleetkeeper.web.sessions import WebUser

TEMPLATES = Path(__file__).parent / "templates"
env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit}"
            break
    else:
        text = f"{seconds}s"
    return f"in {text}" if future else f"{text} ago"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


env.filters["ago"] = _ago
env.filters["when"] = _when
env.filters["urlquote"] = lambda value: quote(str(value), safe="")
env.globals["version"] = __version__


class LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


async def _user(request: Request, state: StateDep) -> WebUser:
    async with state.db.write() as session:
        user = await sessions.find(session, request.cookies.get(sessions.COOKIE), state.clock.now())
    if user is None:
        raise LoginRequired(
            request.url.path + (f"?{request.url.query}" if request.url.query else "")
        )
    return user


async def _action(request: Request, user: Annotated[WebUser, Depends(_user)]) -> WebUser:
    token = request.headers.get("x-csrf-token")
    if token is None:
        form = await request.form()
        value = form.get("csrf")
        token = value if isinstance(value, str) else None
    sessions.check_csrf(user, token)
    return user


UserDep = Annotated[WebUser, Depends(_user)]
ActionDep = Annotated[WebUser, Depends(_action)]


def render(
    request: Request,
    template: str,
    user: WebUser | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    state: AppState = request.app.state.fleetkeeper
    body = env.get_template(template).render(
        request=request,
        user=user,
        now=state.clock.now(),
        path=request.url.path,
        flash_ok=request.query_params.get("ok"),
        flash_error=request.query_params.get("error"),
        **context,
    )
    return HTMLResponse(body, status_code=status_code, headers=_SECURITY_HEADERS)


# Pages are only ever framed by themselves; scripts come from this server only.
_SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'",
}


def back(url: str, *, ok: str | None = None, error: str | None = None) -> RedirectResponse:
    """Redirect after an action, with a flash message (303: the browser GETs the target)."""
    params = {k: v for k, v in (("ok", ok), ("error", error)) if v}
    sep = "&" if "?" in url else "?"
    return RedirectResponse(url + (sep + urlencode(params) if params else ""), status_code=303)


def change(request: Request, user: WebUser, reason: str | None = None) -> Change:
    state: AppState = request.app.state.fleetkeeper
    return Change(
        principal=user.principal,
        reason=reason or None,
        request_id=request.headers.get("x-request-id"),
        clock=state.clock,
    )


def text_field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


def safe_next(url: str | None) -> str:
    """Only a path of this site: never a redirect elsewhere."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    return url


_NOT_PAGES = ("/api/", "/device/", "/healthz", "/metrics", "/openapi", "/docs", "/static/")


def is_page(path: str) -> bool:
    return not path.startswith(_NOT_PAGES)


def install(app: FastAPI) -> None:
    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"/login?{urlencode({'next': exc.next_url})}", status_code=303)

    app.add_exception_handler(LoginRequired, login_required)
    problem = app.exception_handlers[FleetkeeperError]

    async def page_error(request: Request, exc: Exception) -> Response:
        """A page's error is a page (the API's stays problem+json)."""
        if not is_page(request.url.path) or not isinstance(exc, FleetkeeperError):
            answer = problem(request, exc)
            return await answer if inspect.isawaitable(answer) else answer
        state: AppState = request.app.state.fleetkeeper
        async with state.db.read() as session:
            user = await sessions.find(
                session, request.cookies.get(sessions.COOKIE), state.clock.now()
            )
        return render(
            request, "error.html", user, status_code=exc.status, title=exc.title, detail=exc.detail
        )

    app.add_exception_handler(FleetkeeperError, page_error)
