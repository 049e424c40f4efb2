"""`fleetkeeper alerts ...`: alerts to list, acknowledge and resolve; the rules that raise them,
the channels they go to, silences, inhibit rules, incidents, the notification log and what
automatic remediation did."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json, Paging, Query, Reason, Tenant, require_change
from fleetkeeper.cli.remote import (
    CommandServer,
    CommandToken,
    Connection,
    connect,
    remote,
    root_connection,
)

app = typer.Typer(
    help="Alerts raised by alert rules: list, acknowledge, resolve; and the rules, channels, "
    "silences, inhibit rules, incidents, notifications and remediations around them.",
    no_args_is_help=True,
)
rules = typer.Typer(
    help="Alert rules: what to watch, when it fires and clears.", no_args_is_help=True
)
channels = typer.Typer(help="Where notifications go: webhook, email, chat.", no_args_is_help=True)
silences = typer.Typer(help="Time-bounded mutes by label matchers.", no_args_is_help=True)
inhibit = typer.Typer(
    help="Inhibit rules: a firing source alert mutes matching targets.", no_args_is_help=True
)
incidents = typer.Typer(
    help="Incidents: many devices firing one rule together. Without a subcommand: the list."
)
notifications = typer.Typer(
    help="The notification log and its dead letters. Without a subcommand: the log."
)
app.add_typer(rules, name="rules")
app.add_typer(channels, name="channels")
app.add_typer(silences, name="silences")
app.add_typer(inhibit, name="inhibit")
app.add_typer(incidents, name="incidents")
app.add_typer(notifications, name="notifications")

ALERTS = "/api/v1/alerts"
RULES = "/api/v1/alert-rules"
CHANNELS = "/api/v1/channels"
SILENCES = "/api/v1/silences"
INHIBIT = "/api/v1/inhibit-rules"
INCIDENTS = "/api/v1/incidents"
NOTIFICATIONS = "/api/v1/notifications"
C = output.Column

ALERT_COLUMNS = (
    C("ID", "id", no_wrap=True),
    C("State", "shown_state"),
    C("Severity", "severity"),
    C("Rule", "rule"),
    C("Device", "labels.serial"),
    C("Site", "labels.site"),
    C("Value", "value"),
    C("Since", "active_since"),
    C("Muted", "muted"),
)
RULE_COLUMNS = (
    C("ID", "id", no_wrap=True),
    C("Name", "name"),
    C("Enabled", "enabled"),
    C("Severity", "severity"),
    C("Condition", "condition"),
    C("Clear", "clear"),
    C("Scope", "scope"),
    C("Channels", "channels"),
)
CHANNEL_COLUMNS = (
    C("ID", "id", no_wrap=True),
    C("Name", "name"),
    C("Kind", "kind"),
    C("URL", "url"),
    C("Secret", "has_secret"),
    C("Enabled", "enabled"),
)
SILENCE_COLUMNS = (
    C("ID", "id", no_wrap=True),
    C("State", "state"),
    C("Matchers", "matchers"),
    C("Starts", "starts_at"),
    C("Ends", "ends_at"),
    C("Author", "author"),
    C("Comment", "comment"),
)
INHIBIT_COLUMNS = (
    C("ID", "id", no_wrap=True),
    C("Name", "name"),
    C("Source", "source"),
    C("Target", "target"),
    C("Equal", "equal"),
)
INCIDENT_COLUMNS = (
    C("ID", "id", no_wrap=True),
    C("State", "state"),
    C("Rule", "rule"),
    C("Labels", "labels"),
    C("Firing", "firing"),
    C("Peak", "peak"),
    C("Opened", "opened_at"),
    C("Closed", "closed_at"),
)
NOTIFICATION_COLUMNS = (
    C("ID", "id", no_wrap=True),
    C("Created", "created_at"),
    C("State", "state"),
    C("Kind", "kind"),
    C("Channel", "channel"),
    C("Title", "title"),
    C("Attempts", "attempts"),
    C("Last error", "last_error"),
)
REMEDIATION_COLUMNS = (
    C("At", "at", no_wrap=True),
    C("Device", "device"),
    C("Action", "action"),
    C("Step", "step"),
    C("State", "state"),
    C("Rule", "rule_id"),
    C("Alert", "alert_id"),
)


AlertId = Annotated[
    str, typer.Argument(metavar="ID", help="The alert's id or fingerprint.", show_default=False)
]
RuleId = Annotated[str, typer.Argument(metavar="ID", help="The rule's id.", show_default=False)]
ChannelId = Annotated[
    str, typer.Argument(metavar="ID", help="The channel's id.", show_default=False)
]
SilenceId = Annotated[
    str, typer.Argument(metavar="ID", help="The silence's id.", show_default=False)
]
InhibitId = Annotated[
    str, typer.Argument(metavar="ID", help="The inhibit rule's id.", show_default=False)
]
IncidentId = Annotated[
    str, typer.Argument(metavar="ID", help="The incident's id.", show_default=False)
]
Note = Annotated[str | None, typer.Option("--note", help="What you know or did about it.")]


def _shown_alert(a: dict[str, Any]) -> dict[str, Any]:
    """An alert for people: acknowledged in its state, the mutes in a word."""
    muted = a.get("muted_by") or {}
    reasons = [
        w for w, k in (("silenced", "silences"), ("inhibited", "inhibited_by")) if muted.get(k)
    ]
    state = a["state"] + (" (acked)" if a.get("acknowledged") else "")
    return {**a, "shown_state": state, "muted": reasons}


ALERT_FIELDS = (
    "id",
    "fingerprint",
    "rule",
    "state",
    "acknowledged_by",
    "acknowledged_at",
    "acknowledged_note",
    "severity",
    "device",
    "labels",
    "annotations",
    "value",
    "active_since",
    "fired_at",
    "resolved_at",
    "resolved_by",
    "flapping",
    "incident",
    "muted_by",
    "operator_action",
)


def render_alert(a: dict[str, Any]) -> RenderableType:
    return output.record(a, f"Alert {a.get('rule', '')}", ALERT_FIELDS)


# --- alerts --------------------------------------------------------------------------------------


@app.command("list")
@remote
def list_alerts(
    api: ApiClient,
    state: Annotated[
        str | None,
        typer.Option(help="pending, firing, resolved or acknowledged.", show_default=False),
    ] = None,
    rule: Annotated[str | None, typer.Option(help="A rule's name or id.")] = None,
    severity: Annotated[str | None, typer.Option(help="info, warning or critical.")] = None,
    device: Annotated[str | None, typer.Option(help="A device id.")] = None,
    incident: Annotated[str | None, typer.Option(help="An incident id.")] = None,
    query: Query = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List alerts, newest first."""
    params = {
        "state": state,
        "rule": rule,
        "severity": severity,
        "device": device,
        "incident": incident,
        "q": query,
        **paging.params(),
    }
    page = api.page(ALERTS, params, all_pages=paging.all_pages)
    if not as_json:
        page = {**page, "items": [_shown_alert(a) for a in page["items"]]}
    output.listing(page, as_json, ALERT_COLUMNS, noun="alerts")


