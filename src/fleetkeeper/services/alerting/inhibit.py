"""Inhibition: a firing source alert mutes the target alerts it explains.

A rule names source matchers, target matchers and equal labels: while an alert matching the
source fires, every alert matching the target with the same values of the equal labels is
inhibited (a missing label reads as the empty string on both sides, as in Alertmanager). A
gateway offline mutes its devices' offline alerts with `equal: [gateway]`; a site outage
mutes the site's devices with `equal: [site]`.

Alertmanager's guard against mutual muting is kept: an alert never inhibits itself, and when
a target also matches the source matchers, a source that also matches the target matchers
cannot inhibit it (two alerts of the same kind do not silence each other).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fleetkeeper.services.alerting.model import Labels, Matcher, check_label, matches_all

# Sources kept per inhibited alert: enough to say why, bounded when a thousand sources of a
# site would each explain a thousand targets.
SOURCES_SHOWN = 5


@dataclass(frozen=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if not self.source or not self.target:
            raise ValueError(f"inhibit rule {self.name!r}: give source and target matchers")
        for label in self.equal:
            check_label(label)

    @classmethod
    def parse(
        cls, source: Sequence[str], target: Sequence[str], equal: Sequence[str] = (), name: str = ""
    ) -> InhibitRule:
        return cls(
            source=tuple(Matcher.parse(text) for text in source),
            target=tuple(Matcher.parse(text) for text in target),
            equal=tuple(equal),
            name=name,
        )

    def _key(self, labels: Labels) -> tuple[str, ...]:
        return tuple(labels.get(label, "") for label in self.equal)


def inhibitions(
    rules: Iterable[InhibitRule], firing: Mapping[str, Labels]
) -> dict[str, tuple[str, ...]]:
    """For each inhibited alert of `firing` (fingerprint → labels), the sources muting it.

    Linear in the alerts per rule: the sources are indexed by their equal-label values.
    """
    found: dict[str, list[str]] = {}
    for rule in rules:
        sources: dict[tuple[str, ...], list[str]] = {}
        for fp, labels in sorted(firing.items()):
            if matches_all(rule.source, labels):
                sources.setdefault(rule._key(labels), []).append(fp)
        if not sources:
            continue
        for fp, labels in firing.items():
            if not matches_all(rule.target, labels):
                continue
            two_sided = matches_all(rule.source, labels)
            shown = found.setdefault(fp, [])
            for source in sources.get(rule._key(labels), ()):
                if len(shown) >= SOURCES_SHOWN:
                    break
                if source == fp or source in shown:
                    continue
                if two_sided and matches_all(rule.target, firing[source]):
                    continue
                shown.append(source)
            if not shown:
                del found[fp]
    return {fp: tuple(sources) for fp, sources in found.items()}
