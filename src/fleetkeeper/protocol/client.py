"""The reference client of the device API (docs/protocol.md), used by the agent and simulator.

    async with DeviceClient("https://fleet.example.com", key, device_id) as device:
        result = await device.checkin(wait=30)

The client keeps the access token: it authenticates before the first call that needs one,
renews a minute before expiry, and when the server still says `token_expired` or
`token_invalid` it authenticates again and repeats the request once. Everything else the server
says no to surfaces as an exception from `protocol.errors`; retrying is the caller's choice
(see `protocol.backoff`).

Tests hand in an `httpx.AsyncClient` or a transport (`httpx.ASGITransport(app=app)`,
`httpx.MockTransport(handler)`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Self
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper import __version__
from fleetkeeper.protocol.errors import AuthenticationFailed, RateLimited, Unavailable, refusal
from fleetkeeper.protocol.keys import public_key_b64, sign_b64
from fleetkeeper.protocol.messages import (
    CheckinResult,
    DeviceView,
    Enrollment,
    JobAnswer,
    Location,
    LogUpload,
    Point,
    ReleaseKey,
    TelemetryResult,
    read_checkin,
    read_device,
    read_enrollment,
    read_job_answer,
    read_log_upload,
    read_release_keys,
    read_telemetry,
)

PREFIX = "/device/v1"
MAX_POINTS = 1000
MAX_OUTPUT_BYTES = 64 * 1024
MAX_LOG_BYTES = 1024 * 1024
MAX_DETAIL_BYTES = 4096
MAX_WAIT = 60.0
RENEW_EARLY = 60.0
DEFAULT_RETRY_AFTER = 5.0
DEFAULT_TOKEN_LIFETIME = 300.0  # when the server does not say (it should: expires_in)
RETRY_ON = frozenset({"token_expired", "token_invalid"})


def enroll_message(serial: str, public_key: str) -> str:
    return f"enroll:{serial}:{public_key}"


def auth_message(device_id: str, challenge: str) -> str:
    return f"auth:{device_id}:{challenge}"


def truncate_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date); a default when absent."""
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    return max(0.0, when.timestamp() - time.time())


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"detail": response.text[:200]}
    return body if isinstance(body, dict) else {}


