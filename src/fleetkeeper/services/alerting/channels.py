"""Channels: where notifications go, checked once when configured, rendered without I/O.

Three kinds, each a function from a stored notification payload (version 1, see
docs/alerting.md) to what goes on the wire; `delivery` does the sending.

- `webhook`: the payload as compact JSON, POSTed to an http(s) URL, optionally signed.
- `chat`: a Slack-compatible incoming-webhook body (`text` as the fallback shown in
  notifications, plus Block Kit `blocks`: a header, a summary, a few examples, a context line),
  POSTed the same way. Slack's limits are kept: a header's plain text at most 150 characters,
  a section's text at most 3,000, mrkdwn with `&`, `<` and `>` escaped (`<!channel>` would
  otherwise ping everyone).
- `email`: an `EmailMessage` (subject = the title, a plain-text body) for an SMTP server given
  as `smtp://host[:port]` or `smtps://host[:port]`, with `settings.to` and optionally
  `settings.from`, `settings.username` (the password is the channel's secret) and
  `settings.starttls`.

Signatures (webhook and chat, when the channel has a secret), after Stripe and GitHub: every
request carries `X-Fleetkeeper-Timestamp: <unix seconds>` and

    X-Fleetkeeper-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

A receiver recomputes the HMAC over the timestamp header, a dot and the raw body bytes exactly
as received (never re-serialised JSON), compares in constant time, and rejects a timestamp
more than a few minutes from its own clock (`verify_signature` does all three, 300 s by
default), which makes a captured request useless for replay later. Each attempt is signed
afresh, so a retry an hour later still verifies. Deliveries are at least once: a receiver
drops repeats by `X-Fleetkeeper-Notification` (the notification id, the same on every attempt).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any
from urllib.parse import SplitResult, urlsplit

from fleetkeeper import __version__
from fleetkeeper.errors import Invalid
from fleetkeeper.services.alerting.ratelimit import RateLimit
from fleetkeeper.services.rollout.policy import parse_duration

__all__ = [
    "KINDS",
    "HttpRequest",
    "payload_for_test",
    "rate_limit_of",
    "render_chat",
    "render_email",
    "render_request",
    "render_webhook",
    "sign",
    "smtp_address",
    "validate_channel",
    "verify_signature",
]

KINDS = ("webhook", "email", "chat")
SECRET_MAX = 200
URL_MAX = 2000
EXAMPLES = 5  # example alerts shown by chat and e-mail
USER_AGENT = f"Fleetkeeper/{__version__}"
SIGNATURE_HEADER = "X-Fleetkeeper-Signature"
TIMESTAMP_HEADER = "X-Fleetkeeper-Timestamp"
NOTIFICATION_HEADER = "X-Fleetkeeper-Notification"

_SETTINGS: dict[str, frozenset[str]] = {
    "webhook": frozenset({"headers", "rate_limit"}),
    "chat": frozenset({"headers", "rate_limit"}),
    "email": frozenset({"to", "from", "username", "starttls", "rate_limit"}),
}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")
# Ours to set: the framing, and the headers a receiver authenticates us by.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "transfer-encoding", "connection", "host", "user-agent"}
)
_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$|^[^@\s<>,;]+@localhost$")
_MAX_RECIPIENTS = 50
_MAX_PERIOD = 366 * 86400.0


# --- configuration ---------------------------------------------------------------------------


def validate_channel(
    kind: str, url: str, secret: str | None, settings: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Check a channel's definition; its settings normalised (`Invalid` names the bad field).

    Normalised means: e-mail recipients as a list, a rate limit's period in seconds, unknown
    settings refused. Validating the result again gives the same result.
    """
    if kind not in KINDS:
        raise Invalid(f"unknown channel kind {kind!r}; kinds are {', '.join(KINDS)}", field="kind")
    if secret is not None and not (0 < len(secret) <= SECRET_MAX):
        raise Invalid(f"the secret must be 1 to {SECRET_MAX} characters", field="secret")
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise Invalid("settings must be an object", field="settings")
    for key in settings:
        if key not in _SETTINGS[kind]:
            known = ", ".join(sorted(_SETTINGS[kind]))
            raise Invalid(
                f"unknown setting {key!r} for a {kind} channel; settings are {known}",
                field=f"settings.{key}",
            )
    out: dict[str, Any] = {}
    if kind == "email":
        _check_smtp_url(url)
        out.update(_email_settings(settings, url, secret))
    else:
        _check_http_url(url)
        if settings.get("headers") is not None:
            out["headers"] = _headers(settings["headers"])
    if settings.get("rate_limit") is not None:
        out["rate_limit"] = _rate_limit(settings["rate_limit"])
    return out


