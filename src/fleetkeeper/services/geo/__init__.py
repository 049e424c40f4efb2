"""Geo location and context: where devices are, the areas they enter and leave, and the
environment of the site they stand in.

- `geometry`: pure functions on the sphere (distance, circles, polygons, shape validation).
- `positions`: `record_position` (history and geofence presence from a reported location),
  position history, the fleet map.
- `fences`: geofence changes (audited), presence, enter and leave events.
- `events`: monitor events as the API lists them.
- `environment`: a site's latest temperature and humidity, per device and against the site.
"""

from __future__ import annotations

from fleetkeeper.services.geo.positions import record_position

__all__ = ["record_position"]
