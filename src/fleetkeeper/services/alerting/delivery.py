"""Delivery: the loop that takes stored notifications to their channels, with retries.

The alerting engine writes each notification as a row of `alert_notifications` (state
`pending`, due at once); the `Deliverer` does the rest, one `tick` at a time:

1. **Claim** a batch of due rows (state `pending` or `failed`, `next_attempt_at <= now`,
   oldest first) in one short transaction, and push their `next_attempt_at` forward by a
   lease. On PostgreSQL the rows are locked `FOR UPDATE SKIP LOCKED`, so replicas claim
   different rows without a coordinator; on SQLite the single writer does the same job. No
   transaction stays open while a request is on the wire.
2. **Send** the claimed rows concurrently (at most `concurrency` at once): webhook and chat
   over HTTP (`httpx`), e-mail over SMTP in a worker thread (`smtplib`). Rendering is
   `channels`' pure functions.
3. **Record** each outcome, guarded by the lease (a row whose lease ran out and was claimed
   again elsewhere is left to its new owner): `delivered`; or `failed`, due again after an
   exponential backoff (`backoff * 2**(attempts-1)`, at most `max_backoff`, less up to
   `jitter` of it so retries spread out); or `dead` — the dead-letter list — once
   `max_attempts` attempts failed, or at once when retrying cannot help: a 4xx answer other
   than 408 and 429 (as GitHub and Stripe treat them), an SMTP 5xx, a payload that does not
   render, a channel disabled or deleted. A 429 or 503 with `Retry-After` is retried when
   the receiver asked.

A server killed between send and record sends again when the lease runs out: delivery is at
least once, and receivers drop repeats by the notification id. Dead rows stay until an
operator `replay`s them (back to `pending`, attempts reset, audited).
"""

from __future__ import annotations

import asyncio
import logging
import random
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.clock import Clock
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.alerting import channels
from fleetkeeper.services.context import Change
from fleetkeeper.store.db import Database, rowcount
from fleetkeeper.store.models import AlertChannel, AlertNotification

__all__ = ["Deliverer", "DeliveryReport", "TestResult", "replay"]

log = logging.getLogger("fleetkeeper.alerting.delivery")

PENDING, DELIVERED, FAILED, DEAD = "pending", "delivered", "failed", "dead"
DUE_STATES = (PENDING, FAILED)
_RETRYABLE_4XX = frozenset({408, 429})
_MAX_RETRY_AFTER = 86_400.0
_ERROR_BODY = 500  # characters of a refusal's body kept in last_error


@dataclass
class DeliveryReport:
    """What one tick did."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0  # will be retried
    dead: int = 0  # gave up: in the dead-letter list
    more: bool = False  # the batch was full: tick again without waiting


@dataclass(frozen=True)
class TestResult:
    """The answer to a test send: delivered or not, and what the receiver said."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    notification_id: str
    delivered: bool
    state: str
    status: int | None
    error: str | None


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    status: int | None = None
    error: str | None = None
    retry: bool = True  # worth trying again
    retry_after: float | None = None  # seconds, as the receiver asked


@dataclass(frozen=True)
class _Job:
    """A claimed row and its channel, detached from the session that claimed it."""

    id: str
    tenant_id: str
    payload: Any
    attempts: int
    lease: datetime
    kind: str
    url: str
    secret: str | None
    settings: Mapping[str, Any]


