"""Alerting: rules over device state, alerts with a lifecycle, notifications that do not flood.

The core is pure, like `services/rollout/` and `services/monitoring/`: plain functions and
small state machines over plain data, no I/O and no clock (the time judged is always given).

- `model`: labels, matchers, fingerprints, the alert and its states.
- `rules`: rule definitions and conditions (`battery < 15 for 10m`, `offline for 30m`,
  `health = faulty_sensor`, `update failed`, `rate(temperature) > 5 per 10m`), their clearing
  conditions (hysteresis), incident and remediation settings, and how an observation judges them.
- `lifecycle`: the alert lifecycle per rule (pending, firing, acknowledged, resolved) with
  flap detection, as transitions the callers store and notify.
- `dispatch`: the notification dispatcher, a state machine in simulated time: groups by
  labels (group_wait, group_interval, repeat_interval), with `inhibit` (a firing source mutes
  matching targets), `silences` (time-bounded matchers, maintenance and deployment windows),
  `incidents` (many devices firing one rule together become one incident) and `ratelimit`
  (per channel, folding the excess into a digest); `notification` is what it emits and
  `payload` its JSON.

Around it, the parts that touch the database and the network:

- `observe`: reads devices as observations, a rule's condition pushed into SQL;
- `engine`: the background engine that judges rules, stores alerts, drives the dispatchers
  and queues notifications (one per deployment, under an advisory lock), with `mutes` (what
  silences and inhibits, read per tenant) and `outbox` (notifications, incidents and mutes
  written per tick);
- `remediation`: remediation ladders, cooldowns and the budget's circuit breaker;
- `channels` and `delivery`: webhook, chat and e-mail rendering and the deliverer (retries,
  dead letters, replay, test sends);
- `config`: what operators configure through the API (rules, channels, silences, inhibit
  rules);
- `operations`: what operators read and act on (alerts to acknowledge and resolve, incidents,
  the notification log and its replay, remediation actions).

docs/alerting.md is the user's guide; docs/architecture.md ("Alerting") says how it is built.
"""
