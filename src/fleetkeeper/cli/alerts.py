"""`fleetkeeper alerts ...`: alerts to list, acknowledge and resolve; incidents, the
notification log and what automatic remediation did. The groups that configure alerting (rules,
channels, silences, inhibit rules) are in `alert_config.py`; this module adds them to `app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import RenderableType

from fleetkeeper.cli import alert_config, output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json, Paging, Query, Reason
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
incidents = typer.Typer(
    help="Incidents: many devices firing one rule together. Without a subcommand: the list."
)
notifications = typer.Typer(
    help="The notification log and its dead letters. Without a subcommand: the log."
)
app.add_typer(alert_config.rules, name="rules")
app.add_typer(alert_config.channels, name="channels")
app.add_typer(alert_config.silences, name="silences")
app.add_typer(alert_config.inhibit, name="inhibit")
app.add_typer(incidents, name="incidents")
app.add_typer(notifications, name="notifications")

ALERTS = "/api/v1/alerts"
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