class Deliverer:
    """Delivers stored notifications: `tick` from a loop (every replica may run one),
    `send_test` for the API. `aclose` closes the HTTP client it made."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        http: httpx.AsyncClient | None = None,
        max_attempts: int = 8,
        backoff: float = 30.0,
        max_backoff: float = 3600.0,
        concurrency: int = 16,
        timeout: float = 10.0,
        batch: int = 100,
        jitter: float = 0.1,
        rng: random.Random | None = None,
        hostname: str | None = None,
    ) -> None:
        if max_attempts < 1 or concurrency < 1 or batch < 1:
            raise ValueError("max_attempts, concurrency and batch must be at least 1")
        if not 0 <= jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        self.db = db
        self.clock = clock
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.batch = batch
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.hostname = hostname or socket.gethostname() or "localhost"
        # Long enough for the slowest send of a batch; a row claimed by a process that died
        # is due again after it.
        self.lease = timedelta(seconds=max(60.0, 4 * timeout))
        self._given_http = http
        self._own_http: httpx.AsyncClient | None = None  # made on first use, closed by aclose
        self._gate = asyncio.Semaphore(concurrency)

    async def aclose(self) -> None:
        """Close the HTTP client the deliverer made (not one it was given)."""
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._given_http is not None:
            return self._given_http
        if self._own_http is None:
            # Redirects are not followed: a webhook that moved is a configuration to fix.
            self._own_http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self._own_http

    async def __aenter__(self) -> Deliverer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the loop ----------------------------------------------------------------------------

    async def tick(self) -> DeliveryReport:
        """Claim the due notifications, send them, record what happened."""
        report = DeliveryReport()
        jobs = await self._claim(self.clock.now(), report)
        if not jobs:
            return report
        outcomes = await asyncio.gather(*(self._attempt(job) for job in jobs))
        await self._record(list(zip(jobs, outcomes, strict=True)), report)
        return report

    async def send_test(self, channel: AlertChannel, *, by: str) -> TestResult:
        """Send a kind `test` notification to `channel` now (enabled or not), once: a
        failure is not retried (the row goes `dead`, with the reason)."""
        now = self.clock.now()
        notification_id = uuid7(now)
        about = {"id": channel.id, "name": channel.name, "kind": channel.kind}
        payload = channels.payload_for_test(
            notification_id, tenant=channel.tenant_id, channel=about, by=by, now=now
        )
        job = _Job(
            id=notification_id,
            tenant_id=channel.tenant_id,
            payload=payload,
            attempts=0,
            lease=now + self.lease,  # held: no tick takes it meanwhile
            kind=channel.kind,
            url=channel.url,
            secret=channel.secret,
            settings=dict(channel.settings or {}),
        )
        async with self.db.write() as session:
            session.add(
                AlertNotification(
                    id=notification_id,
                    tenant_id=channel.tenant_id,
                    channel_id=channel.id,
                    group_key="test",
                    kind="test",
                    title=payload["title"],
                    payload=payload,
                    notified=[],
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=job.lease,
                    created_at=now,
                )
            )
        outcome = await self._attempt(job)
        if not outcome.ok:
            outcome = _Outcome(ok=False, status=outcome.status, error=outcome.error, retry=False)
        report = DeliveryReport()
        await self._record([(job, outcome)], report)
        return TestResult(
            notification_id=notification_id,
            delivered=outcome.ok,
            state=DELIVERED if outcome.ok else DEAD,
            status=outcome.status,
            error=outcome.error,
        )

    # --- claim -------------------------------------------------------------------------------

    async def _claim(self, now: datetime, report: DeliveryReport) -> list[_Job]:
        lease = now + self.lease
        jobs: list[_Job] = []
        async with self.db.write() as session:
            rows = (
                await session.execute(
                    select(AlertNotification, AlertChannel)
                    .outerjoin(AlertChannel, AlertChannel.id == AlertNotification.channel_id)
                    .where(
                        AlertNotification.state.in_(DUE_STATES),
                        AlertNotification.next_attempt_at <= now,
                    )
                    .order_by(AlertNotification.next_attempt_at, AlertNotification.id)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True, of=AlertNotification)
                )
            ).all()
            report.claimed = len(rows)
            report.more = len(rows) == self.batch
            for row, channel in rows:
                unusable = _unusable(row, channel)
                if unusable is not None:
                    row.state, row.last_error, row.next_attempt_at = DEAD, unusable, None
                    report.dead += 1
                    log.warning("notification %s is dead: %s", row.id, unusable)
                    continue
                assert channel is not None
                row.next_attempt_at = lease
                jobs.append(
                    _Job(
                        id=row.id,
                        tenant_id=row.tenant_id,
                        payload=row.payload,
                        attempts=row.attempts,
                        lease=lease,
                        kind=channel.kind,
                        url=channel.url,
                        secret=channel.secret,
                        settings=dict(channel.settings or {}),
                    )
                )
        return jobs

    # --- send --------------------------------------------------------------------------------

    async def _attempt(self, job: _Job) -> _Outcome:
        """One try; never raises (a bug in one row must not stop the others)."""
        async with self._gate:
            try:
                if not isinstance(job.payload, Mapping) or "id" not in job.payload:
                    return _Outcome(
                        ok=False, error="the payload is not a notification", retry=False
                    )
                if job.kind == "email":
                    return await self._send_email(job)
                if job.kind in ("webhook", "chat"):
                    return await self._post(job)
                return _Outcome(ok=False, error=f"unknown channel kind {job.kind!r}", retry=False)
            except Exception as exc:
                log.exception("notification %s: delivery failed unexpectedly", job.id)
                return _Outcome(ok=False, error=f"internal error: {_describe(exc)}")

    async def _post(self, job: _Job) -> _Outcome:
        try:
            request = channels.render_request(
                job.kind,
                job.payload,
                secret=job.secret,
                settings=job.settings,
                now=self.clock.now(),
            )
        except Exception as exc:
            return _Outcome(ok=False, error=f"cannot render: {_describe(exc)}", retry=False)
        try:
            async with self._http.stream(
                "POST", job.url, content=request.body, headers=request.headers, timeout=self.timeout
            ) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return _Outcome(ok=True, status=status)
                text = await _read_some(response)
                retry_after = _retry_after(response.headers.get("Retry-After"), self.clock.now())
        except httpx.TimeoutException:
            return _Outcome(ok=False, error=f"no answer within {self.timeout:g}s")
        except httpx.HTTPError as exc:
            return _Outcome(ok=False, error=_describe(exc))
        error = f"HTTP {status}" + (f": {text}" if text else "")
        if 300 <= status < 400:
            where = response.headers.get("Location", "?")
            return _Outcome(
                ok=False,
                status=status,
                error=f"{error} (redirect to {where} not followed)",
                retry=False,
            )
        retry = status >= 500 or status in _RETRYABLE_4XX
        return _Outcome(ok=False, status=status, error=error, retry=retry, retry_after=retry_after)

    async def _send_email(self, job: _Job) -> _Outcome:
        try:
            message = channels.render_email(job.payload, job.settings, hostname=self.hostname)
        except Exception as exc:
            return _Outcome(ok=False, error=f"cannot render: {_describe(exc)}", retry=False)
        host, port, tls = channels.smtp_address(job.url, job.settings)
        try:
            refused = await asyncio.to_thread(
                _smtp_send,
                host,
                port,
                tls,
                job.settings,
                job.secret,
                message,
                self.timeout,
                self.hostname,
            )
        except Exception as exc:
            return _smtp_failure(exc)
        if refused:
            # Delivered to the others: noted, not retried (a retry would repeat theirs).
            return _Outcome(
                ok=True, status=250, error=f"some recipients refused: {_refusals(refused)}"
            )
        return _Outcome(ok=True, status=250)

    # --- record ------------------------------------------------------------------------------

    async def _record(
        self, results: Sequence[tuple[_Job, _Outcome]], report: DeliveryReport
    ) -> None:
        now = self.clock.now()
        done = DeliveryReport()
        try:
            async with self.db.write() as session:
                for job, outcome in results:
                    values = self._next_state(job, outcome, now)
                    result = await session.execute(
                        update(AlertNotification)
                        .where(
                            AlertNotification.id == job.id,
                            AlertNotification.state.in_(DUE_STATES),
                            AlertNotification.next_attempt_at == job.lease,
                        )
                        .values(**values)
                    )
                    if not rowcount(result):
                        log.info("notification %s was taken over before it was recorded", job.id)
                        continue
                    state = values["state"]
                    if state == DELIVERED:
                        done.sent += 1
                    elif state == FAILED:
                        done.failed += 1
                        log.info(
                            "notification %s: %s; retrying at %s",
                            job.id,
                            outcome.error,
                            values["next_attempt_at"],
                        )
                    else:
                        done.dead += 1
                        log.warning(
                            "notification %s is dead after %d attempts: %s",
                            job.id,
                            values["attempts"],
                            outcome.error,
                        )
        except Exception:
            # The rows come due again when their lease runs out, and are sent again.
            log.exception("could not record %d delivery outcomes", len(results))
            return
        report.sent += done.sent
        report.failed += done.failed
        report.dead += done.dead

    def _next_state(self, job: _Job, outcome: _Outcome, now: datetime) -> dict[str, Any]:
        attempts = job.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status": outcome.status,
            "last_error": _cut(outcome.error),
        }
        if outcome.ok:
            return {**values, "state": DELIVERED, "delivered_at": now, "next_attempt_at": None}
        if not outcome.retry or attempts >= self.max_attempts:
            return {**values, "state": DEAD, "next_attempt_at": None}
        delay = outcome.retry_after
        if delay is None:
            delay = self.retry_delay(attempts)
        return {**values, "state": FAILED, "next_attempt_at": now + timedelta(seconds=delay)}

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones: exponential, capped,
        shortened by up to `jitter` of itself."""
        delay = min(self.max_backoff, self.backoff * 2.0 ** min(attempts - 1, 60))
        return delay * (1 - self.jitter * self.rng.random())