class DeviceClient:
    def __init__(
        self,
        server: str,
        key: Ed25519PrivateKey,
        device_id: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server.rstrip("/")
        self.key = key
        self.public_key = public_key_b64(key)
        self.device_id = device_id
        self.timeout = timeout
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": f"fleetkeeper-agent/{__version__}"},
        )
        self._monotonic = monotonic
        self._token: str | None = None
        self._renew_at = 0.0
        self._auth_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    @property
    def has_token(self) -> bool:
        return self._token is not None and self._monotonic() < self._renew_at

    def forget_token(self) -> None:
        self._token = None

    # --- the calls of the protocol -------------------------------------------------------

    async def enroll(
        self,
        serial: str,
        model: str,
        *,
        provisioning_token: str | None = None,
        firmware_version: str | None = None,
        hardware_revision: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Enrollment:
        """Register this key as device `serial`; remembers the device id it gets."""
        body: dict[str, Any] = {
            "serial": serial,
            "model": model,
            "public_key": self.public_key,
            "proof": sign_b64(self.key, enroll_message(serial, self.public_key)),
            "provisioning_token": provisioning_token,
            "firmware_version": firmware_version,
            "hardware_revision": hardware_revision,
            "attributes": dict(attributes) if attributes else None,
        }
        response = await self._send("POST", "/enroll", json=_compact(body))
        enrollment = read_enrollment(_json(response))
        self.device_id = enrollment.device_id
        return enrollment

    async def authenticate(self) -> None:
        """Get a new access token by signing a challenge (the next calls use it)."""
        async with self._auth_lock:
            await self._authenticate()

    async def checkin(self, wait: float = 0) -> CheckinResult:
        """Say the device is alive; with `wait` > 0, hold on until a command comes or it ends."""
        wait = min(max(0.0, wait), MAX_WAIT)
        body = {"wait": int(wait) if wait == int(wait) else wait}
        response = await self._call("POST", "/checkin", json=body, read_timeout=self.timeout + wait)
        return read_checkin(_json(response))

    async def report_command(
        self, command_id: str, state: str, result: Any = None, output: str | None = None
    ) -> None:
        if state not in ("succeeded", "failed"):
            raise ValueError("a command's result state is succeeded or failed")
        body: dict[str, Any] = {"state": state, "result": result}
        if output is not None:
            body["output"] = truncate_utf8(output, MAX_OUTPUT_BYTES)
        await self._call("POST", f"/commands/{_segment(command_id)}", json=body)

    async def report_inventory(
        self,
        *,
        firmware_version: str | None = None,
        hardware_revision: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        location: Location | None = None,
    ) -> DeviceView:
        body: dict[str, Any] = _compact(
            {
                "firmware_version": firmware_version,
                "hardware_revision": hardware_revision,
                "attributes": dict(attributes) if attributes is not None else None,
                "location": location.to_json() if location else None,
            }
        )
        response = await self._call("POST", "/inventory", json=body)
        return read_device(_json(response))

    async def send_telemetry(self, points: Sequence[Point]) -> TelemetryResult:
        if len(points) > MAX_POINTS:
            raise ValueError(f"at most {MAX_POINTS} points a request, not {len(points)}")
        response = await self._call(
            "POST", "/telemetry", json={"points": [p.to_json() for p in points]}
        )
        return read_telemetry(_json(response))

    async def upload_logs(self, text: str, source: str | None = None) -> LogUpload:
        data = text.encode("utf-8")
        if len(data) > MAX_LOG_BYTES:
            raise ValueError(f"a log upload is at most {MAX_LOG_BYTES} bytes, not {len(data)}")
        response = await self._call(
            "POST",
            "/logs",
            content=data,
            headers={"Content-Type": "text/plain; charset=utf-8"},
            params={"source": source} if source else None,
        )
        return read_log_upload(_json(response))

    async def report_job(
        self,
        job_id: str,
        state: str,
        *,
        progress: int | None = None,
        reason: str | None = None,
        detail: str | None = None,
        version: str | None = None,
        cancel_refused: bool = False,
    ) -> JobAnswer:
        """Tell the server where a job stands (docs/ota.md, "Reporting progress")."""
        body = _compact(
            {
                "state": state,
                "progress": progress,
                "reason": reason,
                "detail": truncate_utf8(detail, MAX_DETAIL_BYTES) if detail else None,
                "version": version,
                "cancel_refused": cancel_refused or None,
            }
        )
        response = await self._call("POST", f"/jobs/{_segment(job_id)}", json=body)
        return read_job_answer(_json(response))

    async def release_keys(self) -> tuple[ReleaseKey, ...]:
        """The release keys the server trusts (an agent pins them on first enrolment)."""
        response = await self._call("GET", "/release-keys")
        return read_release_keys(_json(response))

    async def download(
        self, url: str, write: Callable[[bytes], object], *, offset: int = 0
    ) -> Download:
        """Stream an artifact from byte `offset` (resume), handing each chunk to `write`.

        `url` is the job's `artifact.url` (a path under the server, or absolute). `write` only
        ever sees bytes from `offset` on: when the server (or a proxy) ignores the Range and
        sends the whole artifact, the first `offset` bytes are skipped here (`resumed` is then
        False). Returns the integrity headers the server sent; checking them is the caller's job.
        """
        token = self._token if self.has_token else await self._token_for_request()
        assert token is not None
        try:
            return await self._stream(url, token, write, offset)
        except AuthenticationFailed as exc:
            if exc.code not in RETRY_ON:
                raise
        # Nothing was written yet: the status comes before the body.
        token = await self._token_for_request(stale=token)
        return await self._stream(url, token, write, offset)

    async def _stream(
        self, url: str, token: str, write: Callable[[bytes], object], offset: int
    ) -> Download:
        target = url if "://" in url else f"{self.server}{url}"
        headers = {"Authorization": f"Bearer {token}"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with self._http.stream(
                "GET", target, headers=headers, timeout=httpx.Timeout(self.timeout, connect=10.0)
            ) as response:
                if response.status_code == 416:
                    return _download(response, 0, resumed=True)
                if not response.is_success:
                    await response.aread()
                    self._raise_for(response)
                resumed = response.status_code == 206
                skip = 0 if resumed else offset
                received = 0
                async for chunk in response.aiter_bytes():
                    if skip:
                        dropped = min(skip, len(chunk))
                        skip -= dropped
                        chunk = chunk[dropped:]
                        if not chunk:
                            continue
                    write(chunk)
                    received += len(chunk)
                return _download(response, received, resumed=resumed)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"download from {self.server} broke off: {reason}") from exc

    # --- plumbing -------------------------------------------------------------------------

    async def _authenticate(self) -> None:
        if self.device_id is None:
            raise ValueError("this client has no device id: enroll first")
        response = await self._send("POST", "/auth/challenge", json={"device_id": self.device_id})
        body = _json(response)
        challenge = body.get("challenge") if isinstance(body, dict) else None
        if not isinstance(challenge, str):
            raise Unavailable("the server's challenge answer has no 'challenge'")
        response = await self._send(
            "POST",
            "/auth/token",
            json={
                "device_id": self.device_id,
                "challenge": challenge,
                "signature": sign_b64(self.key, auth_message(self.device_id, challenge)),
            },
        )
        body = _json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise Unavailable("the server's token answer has no 'access_token'")
        lifetime = body.get("expires_in")
        valid = isinstance(lifetime, int | float) and not isinstance(lifetime, bool)
        expires_in = float(lifetime) if valid and lifetime > 0 else DEFAULT_TOKEN_LIFETIME
        self._token = token
        self._renew_at = self._monotonic() + max(expires_in - RENEW_EARLY, expires_in / 2)

    async def _token_for_request(self, stale: str | None = None) -> str:
        async with self._auth_lock:
            # Another request may have renewed the token while this one waited for the lock.
            fresh = self._token is not None and self._token != stale and self.has_token
            if not fresh:
                await self._authenticate()
            assert self._token is not None
            return self._token

    async def _call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """An authenticated request, renewing the token once when the server asks for it."""
        token = self._token if self.has_token else await self._token_for_request()
        assert token is not None
        try:
            return await self._send(
                method,
                path,
                headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                **kwargs,
            )
        except AuthenticationFailed as exc:
            if exc.code not in RETRY_ON:
                raise
        token = await self._token_for_request(stale=token)
        return await self._send(
            method, path, headers={**(headers or {}), "Authorization": f"Bearer {token}"}, **kwargs
        )

    async def _send(
        self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        url = f"{self.server}{PREFIX}{path}"
        try:
            response = await self._http.request(
                method,
                url,
                timeout=httpx.Timeout(read_timeout or self.timeout, connect=10.0),
                **kwargs,
            )
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"cannot reach {self.server}: {reason}") from exc
        if response.is_success:
            return response
        self._raise_for(response)

    def _raise_for(self, response: httpx.Response) -> NoReturn:
        problem = _problem(response)
        if response.status_code == 429:
            header = response.headers.get("Retry-After") or str(problem.get("retry_after") or "")
            raise RateLimited(retry_after(header), str(problem.get("detail") or ""))
        if response.status_code >= 500:
            detail = problem.get("detail") or problem.get("title") or response.reason_phrase
            raise Unavailable(
                f"server error {response.status_code}: {detail}", status=response.status_code
            )
        raise refusal(response.status_code, problem)


@dataclass(frozen=True)
class Download:
    """What a download brought: bytes received and the server's integrity headers."""

    received: int  # bytes handed to `write` by this call
    resumed: bool  # the server honoured the Range (206), or there was nothing left (416)
    sha256: str | None
    signature: str | None
    key_id: str | None
    total: int | None  # the artifact's full size, when the server said


def _download(response: httpx.Response, received: int, *, resumed: bool) -> Download:
    h = response.headers
    total: int | None = None
    content_range = h.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        total = int(content_range.rsplit("/", 1)[1])
    elif response.status_code == 200 and (h.get("Content-Length") or "").isdigit():
        total = int(h["Content-Length"])
    return Download(
        received=received,
        resumed=resumed,
        sha256=(h.get("X-Artifact-Sha256") or "").lower() or None,
        signature=h.get("X-Artifact-Signature"),
        key_id=h.get("X-Artifact-Key-Id"),
        total=total,
    )


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _segment(text: str) -> str:
    return quote(text, safe="")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Unavailable(
            f"the answer to {response.request.url.path} is not JSON "
            f"({response.headers.get('Content-Type', 'no content type')})"
        ) from None
