"""`fleetkeeper alerts rules|channels|silences|inhibit ...`: the alerting operators configure,
the rules that raise alerts, the channels they go to, silences and inhibit rules. `alerts.py`
adds these groups to `fleetkeeper alerts`."""

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
from fleetkeeper.cli.options import Json, Paging, Reason, Tenant, require_change
from fleetkeeper.cli.remote import remote

rules = typer.Typer(
    help="Alert rules: what to watch, when it fires and clears.", no_args_is_help=True
)
channels = typer.Typer(help="Where notifications go: webhook, email, chat.", no_args_is_help=True)
silences = typer.Typer(help="Time-bounded mutes by label matchers.", no_args_is_help=True)
inhibit = typer.Typer(
    help="Inhibit rules: a firing source alert mutes matching targets.", no_args_is_help=True
)

RULES = "/api/v1/alert-rules"
CHANNELS = "/api/v1/channels"
SILENCES = "/api/v1/silences"
INHIBIT = "/api/v1/inhibit-rules"
C = output.Column

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