# --- dead letters ----------------------------------------------------------------------------


async def replay(
    session: AsyncSession,
    change: Change,
    *,
    ids: list[str] | None = None,
    channel_id: str | None = None,
) -> int:
    """Send dead notifications again: back to `pending`, attempts reset, due now. Only the
    caller's tenant's are touched (`ids` outside it are ignored); without `ids` and
    `channel_id`, every dead notification the caller sees. Returns how many."""
    principal = change.principal
    principal.require("alerts:write")
    now = change.now()
    stmt = select(AlertNotification.id, AlertNotification.tenant_id).where(
        AlertNotification.state == DEAD,
        AlertNotification.channel_id.is_not(None),  # the channel was deleted: nowhere to go
        principal.tenant_filter(AlertNotification.tenant_id),
    )
    if ids is not None:
        stmt = stmt.where(AlertNotification.id.in_(ids))
    if channel_id is not None:
        stmt = stmt.where(AlertNotification.channel_id == channel_id)
    found = (await session.execute(stmt.order_by(AlertNotification.id))).all()
    if not found:
        return 0
    by_tenant: dict[str, list[str]] = {}
    for notification_id, tenant_id in found:
        by_tenant.setdefault(tenant_id, []).append(notification_id)
    for tenant_id, chosen in sorted(by_tenant.items()):
        await session.execute(
            update(AlertNotification)
            .where(AlertNotification.id.in_(chosen), AlertNotification.state == DEAD)
            .values(
                state=PENDING, attempts=0, next_attempt_at=now, last_error=None, last_status=None
            )
        )
        target = (
            f"notification:{chosen[0]}"
            if len(chosen) == 1
            else f"channel:{channel_id}"
            if channel_id
            else "notifications"
        )
        await audit.append(
            session,
            change,
            action="alert.notification.replay",
            target=target,
            tenant_id=tenant_id,
            after={"notifications": chosen, "count": len(chosen)},
        )
    return len(found)


