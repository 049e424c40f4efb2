"""A small synchronous client for the management API, as the CLI needs it.

    ApiError              anything that stops a call from giving an answer
    ├── ServerError       the server answered with an error (carries the problem+json body)
    └── Unreachable       no answer at all: connection refused, DNS, timeout

`open_http` builds the HTTP client every command uses; tests replace it with one that talks to
an in-process app.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, BinaryIO, Self
from urllib.parse import quote

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class ApiError(Exception):
    pass


class ServerError(ApiError):
    """An error answer. `problem` is the application/problem+json body (or a stand-in for it)."""

    def __init__(self, problem: Mapping[str, Any]) -> None:
        self.problem = dict(problem)
        self.status = int(self.problem.get("status") or 0)
        self.title = str(self.problem.get("title") or "Error")
        self.detail = str(self.problem.get("detail") or "")
        errors = self.problem.get("errors")
        self.errors: list[dict[str, Any]] = (
            [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        )
        super().__init__(f"{self.status} {self.title}: {self.detail}")


class Unreachable(ApiError):
    def __init__(self, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(f"cannot reach the Fleetkeeper server at {server}: {reason}")


def open_http(server: str) -> httpx.Client:
    """The HTTP client for `server` (the seam tests replace)."""
    return httpx.Client(base_url=server, timeout=TIMEOUT)


def join(base: str, *segments: str) -> str:
    """`base` with path segments appended, each quoted (an id cannot reach another route)."""
    return "/".join([base, *(quote(s, safe="") for s in segments)])


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "status" in body:
        return body
    # Not one of ours (a proxy, or not a Fleetkeeper server at all): describe what came back.
    text = " ".join(response.text.split())[:300]
    return {
        "status": response.status_code,
        "title": response.reason_phrase or "Error",
        "detail": text or f"HTTP {response.status_code} from {response.request.url}",
    }


def compact(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """`values` without the entries that are None (options not given)."""
    return {k: v for k, v in (values or {}).items() if v is not None}


class ApiClient:
    """Calls under /api/v1 with a bearer token; answers are parsed JSON, errors raise ApiError.

    The client closes the HTTP client it was given (or built) when it is closed.
    """

    def __init__(
        self, server: str, token: str | None = None, *, http: httpx.Client | None = None
    ) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._http = http if http is not None else open_http(self.server)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, BinaryIO, str]] | None = None,
    ) -> Any:
        """The parsed JSON answer (None for an empty one); ServerError for 4xx and 5xx.

        `data` and `files` make a multipart/form-data body; files stream from their handles."""
        all_headers = {"Accept": "application/json", **(headers or {})}
        if self._token:
            all_headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._http.request(
                method,
                path,
                params=compact(params),
                json=json,
                content=content,
                headers=all_headers,
                data=data,
                files=files,
            )
        except httpx.ConnectError as exc:
            raise Unreachable(self.server, _connect_reason(exc)) from None
        except httpx.TimeoutException:
            raise Unreachable(self.server, "no answer in time") from None
        except httpx.TransportError as exc:
            raise Unreachable(self.server, str(exc) or type(exc).__name__) from None
        if response.is_error:
            raise ServerError(_problem_of(response))
        if not response.content:
            return None
        return response.json()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body, params=params)

    def patch(self, path: str, body: Any, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("PATCH", path, json=body, params=params)

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("DELETE", path, params=params)

    def pages(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every page of a list, following `next_cursor` from the page given by `params`."""
        query = dict(params or {})
        while True:
            page: dict[str, Any] = self.get(path, query)
            yield page
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def page(
        self, path: str, params: Mapping[str, Any] | None = None, *, all_pages: bool = False
    ) -> dict[str, Any]:
        """One page as the server sent it, or with `all_pages` every item in one page."""
        if not all_pages:
            page: dict[str, Any] = self.get(path, params)
            return page
        items = [item for page in self.pages(path, params) for item in page["items"]]
        return {"items": items, "next_cursor": None}


def _connect_reason(exc: httpx.ConnectError) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused (is `fleetkeeper serve` running there?)"
    return text or "connection failed"
