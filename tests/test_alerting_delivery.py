"""Notification delivery: channels checked and rendered, rows delivered, retried, dead, replayed.

Deliveries go to real receivers on 127.0.0.1 (`alertkit`: an HTTP server and an SMTP server),
on both databases, in FakeClock time: a retry is due when the clock says so, never after a
sleep.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from sqlalchemy import delete, select

from alertkit import SmtpReceiver, WebhookReceiver
from fleetkeeper import __version__
from fleetkeeper.clock import FakeClock
from fleetkeeper.errors import Forbidden, Invalid
from fleetkeeper.ids import uuid7
from fleetkeeper.services.alerting.channels import (
    rate_limit_of,
    render_chat,
    render_email,
    smtp_address,
    validate_channel,
    verify_signature,
)
from fleetkeeper.services.alerting.delivery import Deliverer, DeliveryReport, replay
from fleetkeeper.services.alerting.ratelimit import RateLimit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import AlertChannel, AlertNotification, AuditRecord, Tenant

PLATFORM = Principal(actor="admin", role="admin", tenant_id=None)

# --- building blocks -------------------------------------------------------------------------


def alert(i: int, *, state: str = "firing", **extra: Any) -> dict[str, Any]:
    return {
        "fingerprint": f"fp{i:04d}",
        "rule": "battery_low",
        "device": f"dev-{i}",
        "serial": f"SN-{i:04d}",
        "site": "oslo-3",
        "state": state,
        "severity": "warning",
        "value": 12.0 + i,
        "fired_at": "2026-01-01T00:00:00+00:00",
        "resolved_at": "2026-01-01T00:10:00+00:00" if state == "resolved" else None,
        "labels": {"site": "oslo-3"},
        "annotations": {"summary": "battery below 15 %"},
        **extra,
    }


def group_payload(
    notification_id: str,
    *,
    firing: int = 3,
    new: int = 2,
    resolved: int = 0,
    tenant: str = "default",
) -> dict[str, Any]:
    """A version 1 payload as the engine writes it."""
    return {
        "version": 1,
        "id": notification_id,
        "kind": "group",
        "title": f"[{firing} firing] battery_low{{site=oslo-3}} alerts: {new} new, "
        f"{resolved} resolved",
        "tenant": tenant,
        "status": "firing" if firing else "resolved",
        "severity": "warning",
        "sent_at": "2026-01-01T00:00:00+00:00",
        "group": {
            "key": "battery_low{site=oslo-3}",
            "rule": "battery_low",
            "labels": {"site": "oslo-3"},
        },
        "counts": {"firing": firing, "new": new, "resolved": resolved, "muted": 0},
        "repeat": False,
        "incident": None,
        "alerts": [alert(i) for i in range(min(firing, 5))],
        "resolved": [alert(100 + i, state="resolved") for i in range(min(resolved, 5))],
    }


async def add_tenants(db: Database, clock: FakeClock, *names: str) -> None:
    async with db.write() as session:
        session.add_all(
            Tenant(id=name, name=name.title(), created_at=clock.now()) for name in names
        )


async def add_channel(
    db: Database,
    clock: FakeClock,
    url: str,
    *,
    kind: str = "webhook",
    secret: str | None = None,
    settings: dict[str, Any] | None = None,
    tenant: str = "default",
    enabled: bool = True,
    checked: bool = True,
) -> AlertChannel:
    """A channel as the API would store it (`checked=False` stores settings unvalidated)."""
    if checked:
        settings = validate_channel(kind, url, secret, settings)
    channel = AlertChannel(
        id=uuid7(clock.now()),
        tenant_id=tenant,
        name=f"{kind}-{uuid7(clock.now())[-8:]}",
        kind=kind,
        url=url,
        secret=secret,
        settings=settings or {},
        enabled=enabled,
        created_by="admin",
        created_at=clock.now(),
        updated_at=clock.now(),
    )
    async with db.write() as session:
        session.add(channel)
    return channel


async def add_notification(
    db: Database,
    clock: FakeClock,
    channel: AlertChannel | None,
    *,
    payload: Any = None,
    state: str = "pending",
    attempts: int = 0,
) -> str:
    """A row as the engine writes it: pending, due now."""
    notification_id = uuid7(clock.now())
    tenant = channel.tenant_id if channel else "default"
    if payload is None:
        payload = group_payload(notification_id, tenant=tenant)
    async with db.write() as session:
        session.add(
            AlertNotification(
                id=notification_id,
                tenant_id=tenant,
                channel_id=channel.id if channel else None,
                group_key="battery_low{site=oslo-3}",
                kind="group",
                title=payload["title"] if isinstance(payload, dict) else "?",
                payload=payload,
                notified=[],
                state=state,
                attempts=attempts,
                next_attempt_at=clock.now() if state == "pending" else None,
                created_at=clock.now(),
            )
        )
    return notification_id


async def row(db: Database, notification_id: str) -> AlertNotification:
    async with db.read() as session:
        found = await session.get(AlertNotification, notification_id)
    assert found is not None
    return found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpReceiver]:
    async with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def deliverer(db: Database, clock: FakeClock) -> AsyncIterator[Deliverer]:
    await add_tenants(db, clock, "default", "acme")
    async with Deliverer(db, clock, jitter=0.0, timeout=5.0, hostname="fk.test") as d:
        yield d


# --- webhook ---------------------------------------------------------------------------------


async def test_a_signed_webhook_verifies_and_a_tampered_body_does_not(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url, secret="s3cret")
    notification_id = await add_notification(db, clock, channel)

    assert await deliverer.tick() == DeliveryReport(claimed=1, sent=1)

    [request] = hook.requests
    headers = request.headers
    assert (request.method, request.path) == ("POST", "/hook")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"Fleetkeeper/{__version__}"
    assert headers["x-fleetkeeper-notification"] == notification_id
    timestamp = headers["x-fleetkeeper-timestamp"]
    assert timestamp == str(int(clock.now().timestamp()))
    signature = headers["x-fleetkeeper-signature"]
    assert signature.startswith("sha256=")
    assert request.json == (await row(db, notification_id)).payload
    assert verify_signature("s3cret", timestamp, request.body, signature, clock.now())

    tampered = request.body.replace(b'"firing":3', b'"firing":0')
    assert tampered != request.body
    assert not verify_signature("s3cret", timestamp, tampered, signature, clock.now())
    assert not verify_signature("other", timestamp, request.body, signature, clock.now())
    later = clock.now() + timedelta(seconds=301)
    assert not verify_signature("s3cret", timestamp, request.body, signature, later), "stale"

    stored = await row(db, notification_id)
    assert (stored.state, stored.attempts, stored.last_status) == ("delivered", 1, 200)
    assert stored.delivered_at == clock.now() and stored.next_attempt_at is None


async def test_an_unsigned_webhook_carries_the_channels_own_headers(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    settings = {"headers": {"Authorization": "Bearer t0ken", "X-Team": "ops"}}
    channel = await add_channel(db, clock, hook.url, settings=settings)
    await add_notification(db, clock, channel)

    await deliverer.tick()

    [request] = hook.requests
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["x-team"] == "ops"
    assert "x-fleetkeeper-signature" not in request.headers


def test_signature_checks_refuse_malformed_input() -> None:
    body = b'{"id":"x"}'
    assert not verify_signature("k", "not-a-number", body, "sha256=00", 0)
    assert not verify_signature("k", 0, body, "", 0)
    assert not verify_signature("k", 1000, body, "sha256=00", 1000)
    assert not verify_signature("k", 1000, body, "sha256=00", 1000 - 301), "from the future"


# --- chat ------------------------------------------------------------------------------------


async def test_a_chat_channel_gets_slack_blocks(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url_for("/slack"), kind="chat")
    notification_id = uuid7(clock.now())
    payload = group_payload(notification_id, firing=8, new=8, resolved=2)
    payload["alerts"][0]["serial"] = "<!channel>"
    await add_notification(db, clock, channel, payload=payload)

    await deliverer.tick()

    [request] = hook.requests
    body = request.json
    assert body["text"] == payload["title"]
    blocks = body["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "section", "context"]
    assert blocks[0]["text"] == {"type": "plain_text", "text": payload["title"]}
    summary, firing, resolved = (b["text"] for b in blocks[1:4])
    assert all(text["type"] == "mrkdwn" for text in (summary, firing, resolved))
    assert "*Firing:* 8 (8 new)" in summary["text"]
    lines = firing["text"].splitlines()
    assert lines[0] == "*Firing*" and len(lines) == 1 + 5 + 1
    assert lines[-1] == "_…and 3 more firing_"
    assert "SN-0001 (oslo-3): battery_low = 13" in lines[2]
    assert "*Resolved*" in resolved["text"] and "SN-0100" in resolved["text"]
    assert notification_id in blocks[-1]["elements"][0]["text"]
    # Slack reads <!channel> as "ping everyone": it arrives escaped.
    assert "<!channel>" not in request.body.decode()
    assert "&lt;!channel&gt;" in firing["text"]


def test_chat_text_stays_within_slacks_limits() -> None:
    payload = group_payload("n1", firing=5)
    payload["title"] = "x" * 400
    payload["alerts"] = [alert(i, annotations={"summary": "y" * 1000}) for i in range(5)]

    blocks = render_chat(payload)["blocks"]

    assert len(blocks[0]["text"]["text"]) == 150
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")


def test_a_digest_lists_the_notifications_it_holds() -> None:
    parts = [group_payload(f"p{i}", firing=i + 1, new=1) for i in range(7)]
    digest = {
        **group_payload("d1"),
        "kind": "digest",
        "title": "7 notifications held by the rate limit",
        "group": None,
        "alerts": [],
        "parts": parts,
    }

    chat = render_chat(digest)
    mail = render_email(digest, {"to": ["ops@example.com"]}, hostname="fk.test")

    held = chat["blocks"][2]["text"]["text"].splitlines()
    assert held[0] == "*Held notifications*" and held[-1] == "_…and 2 more_"
    assert held[1] == f"• {parts[0]['title']}"
    text = mail.get_content()
    assert all(part["title"] in text for part in parts)


def test_an_incident_is_told_in_chat_and_email() -> None:
    payload = {
        **group_payload("n1", firing=800, new=800),
        "kind": "incident",
        "incident": {"id": "inc-1", "firing": 800, "peak": 800, "opened_at": "2026-01-01T00:00Z"},
    }

    summary = render_chat(payload)["blocks"][1]["text"]["text"]
    text = render_email(payload, {"to": ["ops@example.com"]}, hostname="fk.test").get_content()

    assert "*Incident* 800 devices firing (peak 800)" in summary
    assert "Incident inc-1: 800 devices firing (peak 800) since 2026-01-01T00:00Z" in text
    assert "... and 795 more" in text


# --- e-mail ----------------------------------------------------------------------------------


async def test_an_email_is_delivered_with_the_title_as_subject(
    db: Database, clock: FakeClock, deliverer: Deliverer, smtp: SmtpReceiver
) -> None:
    settings = {"to": ["ops@example.com", "oncall@example.com"], "username": "fleet"}
    channel = await add_channel(db, clock, smtp.url, kind="email", secret="pw", settings=settings)
    notification_id = await add_notification(db, clock, channel)

    assert await deliverer.tick() == DeliveryReport(claimed=1, sent=1)

    [mail] = smtp.messages
    assert mail.sender == "fleetkeeper@fk.test"
    assert mail.recipients == ["ops@example.com", "oncall@example.com"]
    assert mail.login == ("fleet", "pw")
    message = mail.message
    assert message["Subject"] == "[3 firing] battery_low{site=oslo-3} alerts: 2 new, 0 resolved"
    assert message["To"] == "ops@example.com, oncall@example.com"
    assert message["X-Fleetkeeper-Notification"] == notification_id
    text = message.get_content()
    assert "Firing: 3 (2 new)" in text
    assert "SN-0000 (oslo-3): battery_low = 12" in text
    stored = await row(db, notification_id)
    assert (stored.state, stored.last_status) == ("delivered", 250)


async def test_smtp_refusals_are_retried_when_temporary_and_dead_when_final(
    db: Database, clock: FakeClock, deliverer: Deliverer, smtp: SmtpReceiver
) -> None:
    async with SmtpReceiver() as busy:
        busy.fail(1, 451)  # the next MAIL FROM: "try again later"
        smtp.refuse("gone@example.com", 550)
        temporary = await add_channel(
            db, clock, busy.url, kind="email", settings={"to": ["ops@example.com"]}
        )
        final = await add_channel(
            db, clock, smtp.url, kind="email", settings={"to": ["gone@example.com"]}
        )
        retried = await add_notification(db, clock, temporary)
        dead = await add_notification(db, clock, final)

        report = await deliverer.tick()

        assert (report.failed, report.dead) == (1, 1)
        waiting = await row(db, retried)
        assert (waiting.state, waiting.last_status) == ("failed", 451)
        refused = await row(db, dead)
        assert (refused.state, refused.last_status) == ("dead", 550)
        assert refused.last_error is not None and "gone@example.com" in refused.last_error
        clock.advance(30)
        assert (await deliverer.tick()).sent == 1
        assert [m.recipients for m in busy.messages] == [["ops@example.com"]]
        assert smtp.messages == []


# --- retries ---------------------------------------------------------------------------------


async def test_a_failing_receiver_is_retried_with_exponential_backoff_then_succeeds(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url, secret="k")
    notification_id = await add_notification(db, clock, channel)
    hook.fail(3, 500)

    for delay in (30, 60, 120):
        assert await deliverer.tick() == DeliveryReport(claimed=1, failed=1)
        stored = await row(db, notification_id)
        assert stored.state == "failed"
        assert stored.last_status == 500 and stored.last_error == "HTTP 500: receiver says no"
        assert stored.next_attempt_at == clock.now() + timedelta(seconds=delay)
        clock.advance(delay - 1)
        assert await deliverer.tick() == DeliveryReport(), "not due yet"
        clock.advance(1)

    assert await deliverer.tick() == DeliveryReport(claimed=1, sent=1)
    stored = await row(db, notification_id)
    assert (stored.state, stored.attempts, stored.last_error) == ("delivered", 4, None)
    # Each attempt is signed afresh, so a late retry still passes a receiver's staleness check.
    stamps = [r.headers["x-fleetkeeper-timestamp"] for r in hook.requests]
    assert len(set(stamps)) == 4
    assert {r.headers["x-fleetkeeper-notification"] for r in hook.requests} == {notification_id}
    last = hook.requests[-1]
    assert verify_signature(
        "k", stamps[-1], last.body, last.headers["x-fleetkeeper-signature"], clock.now()
    )


async def test_backoff_is_capped_and_jittered_downwards(db: Database, clock: FakeClock) -> None:
    exact = Deliverer(db, clock, jitter=0.0, backoff=30, max_backoff=3600)
    assert [exact.retry_delay(n) for n in range(1, 10)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    jittered = Deliverer(db, clock, jitter=0.2, rng=random.Random(7))
    delays = [jittered.retry_delay(n) for n in range(1, 10)]
    bounds = [exact.retry_delay(n) for n in range(1, 10)]
    assert all(0.8 * e <= d <= e for d, e in zip(delays, bounds, strict=True))
    assert len(set(delays)) == len(delays)
    await exact.aclose()
    await jittered.aclose()


async def test_a_notification_is_dead_after_max_attempts(
    db: Database, clock: FakeClock, hook: WebhookReceiver
) -> None:
    await add_tenants(db, clock, "default")
    channel = await add_channel(db, clock, hook.url)
    notification_id = await add_notification(db, clock, channel)
    hook.answer(503, body=b"down for maintenance")

    async with Deliverer(db, clock, max_attempts=3, jitter=0.0) as deliverer:
        assert (await deliverer.tick()).failed == 1
        clock.advance(30)
        assert (await deliverer.tick()).failed == 1
        clock.advance(60)
        assert await deliverer.tick() == DeliveryReport(claimed=1, dead=1)
        clock.advance(86_400)
        assert await deliverer.tick() == DeliveryReport()

    stored = await row(db, notification_id)
    assert (stored.state, stored.attempts, stored.last_status) == ("dead", 3, 503)
    assert stored.last_error == "HTTP 503: down for maintenance"
    assert stored.next_attempt_at is None
    assert len(hook.requests) == 3


async def test_client_errors_are_dead_at_once_but_408_429_and_5xx_are_retried(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    statuses = {400: "dead", 401: "dead", 404: "dead", 410: "dead", 422: "dead", 301: "dead"}
    statuses |= {408: "failed", 429: "failed", 500: "failed", 502: "failed"}
    rows = {}
    for status in statuses:
        hook.answer(status, path=f"/s{status}", body=b"nope", headers={"Location": "/elsewhere"})
        channel = await add_channel(db, clock, hook.url_for(f"/s{status}"))
        rows[status] = await add_notification(db, clock, channel)

    report = await deliverer.tick()

    assert (report.sent, report.failed, report.dead) == (0, 4, 6)
    for status, state in statuses.items():
        stored = await row(db, rows[status])
        assert (status, stored.state, stored.last_status) == (status, state, status)
        assert stored.last_error is not None and stored.last_error.startswith(
            f"HTTP {status}: nope"
        )
    assert "redirect to /elsewhere not followed" in ((await row(db, rows[301])).last_error or "")


async def test_429_honours_retry_after_in_seconds_and_as_a_date(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url)
    notification_id = await add_notification(db, clock, channel)
    hook.fail(1, 429, headers={"Retry-After": "120"})
    later = clock.now() + timedelta(seconds=120 + 600)
    hook.fail(1, 429, headers={"Retry-After": format_datetime(later, usegmt=True)})

    await deliverer.tick()
    assert (await row(db, notification_id)).next_attempt_at == clock.now() + timedelta(seconds=120)
    clock.advance(120)
    await deliverer.tick()
    assert (await row(db, notification_id)).next_attempt_at == later
    clock.set(later)
    assert (await deliverer.tick()).sent == 1


# --- dead letters ----------------------------------------------------------------------------


async def test_dead_letters_are_replayed_and_audited(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url)
    notification_id = await add_notification(db, clock, channel)
    hook.fail(1, 404)
    assert (await deliverer.tick()).dead == 1
    clock.advance(3600)

    async with db.write() as session:
        replayed = await replay(session, Change(PLATFORM, clock=clock), ids=[notification_id])

    assert replayed == 1
    stored = await row(db, notification_id)
    assert (stored.state, stored.attempts, stored.next_attempt_at) == ("pending", 0, clock.now())
    assert stored.last_error is None
    async with db.read() as session:
        record = (
            await session.scalars(
                select(AuditRecord).where(AuditRecord.action == "alert.notification.replay")
            )
        ).one()
    assert (record.target, record.tenant_id, record.actor) == (
        f"notification:{notification_id}",
        "default",
        "admin",
    )
    assert json.loads(record.after or "null") == {"count": 1, "notifications": [notification_id]}
    assert (await deliverer.tick()).sent == 1


async def test_replay_stays_inside_the_callers_tenant(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    ours = await add_channel(db, clock, hook.url, tenant="default")
    theirs = await add_channel(db, clock, hook.url, tenant="acme")
    our_dead = await add_notification(db, clock, ours, state="dead", attempts=8)
    their_dead = await add_notification(db, clock, theirs, state="dead", attempts=8)
    acme = Principal(actor="acme-ops", role="operator", tenant_id="acme")

    async with db.write() as session:
        change = Change(acme, clock=clock)
        assert await replay(session, change, channel_id=ours.id) == 0
        assert await replay(session, change, ids=[our_dead, their_dead]) == 1
    assert (await row(db, our_dead)).state == "dead"
    assert (await row(db, their_dead)).state == "pending"

    viewer = Principal(actor="look", role="viewer", tenant_id="default")
    async with db.write() as session:
        with pytest.raises(Forbidden):
            await replay(session, Change(viewer, clock=clock))
        assert await replay(session, Change(PLATFORM, clock=clock)) == 1
    assert (await row(db, our_dead)).state == "pending"


# --- robustness ------------------------------------------------------------------------------


async def test_a_bad_row_does_not_stop_the_others(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    good = await add_channel(db, clock, hook.url)
    unreachable = await add_channel(db, clock, f"http://127.0.0.1:{closed_port()}/hook")
    broken = await add_channel(
        db, clock, "smtp://127.0.0.1:25", kind="email", settings={"to": 5}, checked=False
    )
    disabled = await add_channel(db, clock, hook.url, enabled=False)
    doomed = await add_channel(db, clock, hook.url)
    rows = {
        "good": await add_notification(db, clock, good),
        "garbage": await add_notification(db, clock, good, payload=["not", "a", "notification"]),
        "unreachable": await add_notification(db, clock, unreachable),
        "broken": await add_notification(db, clock, broken),
        "disabled": await add_notification(db, clock, disabled),
        "deleted": await add_notification(db, clock, doomed),
    }
    async with db.write() as session:
        await session.execute(delete(AlertChannel).where(AlertChannel.id == doomed.id))

    report = await deliverer.tick()

    assert (report.claimed, report.sent, report.failed, report.dead) == (6, 1, 1, 4)
    assert len(hook.requests) == 1
    states = {name: (await row(db, nid)).state for name, nid in rows.items()}
    assert states == {
        "good": "delivered",
        "garbage": "dead",
        "unreachable": "failed",
        "broken": "dead",
        "disabled": "dead",
        "deleted": "dead",
    }
    errors = {name: (await row(db, nid)).last_error or "" for name, nid in rows.items()}
    assert "ConnectError" in errors["unreachable"]
    assert errors["broken"].startswith("cannot render")
    assert errors["disabled"] == f"channel {disabled.name!r} is disabled"
    assert errors["deleted"] == "the channel was deleted"


async def test_two_deliverers_never_send_a_notification_twice(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url)
    ids = {await add_notification(db, clock, channel) for _ in range(30)}

    async with Deliverer(db, clock, batch=7) as other:
        for _ in range(6):
            await asyncio.gather(deliverer.tick(), other.tick())

    sent = [r.headers["x-fleetkeeper-notification"] for r in hook.requests]
    assert sorted(sent) == sorted(ids)
    assert all([(await row(db, nid)).state == "delivered" for nid in ids])


# --- test sends ------------------------------------------------------------------------------


async def test_a_test_send_is_delivered_at_once_and_logged(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url, secret="k")

    result = await deliverer.send_test(channel, by="admin")

    assert (result.delivered, result.state, result.status, result.error) == (
        True,
        "delivered",
        200,
        None,
    )
    [request] = hook.requests
    body = request.json
    assert (body["kind"], body["requested_by"], body["id"]) == (
        "test",
        "admin",
        result.notification_id,
    )
    assert body["channel"]["id"] == channel.id
    stored = await row(db, result.notification_id)
    assert (stored.kind, stored.group_key, stored.state) == ("test", "test", "delivered")


async def test_a_failed_test_send_says_why_and_is_not_retried(
    db: Database, clock: FakeClock, deliverer: Deliverer, hook: WebhookReceiver
) -> None:
    channel = await add_channel(db, clock, hook.url)
    hook.fail(1, 500)

    result = await deliverer.send_test(channel, by="admin")

    assert (result.delivered, result.state, result.status) == (False, "dead", 500)
    assert result.error == "HTTP 500: receiver says no"
    clock.advance(86_400)
    assert await deliverer.tick() == DeliveryReport()
    assert len(hook.requests) == 1


async def test_a_test_email(
    db: Database, clock: FakeClock, deliverer: Deliverer, smtp: SmtpReceiver
) -> None:
    settings = {"to": ["ops@example.com"], "from": "Fleet <fleet@example.com>"}
    channel = await add_channel(db, clock, smtp.url, kind="email", settings=settings)

    result = await deliverer.send_test(channel, by="alice")

    assert result.delivered
    [mail] = smtp.messages
    assert mail.sender == "fleet@example.com" and mail.login is None
    assert (
        mail.message["Subject"] == f"Test notification from Fleetkeeper to channel {channel.name!r}"
    )
    assert "sent by alice" in mail.message.get_content()


# --- configuration ---------------------------------------------------------------------------

HTTPS = "https://hooks.example.com/x"
SMTP = "smtp://mail.example.com"
TO = {"to": ["ops@example.com"]}


@pytest.mark.parametrize(
    ("kind", "url", "secret", "settings", "field"),
    [
        ("pager", HTTPS, None, {}, "kind"),
        ("webhook", "ftp://hooks.example.com", None, {}, "url"),
        ("webhook", "https://", None, {}, "url"),
        ("webhook", "https://user:pw@hooks.example.com/", None, {}, "url"),
        ("webhook", HTTPS, "s" * 201, {}, "secret"),
        ("webhook", HTTPS, "", {}, "secret"),
        ("webhook", HTTPS, None, [], "settings"),
        ("webhook", HTTPS, None, TO, "settings.to"),
        ("webhook", HTTPS, None, {"headers": ["a"]}, "settings.headers"),
        ("webhook", HTTPS, None, {"headers": {"bad name": "x"}}, "settings.headers"),
        (
            "webhook",
            HTTPS,
            None,
            {"headers": {"X-Fleetkeeper-Signature": "sha256=forged"}},
            "settings.headers.X-Fleetkeeper-Signature",
        ),
        (
            "webhook",
            HTTPS,
            None,
            {"headers": {"Content-Type": "x"}},
            "settings.headers.Content-Type",
        ),
        ("webhook", HTTPS, None, {"headers": {"X-Ok": "a\r\nb"}}, "settings.headers.X-Ok"),
        ("webhook", HTTPS, None, {"rate_limit": {"max": 5}}, "settings.rate_limit"),
        (
            "webhook",
            HTTPS,
            None,
            {"rate_limit": {"max": 0, "period": "1h"}},
            "settings.rate_limit.max",
        ),
        (
            "webhook",
            HTTPS,
            None,
            {"rate_limit": {"max": 5, "period": "soon"}},
            "settings.rate_limit.period",
        ),
        (
            "webhook",
            HTTPS,
            None,
            {"rate_limit": {"max": 5, "period": 0}},
            "settings.rate_limit.period",
        ),
        ("chat", SMTP, None, {}, "url"),
        ("email", HTTPS, None, TO, "url"),
        ("email", "smtp://mail.example.com:99999", None, TO, "url"),
        ("email", "smtp://u:p@mail.example.com", None, TO, "url"),
        ("email", SMTP, None, {}, "settings.to"),
        ("email", SMTP, None, {"to": []}, "settings.to"),
        ("email", SMTP, None, {"to": ["not an address"]}, "settings.to"),
        ("email", SMTP, None, {**TO, "from": "nobody"}, "settings.from"),
        ("email", SMTP, None, {**TO, "username": "fleet"}, "secret"),
        ("email", SMTP, None, {**TO, "starttls": "yes"}, "settings.starttls"),
        ("email", "smtps://mail.example.com", None, {**TO, "starttls": True}, "settings.starttls"),
        ("email", SMTP, None, {**TO, "headers": {}}, "settings.headers"),
    ],
)
def test_validate_channel_names_the_bad_field(
    kind: str, url: str, secret: str | None, settings: Any, field: str
) -> None:
    with pytest.raises(Invalid) as caught:
        validate_channel(kind, url, secret, settings)
    assert caught.value.extra["field"] == field


def test_validate_channel_normalises_settings() -> None:
    given = {
        "to": "ops@example.com",
        "from": "Fleet <fleet@example.com>",
        "username": "fleet",
        "starttls": True,
        "rate_limit": {"max": 10, "period": "1h"},
    }

    settings = validate_channel("email", "smtp://mail.example.com", "pw", given)

    assert settings == {
        "to": ["ops@example.com"],
        "from": "Fleet <fleet@example.com>",
        "username": "fleet",
        "starttls": True,
        "rate_limit": {"max": 10, "period": 3600.0},
    }
    assert validate_channel("email", "smtp://mail.example.com", "pw", settings) == settings
    assert rate_limit_of(settings) == RateLimit(max=10, period=timedelta(hours=1))
    assert smtp_address("smtp://mail.example.com", settings) == ("mail.example.com", 587, False)
    assert smtp_address("smtps://mail.example.com", {}) == ("mail.example.com", 465, True)
    assert validate_channel("chat", HTTPS, None, None) == {}
    assert rate_limit_of({}) is None
