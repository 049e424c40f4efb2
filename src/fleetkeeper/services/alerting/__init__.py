"""Alerting: rules over device state, alerts with a lifecycle, notifications that do not flood.

Pure, like `services/rollout/` and `services/monitoring/`: plain functions and small state
machines over plain data, no I/O and no clock (the time judged is always given). The services
that read the database, keep alerts and deliver notifications call them.

- `model`: labels, matchers, fingerprints, the alert and its states.
- `rules`: rule definitions and conditions (`battery < 15 for 10m`, `offline for 30m`,
  `health = faulty_sensor`, `rate(temperature) > 5 per 10m`), their clearing conditions
  (hysteresis) and how an observation judges them.
- `lifecycle`: the alert lifecycle per rule (pending, firing, acknowledged, resolved) with
  flap detection, as transitions the callers store and notify.
- `dispatch`: the notification dispatcher, a state machine in simulated time: groups by
  labels (group_wait, group_interval, repeat_interval), with `inhibit` (a firing source mutes
  matching targets), `silences` (time-bounded matchers, maintenance and deployment windows),
  `incidents` (many devices firing one rule together become one incident) and `ratelimit`
  (per channel, folding the excess into a digest); `notification` is what it emits.

Not wired yet: rules and alerts are not stored, no channel delivers, the server does not run
an evaluator (issue 7 builds on this core).
"""
