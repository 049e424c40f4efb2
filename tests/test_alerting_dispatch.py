"""The notification dispatcher in simulated time: grouping, timers, inhibition, silences,
fleet-wide incidents and per-channel rate limits."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from fleetkeeper.services.alerting.dispatch import (
    Dispatcher,
    GroupKey,
    Notification,
    NotificationKind,
    Route,
)
from fleetkeeper.services.alerting.incidents import IncidentPolicy
from fleetkeeper.services.alerting.inhibit import InhibitRule
from fleetkeeper.services.alerting.model import Alert, AlertState, Matcher, Severity
from fleetkeeper.services.alerting.ratelimit import Limiter, RateLimit
from fleetkeeper.services.alerting.silences import (
    Silence,
    SilenceKind,
    maintenance_silence,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WAIT, INTERVAL, REPEAT = timedelta(seconds=30), timedelta(minutes=5), timedelta(hours=4)
ROUTE = Route(group_by=("site",), group_wait=WAIT, group_interval=INTERVAL, repeat_interval=REPEAT)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def offline(device: str, fired: float, *, site: str = "oslo-3", gateway: str = "gw-1") -> Alert:
    return Alert(
        rule="device_offline",
        labels={"device": device, "site": site, "gateway": gateway},
        state=AlertState.FIRING,
        fired_at=at(fired),
    )


def gateway_down(fired: float, *, gateway: str = "gw-1", site: str = "oslo-3") -> Alert:
    return Alert(
        rule="gateway_offline",
        labels={"gateway": gateway, "site": site},
        severity=Severity.CRITICAL,
        state=AlertState.FIRING,
        fired_at=at(fired),
    )


def resolved(alert: Alert, when: float) -> Alert:
    return replace(alert, state=AlertState.RESOLVED, resolved_at=at(when))


def dispatcher(**kwargs: object) -> Dispatcher:
    routes = {"device_offline": ROUTE, "gateway_offline": ROUTE}
    return Dispatcher(routes, default=ROUTE, **kwargs)  # type: ignore[arg-type]


def run(d: Dispatcher, until: datetime) -> list[Notification]:
    """Deliver everything due up to `until`, waking only when the dispatcher asks to."""
    out: list[Notification] = []
    for _ in range(10_000):
        wakeup = d.next_wakeup()
        if wakeup is None or wakeup > until:
            return out
        out += d.due(wakeup)
    raise AssertionError("the dispatcher keeps asking to wake up at the same time")


GATEWAY_MUTES_DEVICES = InhibitRule.parse(
    source=["rule=gateway_offline"], target=["rule=device_offline"], equal=["gateway"]
)


# --- grouping and timers -----------------------------------------------------------------------


def test_a_new_group_waits_group_wait_before_its_first_notification() -> None:
    d = dispatcher()
    d.update([offline("d1", 0)], at(0))
    assert d.next_wakeup() == at(30)
    assert d.due(at(29)) == []
    [sent] = d.due(at(30))
    assert (sent.kind, sent.firing, sent.new, sent.at) == (NotificationKind.GROUP, 1, 1, at(30))
    assert sent.group == GroupKey("device_offline", (("site", "oslo-3"),))


def test_alerts_arriving_during_the_group_wait_share_one_notification() -> None:
    d = dispatcher()
    for second in range(20):
        d.update([offline(f"d{second}", second)], at(second))
    sent = run(d, at(600))
    assert [n.firing for n in sent] == [20]


def test_an_alert_resolved_before_the_group_wait_sends_nothing() -> None:
    d = dispatcher()
    alert = offline("d1", 0)
    d.update([alert], at(0))
    d.update([resolved(alert, 10)], at(10))
    assert run(d, at(10 * 3600)) == []
    assert d.next_wakeup() is None
    assert d.status(at(10)) == {}


def test_a_new_alert_joining_a_notified_group_goes_out_at_the_next_group_interval() -> None:
    d = dispatcher()
    d.update([offline("d1", 0)], at(0))
    assert len(d.due(at(30))) == 1
    d.update([offline("d2", 40)], at(40))
    assert d.due(at(40)) == []  # never at once
    assert d.next_wakeup() == at(30 + 300)
    d.update([offline("d3", 200)], at(200))  # batched with d2
    [update] = d.due(at(330))
    assert (update.firing, update.new, update.repeat) == (3, 2, False)
    assert {e.labels["device"] for e in update.new_examples} == {"d2", "d3"}


def test_a_change_long_after_the_last_notification_waits_for_the_next_tick() -> None:
    d = dispatcher()
    d.update([offline("d1", 0)], at(0))
    d.due(at(30))
    d.update([offline("d2", 1000)], at(1000))  # ticks at 30 + k * 300: next is 1230
    assert d.next_wakeup() == at(1230)


def test_an_unchanged_group_repeats_exactly_at_the_repeat_interval() -> None:
    d = dispatcher()
    d.update([offline("d1", 0)], at(0))
    sent = run(d, at(30 + 3 * 4 * 3600))
    assert [n.at for n in sent] == [at(30 + k * 4 * 3600) for k in range(4)]
    assert [n.repeat for n in sent] == [False, True, True, True]
    assert all(n.new == 0 for n in sent[1:])


def test_a_resolved_alert_is_reported_at_the_next_tick_and_the_group_ends() -> None:
    d = dispatcher()
    alert = offline("d1", 0)
    d.update([alert], at(0))
    d.due(at(30))
    d.update([resolved(alert, 100)], at(100))
    [closing] = run(d, at(3600))
    assert (closing.at, closing.firing, closing.resolved) == (at(330), 0, 1)
    assert closing.resolved_examples[0].labels["device"] == "d1"
    assert d.next_wakeup() is None


def test_an_acknowledged_group_does_not_repeat() -> None:
    d = dispatcher()
    alert = offline("d1", 0)
    d.update([alert], at(0))
    d.due(at(30))
    d.update([replace(alert, acknowledged_at=at(60), acknowledged_by="ops")], at(60))
    assert run(d, at(24 * 3600)) == []


def test_groups_are_keyed_by_the_rule_and_its_group_by_labels() -> None:
    d = dispatcher()
    d.update([offline("a", 0, site="oslo-3"), offline("b", 0, site="bergen-1")], at(0))
    d.update([gateway_down(0)], at(0))
    sent = d.due(at(30))
    assert sorted(str(n.group) for n in sent) == [
        'device_offline{site="bergen-1"}',
        'device_offline{site="oslo-3"}',
        'gateway_offline{site="oslo-3"}',
    ]


def test_a_notification_summarises_with_a_few_examples() -> None:
    d = dispatcher(examples=3)
    d.update([offline(f"d{i}", 0) for i in range(10)], at(0))
    [sent] = d.due(at(30))
    assert (sent.firing, sent.new, len(sent.examples), len(sent.new_examples)) == (10, 10, 3, 3)
    assert sent.title.startswith("[10 firing] device_offline")


def test_pending_alerts_are_not_dispatched() -> None:
    d = dispatcher()
    d.update([replace(offline("d1", 0), state=AlertState.PENDING)], at(0))
    assert d.next_wakeup() is None


def test_a_route_refuses_meaningless_timers() -> None:
    with pytest.raises(ValueError, match="positive"):
        Route(group_interval=timedelta(0))
    with pytest.raises(ValueError, match="negative"):
        Route(group_wait=timedelta(seconds=-1))


# --- inhibition --------------------------------------------------------------------------------


def test_a_gateway_down_and_its_500_devices_dropping_send_exactly_one_notification() -> None:
    d = dispatcher(inhibit_rules=[GATEWAY_MUTES_DEVICES])
    d.update([gateway_down(0)], at(0))
    devices = [offline(f"dev-{i:03}", i / 25) for i in range(500)]  # all within 20 s
    for second in range(20):
        d.update(devices[second * 25 : (second + 1) * 25], at(second))
    sent = run(d, at(4 * 3600 - 1))
    print(f"\ngateway + 500 devices offline: {len(sent)} notification(s)")
    assert [(str(n.group), n.firing) for n in sent] == [('gateway_offline{site="oslo-3"}', 1)]
    statuses = d.status(at(60))
    gateway = gateway_down(0).fingerprint
    inhibited = [s for s in statuses.values() if s.inhibited_by == (gateway,)]
    assert len(inhibited) == 500
    assert all(s.muted and s.state is AlertState.FIRING for s in inhibited)


def test_devices_firing_before_their_gateway_are_still_inhibited_within_the_group_wait() -> None:
    d = dispatcher(inhibit_rules=[GATEWAY_MUTES_DEVICES])
    d.update([offline(f"dev-{i}", 0) for i in range(50)], at(0))
    d.update([gateway_down(15)], at(15))
    assert [str(n.group) for n in run(d, at(3600))] == ['gateway_offline{site="oslo-3"}']


def test_devices_are_notified_at_the_next_tick_once_their_gateway_recovers() -> None:
    d = dispatcher(inhibit_rules=[GATEWAY_MUTES_DEVICES])
    gateway = gateway_down(0)
    d.update([gateway, offline("dev-1", 0)], at(0))
    run(d, at(60))
    d.update([resolved(gateway, 100)], at(100))
    sent = run(d, at(1000))
    # the gateway group reports its recovery at its tick (330), the devices' group notifies
    # its first firing alert at its own tick (330 too: both flushed at 30)
    assert sorted((str(n.group), n.firing, n.resolved, n.at) for n in sent) == [
        ('device_offline{site="oslo-3"}', 1, 0, at(330)),
        ('gateway_offline{site="oslo-3"}', 0, 1, at(330)),
    ]


def test_inhibition_needs_the_equal_labels_to_match() -> None:
    d = dispatcher(inhibit_rules=[GATEWAY_MUTES_DEVICES])
    d.update([gateway_down(0, gateway="gw-1"), offline("dev-9", 0, gateway="gw-2")], at(0))
    assert d.status(at(1))[offline("dev-9", 0, gateway="gw-2").fingerprint].inhibited_by == ()


def test_alerts_of_the_same_kind_do_not_inhibit_each_other() -> None:
    critical_mutes_all = InhibitRule.parse(["severity=critical"], ["site=~.+"], ["site"])
    d = dispatcher(inhibit_rules=[critical_mutes_all])
    d.update([gateway_down(0, gateway="gw-1"), gateway_down(0, gateway="gw-2")], at(0))
    assert all(not s.inhibited_by for s in d.status(at(1)).values())


# --- silences ----------------------------------------------------------------------------------


def silence(start: float, end: float, *matchers: str) -> Silence:
    return Silence(
        id="s1",
        matchers=tuple(Matcher.parse(m) for m in matchers),
        starts_at=at(start),
        ends_at=at(end),
        author="ops",
        comment="known",
    )


def test_a_silenced_alert_is_not_notified_but_shows_its_silence() -> None:
    d = dispatcher(silences=[silence(0, 3600, "site=oslo-3")])
    alert = offline("d1", 0)
    d.update([alert], at(0))
    assert run(d, at(3599)) == []
    assert d.status(at(100))[alert.fingerprint].silenced_by == ("s1",)


def test_an_expired_silence_stops_applying_and_the_alert_goes_out_at_the_next_tick() -> None:
    d = dispatcher(silences=[silence(0, 1000, "device=d1")])
    d.update([offline("d1", 0)], at(0))
    [sent] = run(d, at(2000))
    assert (sent.at, sent.firing, sent.new) == (at(1230), 1, 1)  # ticks at 30 + k * 300
    assert d.status(at(1230))[offline("d1", 0).fingerprint].silenced_by == ()


def test_a_silence_does_not_apply_before_it_starts() -> None:
    d = dispatcher(silences=[silence(600, 3600, "device=d1")])
    d.update([offline("d1", 0)], at(0))
    assert len(d.due(at(30))) == 1


def test_a_silence_set_later_mutes_the_repeats() -> None:
    d = dispatcher()
    d.update([offline("d1", 0)], at(0))
    d.due(at(30))
    d.set_silences([silence(60, 10 * 3600, "rule=device_offline")], at(60))
    assert run(d, at(10 * 3600 - 1)) == []


def test_a_deployment_silences_its_devices_only() -> None:
    window = maintenance_silence(
        "dep-42",
        ["d1", "d2"],
        at(0),
        at(3600),
        source="deployment 42",
        kind=SilenceKind.DEPLOYMENT,
        extra=[Matcher.parse("rule=device_offline")],
    )
    d = dispatcher(silences=[window])
    d.update([offline("d1", 0), offline("d2", 0), offline("d3", 0)], at(0))
    [sent] = d.due(at(30))
    assert (sent.firing, sent.muted) == (1, 2)
    assert window.comment == "deployment: deployment 42"


def test_a_silence_needs_matchers_and_an_end_after_its_start() -> None:
    with pytest.raises(ValueError, match="matcher"):
        silence(0, 10)
    with pytest.raises(ValueError, match="after"):
        silence(10, 10, "device=d1")


# --- fleet-wide incidents ----------------------------------------------------------------------


def incident_dispatcher(policy: IncidentPolicy) -> Dispatcher:
    route = replace(ROUTE, incident=policy)
    return Dispatcher({"device_offline": route}, default=ROUTE)


def test_800_devices_firing_together_are_one_incident_growing_then_closing() -> None:
    d = incident_dispatcher(IncidentPolicy(min_devices=100, window=timedelta(minutes=2)))
    devices = [offline(f"dev-{i:03}", i / 100) for i in range(900)]
    d.update(devices[:800], at(8))
    [opened] = d.due(at(38))
    assert (opened.kind, opened.firing) == (NotificationKind.INCIDENT, 800)
    [incident] = d.incidents
    assert (incident.open, incident.firing, opened.incident) == (True, 800, incident.id)
    assert {s.incident for s in d.status(at(40)).values()} == {incident.id}

    d.update(devices[800:], at(60))
    [grown] = run(d, at(400))
    assert (grown.kind, grown.firing, grown.new, grown.incident) == (
        NotificationKind.INCIDENT,
        900,
        100,
        incident.id,
    )

    d.update([resolved(device, 500) for device in devices], at(500))
    [closed] = run(d, at(2000))
    assert (closed.firing, closed.resolved, closed.incident) == (0, 900, incident.id)
    assert (incident.open, incident.peak, incident.closed_at) == (False, 900, at(500))
    assert d.next_wakeup() is None


def test_a_few_devices_do_not_open_an_incident() -> None:
    d = incident_dispatcher(IncidentPolicy(min_devices=100))
    d.update([offline(f"dev-{i}", 0) for i in range(99)], at(0))
    [sent] = d.due(at(30))
    assert (sent.kind, d.incidents) == (NotificationKind.GROUP, [])


def test_devices_firing_spread_beyond_the_window_do_not_open_an_incident() -> None:
    d = incident_dispatcher(IncidentPolicy(min_devices=3, window=timedelta(minutes=1)))
    for minute in range(5):
        d.update([offline(f"dev-{minute}", minute * 120)], at(minute * 120))
    assert d.incidents == []


def test_an_incident_opens_on_a_share_of_the_scope() -> None:
    d = incident_dispatcher(IncidentPolicy(min_fraction=0.5))
    d.update([offline(f"dev-{i}", 0) for i in range(6)], at(0), scope_sizes={"device_offline": 10})
    assert len(d.incidents) == 1


def test_an_incident_policy_needs_a_threshold() -> None:
    with pytest.raises(ValueError, match="min_devices"):
        IncidentPolicy()
    with pytest.raises(ValueError, match="min_fraction"):
        IncidentPolicy(min_fraction=1.5)


# --- the site outage figure --------------------------------------------------------------------


@pytest.mark.parametrize("incident", [None, IncidentPolicy(min_devices=100)])
def test_a_site_outage_of_1000_devices_notifies_at_most_once_per_repeat_interval(
    incident: IncidentPolicy | None,
) -> None:
    route = replace(ROUTE, incident=incident)
    d = Dispatcher({"device_offline": route})
    devices = [offline(f"dev-{i:04}", i / 50) for i in range(1000)]  # all down within 20 s
    cycles: dict[int, list[Alert]] = {}
    for device in devices:  # the evaluator reports each at its first 10 s cycle after it fired
        cycles.setdefault(math.ceil((device.fired_at or T0).timestamp() / 10) * 10, []).append(
            device
        )
    sent: list[Notification] = []
    for second in range(0, 12 * 3600, 10):  # for 12 hours
        d.update(cycles.get(int(at(second).timestamp()), []), at(second))
        sent += d.due(at(second))
    windows = {int((n.at - at(30)) / REPEAT) for n in sent}
    print(f"\n1000-device site outage over 12 h ({incident and 'incident'}): {len(sent)} sent")
    assert len(sent) == len(windows) == 3
    assert all(n.firing == 1000 for n in sent)
    kind = NotificationKind.INCIDENT if incident else NotificationKind.GROUP
    assert all(n.kind is kind for n in sent)


# --- rate limits -------------------------------------------------------------------------------


def test_notifications_beyond_the_rate_limit_fold_into_one_digest() -> None:
    limit = RateLimit(max=1, period=timedelta(minutes=10))
    d = dispatcher(rate_limits={"default": limit})
    d.update([offline("a", 0, site=site) for site in ("s1", "s2", "s3")], at(0))
    [first] = d.due(at(30))
    assert first.kind is NotificationKind.GROUP
    assert d.next_wakeup() == at(630)
    [digest] = run(d, at(630))
    assert (digest.kind, digest.at, digest.firing, len(digest.parts)) == (
        NotificationKind.DIGEST,
        at(630),
        2,
        2,
    )
    assert {str(part.group) for part in digest.parts} == {
        'device_offline{site="s2"}',
        'device_offline{site="s3"}',
    }


def test_a_channel_without_a_limit_sends_everything() -> None:
    d = dispatcher(rate_limits={"pager": RateLimit(max=1, period=timedelta(hours=1))})
    d.update([offline("a", 0, site=site) for site in ("s1", "s2", "s3")], at(0))
    assert len(d.due(at(30))) == 3


def test_the_limit_is_a_sliding_window_and_a_digest_takes_one_slot() -> None:
    limiter: Limiter[str] = Limiter({}, default=RateLimit(max=2, period=timedelta(minutes=10)))
    assert limiter.offer("ops", "a", at(0)) and limiter.offer("ops", "b", at(60))
    assert not limiter.offer("ops", "c", at(120))
    assert not limiter.offer("ops", "d", at(599))
    assert limiter.next_wakeup() == at(600)
    assert limiter.release(at(599)) == []
    assert limiter.release(at(600)) == [("ops", ["c", "d"])]
    assert not limiter.offer("ops", "e", at(601))  # b and the digest fill the window
    assert not limiter.offer("ops", "f", at(630))  # joins the held digest, never overtakes
    assert limiter.release(at(660)) == [("ops", ["e", "f"])]  # b left the window
    assert limiter.offer("ops", "g", at(1200))  # the first digest left it too


def test_an_incident_share_can_be_of_the_groups_own_scope() -> None:
    d = incident_dispatcher(IncidentPolicy(min_fraction=0.5))
    d.update(
        [offline(f"dev-{i}", 0) for i in range(6)],
        at(0),
        scope_sizes={"device_offline": 10_000, 'device_offline{site="oslo-3"}': 10},
    )
    assert len(d.incidents) == 1
