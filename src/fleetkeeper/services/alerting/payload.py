"""A notification as JSON: what webhooks receive and what the other channels render.

Version 1 (docs/alerting.md shows an example):

    {"version": 1, "id", "kind": group|incident|digest|test, "title", "tenant",
     "status": firing|resolved, "severity", "sent_at",
     "group": {"key", "rule", "labels"}, "counts": {"firing", "new", "resolved", "muted"},
     "repeat", "incident": null | {"id", "firing", "peak", "opened_at"},
     "alerts": [example, ...] (the new ones first), "resolved": [example, ...],
     "parts": [payload, ...] (digests only)}

An example alert: `fingerprint`, `rule`, `device`, `serial`, `site`, `state`, `severity`,
`value`, `fired_at`, `resolved_at`, `labels`, `annotations`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from fleetkeeper.services.alerting.model import Alert, Severity
from fleetkeeper.services.alerting.notification import (
    AlertSummary,
    Notification,
    NotificationKind,
)

VERSION = 1
_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def example(summary: AlertSummary | Alert) -> dict[str, Any]:
    labels = dict(summary.labels)
    if isinstance(summary, Alert):
        annotations = dict(summary.annotations)
        resolved_at = summary.resolved_at
    else:
        annotations = {"summary": summary.summary} if summary.summary else {}
        resolved_at = None
    return {
        "fingerprint": summary.fingerprint,
        "rule": labels.get("rule"),
        "device": labels.get("device"),
        "serial": labels.get("serial"),
        "site": labels.get("site"),
        "state": str(summary.state),
        "severity": str(summary.severity),
        "value": summary.value,
        "fired_at": _iso(summary.fired_at),
        "resolved_at": _iso(resolved_at),
        "labels": labels,
        "annotations": annotations,
    }


def _severity(summaries: Iterable[AlertSummary]) -> str:
    found = [s.severity for s in summaries]
    return str(max(found, key=_RANK.__getitem__)) if found else str(Severity.WARNING)


def render(
    notification: Notification,
    *,
    id: str,
    tenant: str,
    incident: Callable[[str], dict[str, Any] | None] = lambda _: None,
) -> dict[str, Any]:
    """The payload of one notification; `incident` looks up an incident's summary by the
    dispatcher's id."""
    if notification.kind is NotificationKind.DIGEST:
        parts = [
            render(part, id=f"{id}.{n}", tenant=tenant, incident=incident)
            for n, part in enumerate(notification.parts, 1)
        ]
        return {
            "version": VERSION,
            "id": id,
            "kind": str(notification.kind),
            "title": notification.title,
            "tenant": tenant,
            "status": "firing" if notification.firing else "resolved",
            "severity": max((part["severity"] for part in parts), key=lambda s: _RANK[Severity(s)]),
            "sent_at": _iso(notification.at),
            "group": None,
            "counts": _counts(notification),
            "repeat": False,
            "incident": None,
            "alerts": [],
            "resolved": [],
            "parts": parts,
        }
    group = notification.group
    assert group is not None
    examples = notification.new_examples + tuple(
        e for e in notification.examples if e not in notification.new_examples
    )
    return {
        "version": VERSION,
        "id": id,
        "kind": str(notification.kind),
        "title": notification.title,
        "tenant": tenant,
        "status": "firing" if notification.firing else "resolved",
        "severity": _severity(notification.examples + notification.resolved_examples),
        "sent_at": _iso(notification.at),
        "group": {"key": str(group), "rule": group.rule, "labels": dict(group.labels)},
        "counts": _counts(notification),
        "repeat": notification.repeat,
        "incident": incident(notification.incident) if notification.incident else None,
        "alerts": [example(e) for e in examples],
        "resolved": [example(e) for e in notification.resolved_examples],
        "parts": [],
    }


def _counts(notification: Notification) -> dict[str, int]:
    return {
        "firing": notification.firing,
        "new": notification.new,
        "resolved": notification.resolved,
        "muted": notification.muted,
    }
