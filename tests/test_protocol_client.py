"""DeviceClient against a scripted device API (httpx.MockTransport): tokens, errors, answers."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections import defaultdict, deque
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetkeeper.protocol import (
    AlreadyEnrolled,
    AuthenticationFailed,
    CommandClosed,
    DeviceClient,
    EnrollmentRefused,
    Point,
    RateLimited,
    Refused,
    Restricted,
    Retired,
    Revoked,
    Unavailable,
    generate_key,
)
from fleetkeeper.protocol.client import MAX_OUTPUT_BYTES, retry_after

SERVER = "http://fleet.test"
Scripted = httpx.Response | Exception


def problem(status: int, code: str, detail: str = "", **extra: Any) -> httpx.Response:
    body = {"status": status, "title": "refused", "detail": detail, "code": code, **extra}
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


def verify(public_key: str, message: str, signature: str) -> bool:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    try:
        key.verify(base64.b64decode(signature), message.encode())
    except Exception:
        return False
    return True


class FakeServer:
    """Just enough of /device/v1 to exercise a client: signatures are really checked."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.keys: dict[str, str] = {}  # device id -> public key
        self.serials: dict[str, str] = {}  # serial -> device id
        self.challenges: set[str] = set()
        self.tokens: set[str] = set()
        self.expired: set[str] = set()
        self.token_ttl = 3600
        self.state = "active"
        self.enroll_state = "active"
        self.wipe = False
        self.pending: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.closed: set[str] = set()
        self.points: list[dict[str, Any]] = []
        self.inventory: dict[str, Any] = {}
        self.logs: list[str] = []
        self.scripted: dict[str, deque[Scripted]] = defaultdict(deque)
        self._ids = itertools.count(1)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self, device_id: str | None = None, **kwargs: Any) -> DeviceClient:
        return DeviceClient(SERVER, generate_key(), device_id, transport=self.transport(), **kwargs)

    def script(self, path: str, *answers: Scripted) -> None:
        """Answer the next requests to `path` (e.g. "/checkin") with these, in order."""
        self.scripted[path].extend(answers)

    def paths(self) -> list[str]:
        return [r.url.path.removeprefix("/device/v1") for r in self.requests]

    def register(self, public_key: str, serial: str = "SN-1") -> str:
        device_id = f"dev-{next(self._ids)}"
        self.keys[device_id] = public_key
        self.serials[serial] = device_id
        return device_id

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/device/v1")
        if self.scripted[path]:
            answer = self.scripted[path].popleft()
            if isinstance(answer, Exception):
                raise answer
            return answer
        if path == "/enroll":
            return self.enroll(json.loads(request.content))
        if path == "/auth/challenge":
            challenge = base64.b64encode(f"ch-{next(self._ids)}".encode()).decode()
            self.challenges.add(challenge)
            return httpx.Response(200, json={"challenge": challenge, "expires_at": "x"})
        if path == "/auth/token":
            return self.token(json.loads(request.content))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in self.expired:
            return problem(401, "token_expired")
        if token not in self.tokens:
            return problem(401, "token_invalid")
        return self.authenticated(path, request)

    def enroll(self, body: dict[str, Any]) -> httpx.Response:
        message = f"enroll:{body['serial']}:{body['public_key']}"
        if not verify(body["public_key"], message, body["proof"]):
            return problem(401, "signature_invalid")
        if body["serial"] in self.serials:
            return problem(409, "already_enrolled")
        device_id = self.register(body["public_key"], body["serial"])
        self.inventory = {k: v for k, v in body.items() if k not in ("public_key", "proof")}
        return httpx.Response(
            201,
            json={
                "device_id": device_id,
                "state": self.enroll_state,
                "certificate": "CERT",
                "ca_certificate": "CA",
            },
        )

    def token(self, body: dict[str, Any]) -> httpx.Response:
        if body["device_id"] not in self.keys:
            return problem(401, "unknown_device")
        if body["challenge"] not in self.challenges:
            return problem(401, "challenge_invalid")
        self.challenges.discard(body["challenge"])
        message = f"auth:{body['device_id']}:{body['challenge']}"
        if not verify(self.keys[body["device_id"]], message, body["signature"]):
            return problem(401, "signature_invalid")
        token = f"tok-{next(self._ids)}"
        self.tokens.add(token)
        return httpx.Response(
            200, json={"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}
        )

    def authenticated(self, path: str, request: httpx.Request) -> httpx.Response:
        if path == "/checkin":
            commands, self.pending = self.pending, []
            return httpx.Response(
                200,
                json={
                    "state": self.state,
                    "commands": commands,
                    "next_checkin": 30,
                    "wipe": self.wipe,
                },
            )
        if path.startswith("/commands/"):
            command_id = path.removeprefix("/commands/")
            if command_id in self.closed:
                return problem(409, "command_closed")
            self.results[command_id] = json.loads(request.content)
            return httpx.Response(204)
        if path == "/inventory":
            self.inventory.update(json.loads(request.content))
            return httpx.Response(
                200,
                json={
                    "device_id": "dev-1",
                    "serial": "SN-1",
                    "state": self.state,
                    "firmware_version": None,
                    "attributes": {},
                    "location": None,
                },
            )
        if path == "/telemetry":
            points = json.loads(request.content)["points"]
            self.points += points
            return httpx.Response(200, json={"accepted": len(points), "rejected": []})
        if path == "/logs":
            self.logs.append(request.content.decode())
            return httpx.Response(201, json={"id": "log-1", "bytes": len(request.content)})
        return problem(404, "not_found")


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


async def enrolled(server: FakeServer, **kwargs: Any) -> DeviceClient:
    client = server.client(**kwargs)
    client.device_id = server.register(client.public_key)
    return client


async def test_enroll_sends_a_proof_the_server_verifies_and_keeps_the_device_id(
    server: FakeServer,
) -> None:
    async with server.client() as client:
        done = await client.enroll(
            "SN-9", "thermo-v2", provisioning_token="fkp_x", attributes={"site": "berlin-1"}
        )
    assert done.device_id == client.device_id == server.serials["SN-9"]
    assert (done.state, done.certificate, done.ca_certificate) == ("active", "CERT", "CA")
    assert server.inventory["provisioning_token"] == "fkp_x"
    assert server.inventory["attributes"] == {"site": "berlin-1"}
    assert "firmware_version" not in server.inventory  # options not given are left out


async def test_enrolling_a_known_serial_raises_already_enrolled(server: FakeServer) -> None:
    server.serials["SN-9"] = "dev-0"
    async with server.client() as client:
        with pytest.raises(AlreadyEnrolled) as caught:
            await client.enroll("SN-9", "thermo-v2")
    assert caught.value.code == "already_enrolled" and caught.value.device_id is None


async def test_first_call_authenticates_by_signing_the_challenge(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.checkin()
        await client.checkin()
    assert server.paths() == ["/auth/challenge", "/auth/token", "/checkin", "/checkin"]
    assert server.requests[-1].headers["Authorization"].startswith("Bearer tok-")


@pytest.mark.parametrize("code", ["token_expired", "token_invalid"])
async def test_a_refused_token_is_renewed_and_the_request_repeated_once(
    server: FakeServer, code: str
) -> None:
    async with await enrolled(server) as client:
        await client.checkin()
        server.script("/checkin", problem(401, code))
        result = await client.checkin()
    assert result.state == "active"
    assert server.paths()[3:] == ["/checkin", "/auth/challenge", "/auth/token", "/checkin"]


async def test_a_token_refused_twice_is_not_retried_again(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        server.script("/checkin", problem(401, "token_expired"), problem(401, "token_expired"))
        with pytest.raises(AuthenticationFailed) as caught:
            await client.checkin()
    assert caught.value.code == "token_expired"
    assert server.paths().count("/checkin") == 2


async def test_a_token_is_renewed_a_minute_before_it_expires(server: FakeServer) -> None:
    now = [1000.0]
    async with await enrolled(server, monotonic=lambda: now[0]) as client:
        await client.checkin()
        now[0] += 3600 - 61
        await client.checkin()
        assert server.paths().count("/auth/token") == 1
        now[0] += 2
        await client.checkin()
    assert server.paths().count("/auth/token") == 2


async def test_other_authentication_failures_are_raised_without_retry(
    server: FakeServer,
) -> None:
    async with server.client("dev-unknown") as client:
        with pytest.raises(AuthenticationFailed) as caught:
            await client.checkin()
    assert caught.value.code == "unknown_device" and caught.value.status == 401
    assert "/checkin" not in server.paths()


async def test_a_client_without_device_id_cannot_authenticate(server: FakeServer) -> None:
    async with server.client() as client:
        with pytest.raises(ValueError, match="enroll first"):
            await client.authenticate()


async def test_network_errors_are_unavailable(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        server.script("/auth/challenge", httpx.ConnectError("connection refused"))
        with pytest.raises(Unavailable, match="connection refused"):
            await client.checkin()


async def test_a_timeout_is_unavailable(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.authenticate()
        server.script("/checkin", httpx.ReadTimeout("timed out"))
        with pytest.raises(Unavailable):
            await client.checkin(wait=30)


async def test_server_errors_are_unavailable_with_their_status(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.authenticate()
        server.script("/checkin", httpx.Response(503, text="upstream down"))
        with pytest.raises(Unavailable) as caught:
            await client.checkin()
    assert caught.value.status == 503 and not isinstance(caught.value, Refused)


async def test_an_answer_that_is_not_json_is_unavailable(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.authenticate()
        server.script("/checkin", httpx.Response(200, text="<html>captive portal</html>"))
        with pytest.raises(Unavailable, match="not JSON"):
            await client.checkin()


async def test_rate_limited_carries_retry_after(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.authenticate()
        server.script(
            "/telemetry",
            httpx.Response(429, headers={"Retry-After": "7"}, json={"code": "rate_limited"}),
        )
        with pytest.raises(RateLimited) as caught:
            await client.send_telemetry([Point("cpu", 1.0, 1.0)])
    assert caught.value.retry_after == 7.0
    assert isinstance(caught.value, Unavailable)  # retried like any "not now"


@pytest.mark.parametrize(
    ("header", "expected"), [("12", 12.0), ("0.5", 0.5), (None, 5.0), ("soon", 5.0), ("-3", 0.0)]
)
def test_retry_after_reads_seconds_with_a_default(header: str | None, expected: float) -> None:
    assert retry_after(header) == expected


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (problem(403, "credentials_revoked"), Revoked),
        (problem(403, "device_retired", wipe=True), Retired),
        (problem(403, "device_pending"), Restricted),
        (problem(403, "device_quarantined"), Restricted),
        (problem(403, "provisioning_refused"), EnrollmentRefused),
        (problem(409, "command_closed"), CommandClosed),
        (problem(422, "invalid", "points: too many"), Refused),
        (httpx.Response(404, text="no such route"), Refused),
    ],
)
async def test_refusals_map_to_their_exception(
    server: FakeServer, answer: httpx.Response, kind: type[Refused]
) -> None:
    async with await enrolled(server) as client:
        await client.authenticate()
        server.script("/inventory", answer)
        with pytest.raises(kind) as caught:
            await client.report_inventory(firmware_version="1.0")
    assert caught.value.status == answer.status_code


async def test_retired_says_whether_to_wipe(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.authenticate()
        server.script(
            "/checkin",
            problem(403, "device_retired", wipe=True),
            problem(403, "device_retired", wipe=False),
        )
        with pytest.raises(Retired) as first:
            await client.checkin()
        with pytest.raises(Retired) as second:
            await client.checkin()
    assert first.value.wipe is True and second.value.wipe is False


async def test_checkin_reads_commands_and_asks_for_the_wait(server: FakeServer) -> None:
    server.pending = [
        {
            "id": "c1",
            "name": "ping",
            "args": {},
            "timeout": 30,
            "expires_at": "2026-11-27T10:05:00Z",
            "extra": "ignored",
        }
    ]
    async with await enrolled(server) as client:
        result = await client.checkin(wait=30)
    assert json.loads(server.requests[-1].content) == {"wait": 30}
    assert result.next_checkin == 30 and not result.wipe
    (command,) = result.commands
    assert (command.id, command.name, command.args, command.timeout) == ("c1", "ping", {}, 30)
    assert command.expires_at is not None and command.expires_at.year == 2026


async def test_checkin_caps_the_wait_at_sixty_seconds(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.checkin(wait=600)
    assert json.loads(server.requests[-1].content) == {"wait": 60}


async def test_report_command_sends_state_result_and_output(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.report_command("c1", "succeeded", {"pong": True}, "é" * MAX_OUTPUT_BYTES)
    body = server.results["c1"]
    assert body["state"] == "succeeded" and body["result"] == {"pong": True}
    assert len(body["output"].encode()) <= MAX_OUTPUT_BYTES  # cut, and never inside a character


async def test_report_command_refuses_a_state_that_is_no_result(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        with pytest.raises(ValueError):
            await client.report_command("c1", "expired")


async def test_a_late_result_raises_command_closed(server: FakeServer) -> None:
    server.closed.add("c1")
    async with await enrolled(server) as client:
        with pytest.raises(CommandClosed):
            await client.report_command("c1", "failed", {"error": "timeout"})


async def test_telemetry_sends_points_and_reads_rejections(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.authenticate()
        server.script(
            "/telemetry",
            httpx.Response(
                200,
                json={
                    "accepted": 1,
                    "rejected": [{"index": 1, "reason": "ts is 3 days in the future"}],
                },
            ),
        )
        result = await client.send_telemetry([Point("cpu", 12.5, 1.0), Point("cpu", 1.0, 9e9)])
    assert json.loads(server.requests[-1].content)["points"][0] == {
        "metric": "cpu",
        "value": 12.5,
        "ts": 1.0,
    }
    assert result.accepted == 1 and result.rejected[0].reason.startswith("ts is 3 days")


async def test_telemetry_refuses_more_than_a_thousand_points(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        with pytest.raises(ValueError, match="at most 1000"):
            await client.send_telemetry([Point("cpu", 1.0, 1.0)] * 1001)


async def test_logs_go_as_plain_text(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        upload = await client.upload_logs("line 1\nline 2\n", source="agent")
    request = server.requests[-1]
    assert request.headers["Content-Type"].startswith("text/plain")
    assert request.url.params["source"] == "agent"
    assert server.logs == ["line 1\nline 2\n"] and upload.bytes == 14


async def test_an_injected_http_client_is_used_and_left_open(server: FakeServer) -> None:
    http = httpx.AsyncClient(transport=server.transport())
    client = DeviceClient(SERVER, generate_key(), http=http)
    client.device_id = server.register(client.public_key)
    async with client:
        await client.checkin()
    assert not http.is_closed
    await http.aclose()


async def test_concurrent_requests_share_one_renewal(server: FakeServer) -> None:
    async with await enrolled(server) as client:
        await client.checkin()
        server.expired |= server.tokens
        await asyncio.gather(client.checkin(), client.checkin(), client.checkin())
    assert server.paths().count("/auth/token") == 2
