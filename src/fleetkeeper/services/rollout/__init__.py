"""The rollout engine: decisions as plain functions over plain data, no I/O, no clock.

- `policy`: the rollout policy a deployment carries (validated once, stored as JSON).
- `execution`: one device's execution state machine and the failure taxonomy.
- `windows`: maintenance windows (cron, duration, time zone).
- `planner`: what a deployment does next, given its counts and the time.
- `health`: the statistical comparison of updated and not-yet-updated devices.

`services/deployments.py` and `services/scheduler.py` load state from the database, call these
functions and persist what they decide before anything reaches a device.
"""