@app.command("show")
@remote
def show_alert(api: ApiClient, alert_id: AlertId, as_json: Json = False) -> None:
    """Show an alert."""
    output.emit(api.get(join(ALERTS, alert_id)), as_json, render_alert)


def _alert_action(action: str, doc: str) -> Callable[..., None]:
    def command(
        api: ApiClient,
        alert_id: AlertId,
        note: Note = None,
        reason: Reason = None,
        as_json: Json = False,
    ) -> None:
        body = compact({"note": note, "reason": reason})
        output.emit(api.post(join(ALERTS, alert_id, action), body), as_json, render_alert)

    command.__doc__ = doc
    command.__name__ = action
    return remote(command)


app.command("ack")(
    _alert_action("ack", "Acknowledge a firing alert: it keeps firing but no longer repeats.")
)
app.command("resolve")(_alert_action("resolve", "Resolve a pending or firing alert by hand."))


# --- rules ---------------------------------------------------------------------------------------


def _pairs(texts: list[str] | None, option: str) -> dict[str, str] | None:
    if texts is None:
        return None
    out = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{text!r} is not NAME=VALUE", param_hint=option)
        out[key.strip()] = value
    return out


def _json_object(text: str, option: str) -> dict[str, Any]:
    """JSON given inline or as @FILE (or a path to a file)."""
    path = Path(text[1:]) if text.startswith("@") else Path(text)
    try:
        raw = path.read_text(encoding="utf-8") if text.startswith("@") or path.is_file() else text
        value = json.loads(raw)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=option) from None
    if not isinstance(value, dict):
        raise typer.BadParameter("a JSON object", param_hint=option)
    return value