# --- helpers ---------------------------------------------------------------------------------


def _unusable(row: AlertNotification, channel: AlertChannel | None) -> str | None:
    """Why a row cannot be sent whatever we try, or None."""
    if channel is None:
        return "the channel was deleted"
    if channel.tenant_id != row.tenant_id:
        return f"channel {channel.name!r} belongs to another tenant"
    if not channel.enabled:
        return f"channel {channel.name!r} is disabled"
    return None


def _smtp_send(
    host: str,
    port: int,
    tls: bool,
    settings: Mapping[str, Any],
    secret: str | None,
    message: EmailMessage,
    timeout: float,
    local_hostname: str,
) -> dict[str, tuple[int, bytes]]:
    """Blocking: runs in a worker thread. The recipients refused (the others got it)."""
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if tls:
        smtp = smtplib.SMTP_SSL(
            host, port, local_hostname=local_hostname, timeout=timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(host, port, local_hostname=local_hostname, timeout=timeout)
    with smtp:
        if settings.get("starttls"):
            smtp.starttls(context=context)
        if settings.get("username"):
            smtp.login(str(settings["username"]), secret or "")
        return smtp.send_message(message)


async def _read_some(response: httpx.Response, limit: int = 2048) -> str:
    """The start of a refusal's body (a receiver may answer with megabytes)."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return " ".join(data[:limit].decode(errors="replace").split())[:_ERROR_BODY]


def _retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date (RFC 9110), within a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _smtp_failure(exc: Exception) -> _Outcome:
    """A refusal with a 5xx reply is final; a 4xx one, or a lost connection, is retried."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        worst = max((code for code, _ in exc.recipients.values()), default=None)
        return _Outcome(
            ok=False,
            status=worst,
            error=f"SMTP: every recipient refused: {_refusals(exc.recipients)}",
            retry=worst is None or worst < 500,
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = exc.smtp_error
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        return _Outcome(
            ok=False,
            status=exc.smtp_code,
            error=f"SMTP {exc.smtp_code}: {text}",
            retry=exc.smtp_code < 500,
        )
    return _Outcome(ok=False, error=f"SMTP: {_describe(exc)}")


def _refusals(refused: Mapping[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{address} ({code} {reply.decode(errors='replace')})"
        for address, (code, reply) in sorted(refused.items())
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cut(text: str | None, limit: int = 2000) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"
