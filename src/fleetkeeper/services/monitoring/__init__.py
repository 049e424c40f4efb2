"""Monitoring: decisions over telemetry as plain functions over plain data, no I/O, no clock,
and the services that run them on stored data.

- `detectors`: faulty sensors and misbehaving devices (stuck values, readings outside the
  physical range, spikes, deviation from peers, noise, floods, silence), a catalogue of
  detectors that turn a device's series and its peers' into health flags with evidence;
  `profile`: the statistics of one series they all read (median, MAD, step noise, rates).
- `forecast`: predictive maintenance from history (battery health and the date a unit needs
  a new battery, storage-full estimates), fitted trends with an uncertainty band.
- `flags`: what the findings mean for a device (the health flags it carries, silence and
  outages judged per site) and how its stored flags change; plain functions too.

The services around them do the I/O: `watch` (the health watch: reads stored telemetry, runs
the detectors and the forecasts, keeps `device_health` and `monitor_events` current),
`maintenance` (history for the forecasts, the due list) and `health` (the flags read back).
Every rule is tested without a server; docs/monitoring.md is the user's guide.
"""