@dataclass(frozen=True)
class RuleFields:
    """Options `rules create` and `rules update` share (update sends only those given)."""

    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            metavar="FILE.json",
            help="The rule as JSON (the API's fields); options given override it.",
        ),
    ] = None
    name: Annotated[str | None, typer.Option(help="Unique in the tenant.")] = None
    condition: Annotated[
        str | None, typer.Option(help="e.g. 'battery < 15 for 10m', 'offline for 30m'.")
    ] = None
    scope: Annotated[str | None, typer.Option(help="Fleet query of the devices it watches.")] = None
    clear: Annotated[str | None, typer.Option(help="Clearing condition, e.g. 'battery > 20'.")] = (
        None
    )
    severity: Annotated[str | None, typer.Option(help="info, warning or critical.")] = None
    labels: Annotated[
        list[str] | None, typer.Option("--label", metavar="NAME=VALUE", help="Repeatable.")
    ] = None
    group_by: Annotated[
        list[str] | None,
        typer.Option("--group-by", metavar="LABEL", help="Repeatable, e.g. rule, site."),
    ] = None
    group_wait: Annotated[str | None, typer.Option(help="e.g. 30s.")] = None
    group_interval: Annotated[str | None, typer.Option(help="e.g. 5m.")] = None
    repeat_interval: Annotated[str | None, typer.Option(help="e.g. 4h.")] = None
    channels: Annotated[
        list[str] | None, typer.Option("--channel", metavar="ID", help="Repeatable.")
    ] = None
    reason: Reason = None

    def body(self) -> dict[str, Any]:
        body = _json_object(self.file, "--file") if self.file else {}
        body.update(
            compact(
                {
                    "name": self.name,
                    "condition": self.condition,
                    "scope": self.scope,
                    "clear": self.clear,
                    "severity": self.severity,
                    "labels": _pairs(self.labels, "--label"),
                    "group_by": self.group_by,
                    "group_wait": self.group_wait,
                    "group_interval": self.group_interval,
                    "repeat_interval": self.repeat_interval,
                    "channels": self.channels,
                    "reason": self.reason,
                }
            )
        )
        return body


def render_rule(r: dict[str, Any]) -> RenderableType:
    return output.record(r, f"Alert rule {r.get('name', '')}")


@rules.command("list")
@remote
def list_rules(api: ApiClient, paging: Paging = Paging(), as_json: Json = False) -> None:
    """List alert rules."""
    page = api.page(RULES, paging.params(), all_pages=paging.all_pages)
    output.listing(page, as_json, RULE_COLUMNS, noun="rules")


@rules.command("show")
@remote
def show_rule(api: ApiClient, rule_id: RuleId, as_json: Json = False) -> None:
    """Show an alert rule as stored (durations in seconds)."""
    output.emit(api.get(join(RULES, rule_id)), as_json, render_rule)


@rules.command("create")
@remote
def create_rule(
    api: ApiClient,
    fields: RuleFields = RuleFields(),
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    tenant: Tenant = None,
    as_json: Json = False,
) -> None:
    """Create an alert rule from options, or from --file (options override the file)."""
    body = fields.body()
    for key in ("name", "condition"):
        if not body.get(key):
            raise typer.BadParameter(f"give --{key} (or it in --file)", param_hint=f"--{key}")
    body.update(compact({"enabled": False if disabled else None, "tenant": tenant}))
    output.emit(api.post(RULES, body), as_json, render_rule)


@rules.command("update")
@remote
def update_rule(
    api: ApiClient, rule_id: RuleId, fields: RuleFields = RuleFields(), as_json: Json = False
) -> None:
    """Change the fields given; the others stay as they are."""
    output.emit(
        api.patch(join(RULES, rule_id), require_change(fields.body())), as_json, render_rule
    )


