"""Monitoring: decisions over telemetry as plain functions over plain data, no I/O, no clock.

- `detectors`: faulty sensors and misbehaving devices (stuck values, readings outside the
  physical range, spikes, deviation from peers, noise, floods, silence), a catalogue of
  detectors that turn a device's series and its peers' into health flags with evidence;
  `profile`: the statistics of one series they all read (median, MAD, step noise, rates).
- `forecast`: predictive maintenance from history (battery health and the date a unit needs
  a new battery, storage-full estimates), fitted trends with an uncertainty band.

The services that read telemetry from the database call these functions and store what they
find (health flags, due dates); every rule is tested without a server.
"""