def rate_limit_of(settings: Mapping[str, Any]) -> RateLimit | None:
    """A validated channel's rate limit, for the dispatcher's `Limiter`."""
    limit = settings.get("rate_limit")
    if not limit:
        return None
    return RateLimit(max=int(limit["max"]), period=timedelta(seconds=float(limit["period"])))


def smtp_address(url: str, settings: Mapping[str, Any]) -> tuple[str, int, bool]:
    """(host, port, implicit TLS) of an e-mail channel's server."""
    parts = urlsplit(url)
    tls = parts.scheme == "smtps"
    default = 465 if tls else 587 if settings.get("starttls") else 25
    return parts.hostname or "", parts.port or default, tls


def _check_http_url(url: str) -> None:
    parts = _split(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise Invalid("the URL must be http:// or https:// with a host", field="url")
    if parts.username is not None or parts.password is not None:
        raise Invalid(
            "no credentials in the URL: send them with settings.headers (Authorization)",
            field="url",
        )


def _check_smtp_url(url: str) -> None:
    parts = _split(url)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise Invalid("an e-mail channel's URL is smtp://host[:port] or smtps://", field="url")
    if parts.username is not None or parts.password is not None:
        raise Invalid(
            "no credentials in the URL: the user goes in settings.username, the password in secret",
            field="url",
        )
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise Invalid("an SMTP URL has a host and a port only", field="url")


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url or len(url) > URL_MAX or url != url.strip():
        raise Invalid(f"the URL must be 1 to {URL_MAX} characters, no spaces", field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise Invalid(f"not a URL: {exc}", field="url") from None
    return parts


def _headers(given: Any) -> dict[str, str]:
    if not isinstance(given, Mapping):
        raise Invalid("headers must be an object of strings", field="settings.headers")
    if len(given) > 20:
        raise Invalid("at most 20 headers", field="settings.headers")
    out = {}
    for name, value in given.items():
        where = f"settings.headers.{name}"
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise Invalid(f"{name!r} is not a header name", field="settings.headers")
        lowered = name.lower()
        if lowered in _RESERVED_HEADERS or lowered.startswith("x-fleetkeeper-"):
            raise Invalid(f"header {name!r} is set by Fleetkeeper itself", field=where)
        if not isinstance(value, str) or len(value) > 2000 or any(c in value for c in "\r\n\0"):
            raise Invalid("a header value is one line of at most 2000 characters", field=where)
        out[name] = value
    return out


def _rate_limit(given: Any) -> dict[str, Any]:
    field = "settings.rate_limit"
    if not isinstance(given, Mapping) or set(given) != {"max", "period"}:
        raise Invalid('a rate limit is {"max": N, "period": "1h"}', field=field)
    most = given["max"]
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        raise Invalid("max must be a whole number of at least 1", field=f"{field}.max")
    try:
        period = parse_duration(given["period"])
    except ValueError as exc:
        raise Invalid(str(exc), field=f"{field}.period") from None
    if isinstance(period, bool) or not isinstance(period, int | float):
        raise Invalid("period is a duration such as 90s, 15m or 1h", field=f"{field}.period")
    if not 0 < period <= _MAX_PERIOD:
        raise Invalid("period must be positive and at most 366d", field=f"{field}.period")
    return {"max": most, "period": float(period)}


def _email_settings(settings: Mapping[str, Any], url: str, secret: str | None) -> dict[str, Any]:
    to = settings.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to:
        raise Invalid(
            "an e-mail channel needs settings.to, a list of addresses", field="settings.to"
        )
    if len(to) > _MAX_RECIPIENTS:
        raise Invalid(f"at most {_MAX_RECIPIENTS} recipients", field="settings.to")
    out: dict[str, Any] = {"to": list(dict.fromkeys(_address(a, "settings.to") for a in to))}
    if settings.get("from") is not None:
        out["from"] = _address(settings["from"], "settings.from", named=True)
    username = settings.get("username")
    if username is not None:
        if not isinstance(username, str) or not 0 < len(username) <= 200:
            raise Invalid("username must be 1 to 200 characters", field="settings.username")
        if secret is None:
            raise Invalid("a username needs the password, given as the secret", field="secret")
        out["username"] = username
    starttls = settings.get("starttls")
    if starttls is not None:
        if not isinstance(starttls, bool):
            raise Invalid("starttls is true or false", field="settings.starttls")
        if starttls and urlsplit(url).scheme == "smtps":
            raise Invalid("smtps:// is TLS already: drop starttls", field="settings.starttls")
        out["starttls"] = starttls
    return out


def _address(value: Any, field: str, *, named: bool = False) -> str:
    """Loosely: something@domain, and for a sender optionally `Name <something@domain>`."""
    if not isinstance(value, str) or len(value) > 320 or any(c in value for c in "\r\n\0"):
        raise Invalid(f"{value!r} is not an e-mail address", field=field)
    text: str = value.strip()
    name, address = parseaddr(text)
    if not _ADDRESS.match(address) or (name and not named) or (not name and address != text):
        raise Invalid(f"{text!r} is not an e-mail address", field=field)
    return text


# --- webhook: the payload, signed ------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """A POST to send: its body and headers (the URL is the channel's)."""

    body: bytes
    headers: dict[str, str]


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The `X-Fleetkeeper-Signature` value: `sha256=` and the hex HMAC of `<timestamp>.<body>`."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: int | str,
    body: bytes | str,
    header: str,
    now: datetime | float,
    tolerance: float = 300,
) -> bool:
    """What a receiver does: True when `header` signs `body` at `timestamp` with `secret`
    and `timestamp` is within `tolerance` seconds of `now` (either way)."""
    try:
        at = int(str(timestamp))
    except ValueError:
        return False
    moment = now.timestamp() if isinstance(now, datetime) else float(now)
    if abs(moment - at) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else body
    return hmac.compare_digest(sign(secret, at, raw).encode(), header.strip().encode())


def render_webhook(payload: Mapping[str, Any]) -> bytes:
    """The payload as sent: compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def render_request(
    kind: str,
    payload: Mapping[str, Any],
    *,
    secret: str | None,
    settings: Mapping[str, Any],
    now: datetime,
) -> HttpRequest:
    """The POST for a webhook or chat channel at `now`: body, our headers, the channel's own."""
    if kind == "webhook":
        body = render_webhook(payload)
    elif kind == "chat":
        body = json.dumps(render_chat(payload), separators=(",", ":")).encode()
    else:
        raise ValueError(f"a {kind} channel is not sent over HTTP")
    timestamp = int(now.timestamp())
    headers = {
        **dict(settings.get("headers") or {}),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        NOTIFICATION_HEADER: str(payload["id"]),
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return HttpRequest(body=body, headers=headers)


# --- chat: Slack-compatible blocks -----------------------------------------------------------


def render_chat(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (the fallback) and `blocks`."""
    title = str(payload.get("title") or "Fleetkeeper notification")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150)}},
        _section(_summary_mrkdwn(payload)),
    ]
    kind = payload.get("kind")
    if kind == "digest":
        parts = [p for p in payload.get("parts") or [] if isinstance(p, Mapping)]
        lines = [f"• {_escape(str(p.get('title', '')))}" for p in parts[:EXAMPLES]]
        if len(parts) > EXAMPLES:
            lines.append(f"_…and {len(parts) - EXAMPLES} more_")
        if lines:
            blocks.append(_section("*Held notifications*\n" + "\n".join(lines)))
    else:
        for heading, key, count in (
            ("Firing", "alerts", "firing"),
            ("Resolved", "resolved", "resolved"),
        ):
            alerts = _alerts(payload, key)[:EXAMPLES]
            if alerts:
                lines = [f"• {_escape(_alert_line(alert))}" for alert in alerts]
                if (more := _count(payload, count) - len(alerts)) > 0:
                    lines.append(f"_…and {more} more {count}_")
                blocks.append(_section(f"*{heading}*\n" + "\n".join(lines)))
    context = [f"Fleetkeeper · tenant `{_escape(str(payload.get('tenant', '')))}`"]
    group = payload.get("group")
    if isinstance(group, Mapping) and group.get("key"):
        context.append(f"group `{_escape(str(group['key']))}`")
    if payload.get("sent_at"):
        context.append(_escape(str(payload["sent_at"])))
    context.append(f"notification `{_escape(str(payload.get('id', '')))}`")
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]}
    )
    return {"text": _escape(title), "blocks": blocks}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, 3000)}}


def _summary_mrkdwn(payload: Mapping[str, Any]) -> str:
    kind = payload.get("kind")
    if kind == "test":
        by = _escape(str(payload.get("requested_by") or "someone"))
        return f"A test notification from Fleetkeeper, sent by *{by}*. Nothing is wrong."
    status = str(payload.get("status", ""))
    icon = ":white_check_mark:" if status == "resolved" else _icon(payload.get("severity"))
    severity = _escape(str(payload.get("severity")))
    text = (
        f"{icon} *{_escape(status or 'firing')}* · severity *{severity}*"
        f"\n*Firing:* {_count(payload, 'firing')} ({_count(payload, 'new')} new) · "
        f"*Resolved:* {_count(payload, 'resolved')} · *Muted:* {_count(payload, 'muted')}"
    )
    if payload.get("repeat"):
        text += "\n_Still firing: a reminder, nothing changed._"
    incident = payload.get("incident")
    if isinstance(incident, Mapping):
        text += (
            f"\n:rotating_light: *Incident* {incident.get('firing')} devices firing "
            f"(peak {incident.get('peak')}) since {_escape(str(incident.get('opened_at')))}"
        )
    return text


def _icon(severity: Any) -> str:
    return {"critical": ":red_circle:", "warning": ":large_orange_circle:"}.get(
        str(severity), ":large_blue_circle:"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- e-mail ----------------------------------------------------------------------------------


def render_email(
    payload: Mapping[str, Any], settings: Mapping[str, Any], *, hostname: str | None = None
) -> EmailMessage:
    """The message for an e-mail channel: From `settings.from` or `fleetkeeper@<hostname>`."""
    host = hostname or socket.gethostname() or "localhost"
    to = settings.get("to")
    if not isinstance(to, list) or not to or not all(isinstance(a, str) for a in to):
        raise ValueError("the channel has no valid settings.to")
    message = EmailMessage()
    title = " ".join(str(payload.get("title") or "Fleetkeeper notification").split())
    message["Subject"] = title
    message["From"] = str(settings.get("from") or f"fleetkeeper@{host}")
    message["To"] = ", ".join(to)
    sent_at = _parse_time(payload.get("sent_at"))
    if sent_at is not None:
        message["Date"] = format_datetime(sent_at)
    # The same id on every attempt, so a mail system can drop a repeat.
    message["Message-ID"] = f"<{payload.get('id')}@{host}>"
    message[NOTIFICATION_HEADER] = str(payload.get("id"))
    message.set_content(_email_text(payload))
    return message


def _email_text(payload: Mapping[str, Any]) -> str:
    lines = [str(payload.get("title", "")), ""]
    if payload.get("kind") == "test":
        lines += [
            f"A test notification from Fleetkeeper, sent by {payload.get('requested_by')}.",
            "Nothing is wrong: this channel works.",
        ]
    else:
        lines += _email_summary(payload)
    lines += ["", "-- ", f"Sent by Fleetkeeper {__version__}, notification {payload.get('id')}."]
    return "\n".join(lines) + "\n"


def _email_summary(payload: Mapping[str, Any]) -> list[str]:
    """Counts, the incident, examples of firing and resolved alerts, a digest's parts."""
    group = payload.get("group")
    key = group.get("key") if isinstance(group, Mapping) else None
    lines = [
        f"Status: {payload.get('status')}    Severity: {payload.get('severity')}    "
        f"Tenant: {payload.get('tenant')}",
    ]
    if key:
        lines.append(f"Group: {key}")
    lines.append(
        f"Firing: {_count(payload, 'firing')} ({_count(payload, 'new')} new)    "
        f"Resolved: {_count(payload, 'resolved')}    "
        f"Muted (silenced or inhibited): {_count(payload, 'muted')}"
    )
    if payload.get("repeat"):
        lines.append("Still firing: a reminder, nothing changed since the last message.")
    incident = payload.get("incident")
    if isinstance(incident, Mapping):
        lines += [
            "",
            f"Incident {incident.get('id')}: {incident.get('firing')} devices firing "
            f"(peak {incident.get('peak')}) since {incident.get('opened_at')}",
        ]
    for heading, key_, count in (
        ("Firing (examples)", "alerts", "firing"),
        ("Resolved", "resolved", "resolved"),
    ):
        alerts = _alerts(payload, key_)[:EXAMPLES]
        if alerts:
            lines += ["", f"{heading}:", *(f"  - {_alert_line(alert)}" for alert in alerts)]
            if (more := _count(payload, count) - len(alerts)) > 0:
                lines.append(f"  ... and {more} more")
    parts = [p for p in payload.get("parts") or [] if isinstance(p, Mapping)]
    if parts:
        lines += ["", "Held by the channel's rate limit:"]
        lines += [f"  - {p.get('title')}" for p in parts]
    return lines


# --- shared ----------------------------------------------------------------------------------


def payload_for_test(
    notification_id: str,
    *,
    tenant: str,
    channel: Mapping[str, Any],
    by: str,
    now: datetime,
) -> dict[str, Any]:
    """A kind `test` notification (version 1). Its status is `resolved` and its severity
    `info`, so a receiver that pages on firing alerts stays quiet."""
    title = f"Test notification from Fleetkeeper to channel {channel.get('name')!r}"
    return {
        "version": 1,
        "id": notification_id,
        "kind": "test",
        "title": title,
        "tenant": tenant,
        "status": "resolved",
        "severity": "info",
        "sent_at": now.isoformat(),
        "group": {"key": "test", "rule": "test", "labels": {}},
        "counts": {"firing": 0, "new": 0, "resolved": 0, "muted": 0},
        "repeat": False,
        "incident": None,
        "alerts": [],
        "resolved": [],
        "channel": dict(channel),
        "requested_by": by,
    }


def _alerts(payload: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return [a for a in payload.get(key) or [] if isinstance(a, Mapping)]


def _count(payload: Mapping[str, Any], key: str) -> int:
    counts = payload.get("counts")
    value = counts.get(key) if isinstance(counts, Mapping) else None
    return value if isinstance(value, int) else 0


def _alert_line(alert: Mapping[str, Any]) -> str:
    """`SN-0042 (oslo-3): battery_low = 12 since 2026-… [warning] — summary`."""
    subject = alert.get("serial") or alert.get("device") or alert.get("fingerprint") or "?"
    line = str(subject)
    if alert.get("site"):
        line += f" ({alert['site']})"
    line += f": {alert.get('rule')}"
    value = alert.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        line += f" = {value:g}"
    when = alert.get("resolved_at") or alert.get("fired_at")
    if when:
        line += f" {'resolved' if alert.get('resolved_at') else 'since'} {when}"
    line += f" [{alert.get('severity')}]"
    annotations = alert.get("annotations")
    if isinstance(annotations, Mapping) and annotations.get("summary"):
        line += f" — {annotations['summary']}"
    return line


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