def _enable(enabled: bool, doc: str) -> Callable[..., None]:
    def command(
        api: ApiClient, rule_id: RuleId, reason: Reason = None, as_json: Json = False
    ) -> None:
        body = compact({"enabled": enabled, "reason": reason})
        output.emit(api.patch(join(RULES, rule_id), body), as_json, render_rule)

    command.__doc__ = doc
    command.__name__ = "enable" if enabled else "disable"
    return remote(command)


rules.command("enable")(_enable(True, "Enable an alert rule."))
rules.command("disable")(_enable(False, "Disable an alert rule: its open alerts resolve."))


@rules.command("delete")
@remote
def delete_rule(api: ApiClient, rule_id: RuleId, reason: Reason = None) -> None:
    """Delete an alert rule with its alerts."""
    api.delete(join(RULES, rule_id), {"reason": reason})
    output.note(f"Deleted alert rule {rule_id}.")


# --- channels ------------------------------------------------------------------------------------


def render_channel(c: dict[str, Any]) -> RenderableType:
    return output.record(c, f"Channel {c.get('name', '')}")


@channels.command("list")
@remote
def list_channels(
    api: ApiClient,
    kind: Annotated[str | None, typer.Option(help="webhook, email or chat.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List channels (secrets are never shown)."""
    page = api.page(CHANNELS, {"kind": kind, **paging.params()}, all_pages=paging.all_pages)
    output.listing(page, as_json, CHANNEL_COLUMNS, noun="channels")


@channels.command("show")
@remote
def show_channel(api: ApiClient, channel_id: ChannelId, as_json: Json = False) -> None:
    """Show a channel."""
    output.emit(api.get(join(CHANNELS, channel_id)), as_json, render_channel)


@channels.command("add")
@remote
def add_channel(
    api: ApiClient,
    name: Annotated[str, typer.Option(help="Unique in the tenant.", show_default=False)],
    kind: Annotated[str, typer.Option(help="webhook, email or chat.", show_default=False)],
    url: Annotated[str, typer.Option(help="https://... or smtp://host:port.", show_default=False)],
    secret: Annotated[
        str | None,
        typer.Option(help="Webhook signing key, or the SMTP password.", show_default=False),
    ] = None,
    to: Annotated[
        list[str] | None, typer.Option("--to", metavar="ADDRESS", help="E-mail recipient.")
    ] = None,
    settings: Annotated[
        str | None, typer.Option(help="Settings as JSON or @FILE (docs/alerting.md).")
    ] = None,
    tenant: Tenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Add a channel."""
    extra = _json_object(settings, "--settings") if settings else {}
    if to:
        extra["to"] = to
    body = {"name": name, "kind": kind, "url": url, "secret": secret, "settings": extra}
    body.update(compact({"tenant": tenant, "reason": reason}))
    output.emit(api.post(CHANNELS, compact(body)), as_json, render_channel)


@channels.command("test")
@remote
def test_channel(api: ApiClient, channel_id: ChannelId, as_json: Json = False) -> None:
    """Send a test notification now; exit 1 when it was not delivered."""
    result = api.post(join(CHANNELS, channel_id, "test"), None)
    output.emit(result, as_json, lambda r: output.record(r, "Test notification"))
    if not result["delivered"]:
        raise typer.Exit(1)


@channels.command("delete")
@remote
def delete_channel(api: ApiClient, channel_id: ChannelId, reason: Reason = None) -> None:
    """Delete a channel no rule sends to."""
    api.delete(join(CHANNELS, channel_id), {"reason": reason})
    output.note(f"Deleted channel {channel_id}.")


# --- silences and inhibit rules ------------------------------------------------------------------


def render_silence(s: dict[str, Any]) -> RenderableType:
    return output.record(s, f"Silence ({s.get('state', '')})")


@silences.command("list")
@remote
def list_silences(
    api: ApiClient,
    state: Annotated[str | None, typer.Option(help="active, pending or expired.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List silences, newest first."""
    page = api.page(SILENCES, {"state": state, **paging.params()}, all_pages=paging.all_pages)
    output.listing(page, as_json, SILENCE_COLUMNS, noun="silences")


@silences.command("add")
@remote
def add_silence(
    api: ApiClient,
    matchers: Annotated[
        list[str],
        typer.Option(
            "--matcher",
            metavar="MATCHER",
            help="Repeatable: site=oslo-3, rule!=x, serial=~SN-1.*",
            show_default=False,
        ),
    ],
    comment: Annotated[str, typer.Option(help="Why (required).", show_default=False)],
    duration: Annotated[str | None, typer.Option(help="How long, e.g. 2h.")] = None,
    starts_at: Annotated[str | None, typer.Option(help="ISO 8601 (default: now).")] = None,
    ends_at: Annotated[str | None, typer.Option(help="ISO 8601, instead of --duration.")] = None,
    tenant: Tenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Silence the alerts matching every matcher, for --duration or until --ends-at."""
    if (duration is None) == (ends_at is None):
        raise typer.BadParameter("give --duration or --ends-at", param_hint="--duration")
    body = {
        "matchers": matchers,
        "comment": comment,
        "duration": duration,
        "starts_at": starts_at,
        "ends_at": ends_at,
        "tenant": tenant,
        "reason": reason,
    }
    output.emit(api.post(SILENCES, compact(body)), as_json, render_silence)


@silences.command("expire")
@remote
def expire_silence(
    api: ApiClient, silence_id: SilenceId, reason: Reason = None, as_json: Json = False
) -> None:
    """End a silence now (it stays, expired) and show it."""
    api.delete(join(SILENCES, silence_id), {"reason": reason})
    output.emit(api.get(join(SILENCES, silence_id)), as_json, render_silence)


@inhibit.command("list")
@remote
def list_inhibit(api: ApiClient, paging: Paging = Paging(), as_json: Json = False) -> None:
    """List inhibit rules."""
    page = api.page(INHIBIT, paging.params(), all_pages=paging.all_pages)
    output.listing(page, as_json, INHIBIT_COLUMNS, noun="inhibit rules")


@inhibit.command("add")
@remote
def add_inhibit(
    api: ApiClient,
    name: Annotated[str, typer.Option(help="Unique in the tenant.", show_default=False)],
    source: Annotated[
        list[str], typer.Option(metavar="MATCHER", help="Repeatable.", show_default=False)
    ],
    target: Annotated[
        list[str], typer.Option(metavar="MATCHER", help="Repeatable.", show_default=False)
    ],
    equal: Annotated[
        list[str] | None, typer.Option(metavar="LABEL", help="Labels both share (repeatable).")
    ] = None,
    tenant: Tenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """While an alert matching --source fires, mute those matching --target (same --equal)."""
    body = {"name": name, "source": source, "target": target, "equal": equal or []}
    body.update(compact({"tenant": tenant, "reason": reason}))
    output.emit(api.post(INHIBIT, body), as_json, lambda r: output.record(r, "Inhibit rule"))


@inhibit.command("delete")
@remote
def delete_inhibit(api: ApiClient, inhibit_id: InhibitId, reason: Reason = None) -> None:
    """Delete an inhibit rule."""
    api.delete(join(INHIBIT, inhibit_id), {"reason": reason})
    output.note(f"Deleted inhibit rule {inhibit_id}.")


# --- incidents, notifications, remediations -----------------------------------------------------


# The groups that list without a subcommand take paging as plain options (no @remote there).
LimitOption = Annotated[int, typer.Option("--limit", min=1, max=1000, help="Items per page.")]
CursorOption = Annotated[
    str | None, typer.Option("--cursor", help="Start at this next_cursor of an earlier page.")
]
AllOption = Annotated[bool, typer.Option("--all", help="Follow next_cursor and show every page.")]


@dataclass(frozen=True)
class Listing:
    limit: int
    cursor: str | None
    all_pages: bool
    as_json: bool


def _list_in_callback(
    ctx: typer.Context,
    server: str | None,
    token: str | None,
    path: str,
    params: dict[str, Any],
    columns: tuple[output.Column, ...],
    noun: str,
    listing: Listing,
) -> None:
    if ctx.invoked_subcommand is not None:
        return  # the subcommand does the work
    root = root_connection(ctx)
    with connect(Connection(server or root.server, token or root.token)) as api:
        params = {**params, "limit": listing.limit, "cursor": listing.cursor}
        page = api.page(path, params, all_pages=listing.all_pages)
        output.listing(page, listing.as_json, columns, noun=noun)


IncidentState = Annotated[str | None, typer.Option("--state", help="open or closed.")]
IncidentRule = Annotated[str | None, typer.Option("--rule", help="A rule's name.")]


@incidents.callback(invoke_without_command=True)
def incidents_default(
    ctx: typer.Context,
    state: IncidentState = None,
    rule: IncidentRule = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    all_pages: AllOption = False,
    as_json: Json = False,
    server: CommandServer = None,
    token: CommandToken = None,
) -> None:
    """Incidents, newest first."""
    listing = Listing(limit, cursor, all_pages, as_json)
    params = {"state": state, "rule": rule}
    _list_in_callback(ctx, server, token, INCIDENTS, params, INCIDENT_COLUMNS, "incidents", listing)


@incidents.command("list")
@remote
def list_incidents(
    api: ApiClient,
    state: IncidentState = None,
    rule: IncidentRule = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """Incidents, newest first."""
    params = {"state": state, "rule": rule, **paging.params()}
    page = api.page(INCIDENTS, params, all_pages=paging.all_pages)
    output.listing(page, as_json, INCIDENT_COLUMNS, noun="incidents")


@incidents.command("show")
@remote
def show_incident(api: ApiClient, incident_id: IncidentId, as_json: Json = False) -> None:
    """Show an incident with its alerts."""
    data = api.get(join(INCIDENTS, incident_id))

    def render(i: dict[str, Any]) -> RenderableType:
        members = [_shown_alert(a) for a in i["members"]]
        more = " (more: alerts list --incident)" if i["members_truncated"] else ""
        return output.table(
            members,
            ALERT_COLUMNS,
            caption=f"Incident {i['id']}: {i['state']}, "
            f"{i['firing']} firing, peak {i['peak']}, {i['alerts']} alerts{more}",
        )

    output.emit(data, as_json, render)


@notifications.callback(invoke_without_command=True)
def notifications_default(
    ctx: typer.Context,
    dead: Annotated[bool, typer.Option("--dead", help="Only the dead letters.")] = False,
    state: Annotated[
        str | None, typer.Option("--state", help="pending, delivered, failed or dead.")
    ] = None,
    channel: Annotated[str | None, typer.Option("--channel", help="A channel id.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="e.g. -1h or ISO 8601.")] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    all_pages: AllOption = False,
    as_json: Json = False,
    server: CommandServer = None,
    token: CommandToken = None,
) -> None:
    """The notification log, newest first (--dead: the dead-letter list)."""
    listing = Listing(limit, cursor, all_pages, as_json)
    params = {"state": "dead" if dead else state, "channel": channel, "since": since}
    _list_in_callback(
        ctx, server, token, NOTIFICATIONS, params, NOTIFICATION_COLUMNS, "notifications", listing
    )


@notifications.command("replay")
@remote
def replay(
    api: ApiClient,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", metavar="ID", help="A dead notification (repeatable)."),
    ] = None,
    channel: Annotated[
        str | None, typer.Option(help="Every dead notification of this channel.")
    ] = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Send dead notifications again."""
    if not ids and channel is None:
        raise typer.BadParameter("give --id or --channel", param_hint="--id")
    body = compact({"ids": ids or None, "channel": channel, "reason": reason})
    result = api.post(f"{NOTIFICATIONS}/replay", body)
    output.emit(result, as_json, lambda r: f"Queued {r['replayed']} notifications again.")


@app.command("remediations")
@remote
def remediations(
    api: ApiClient,
    rule: Annotated[str | None, typer.Option(help="A rule id.")] = None,
    device: Annotated[str | None, typer.Option(help="A device id.")] = None,
    alert: Annotated[str | None, typer.Option(help="An alert id.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """What automatic remediation did (and skipped), newest first."""
    params = {"rule": rule, "device": device, "alert": alert, **paging.params()}
    page = api.page("/api/v1/remediations", params, all_pages=paging.all_pages)
    output.listing(page, as_json, REMEDIATION_COLUMNS, noun="remediation actions")
