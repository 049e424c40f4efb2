"""Geometry for site-sized areas on the WGS 84 sphere: pure functions over plain data.

In Python a point is `Point(lat, lon)` in degrees; in JSON it is GeoJSON's `[lon, lat]`.

Limits, chosen for fences around yards, buildings and towns rather than countries:

- Distances are great-circle distances on a sphere of the Earth's mean radius (haversine):
  within 0.5% of the ellipsoid, which no site-sized decision notices.
- A polygon's edges are straight lines in (lon, lat) degrees, not great circles, and
  containment casts a ray in that plane. An edge of 1 km is off by centimetres, an east-west
  edge of 10 km at 50° latitude by about 2 m (the error grows with the square of the edge):
  follow long boundaries with more vertices.
- Polygons may not cross the antimeridian, come closer than 5° to a pole, reach wider than
  `MAX_EXTENT_M`, or cross themselves; circles are at most `MAX_RADIUS_M` wide.
- A point exactly on a boundary may count as inside or outside; presence uses a margin
  (`boundary_distance_m`) so that jitter along a boundary does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetkeeper.errors import Invalid

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
MAX_RADIUS_M = 100_000.0
MAX_EXTENT_M = 100_000.0  # a polygon's vertices lie within this of its first vertex
MAX_VERTICES = 500
MAX_ABS_POLYGON_LAT = 85.0
MIN_AREA_M2 = 1.0
CIRCLE_SEGMENTS = 64  # vertices of the polygon a circle is drawn as in GeoJSON

SHAPE_TYPES = ("circle", "polygon")


@dataclass(frozen=True)
class Point:
    lat: float
    lon: float


@dataclass(frozen=True)
class Circle:
    center: Point
    radius_m: float


@dataclass(frozen=True)
class Polygon:
    ring: tuple[Point, ...]  # open: the first vertex is not repeated at the end


Shape = Circle | Polygon


@dataclass(frozen=True)
class BBox:
    """A map window in GeoJSON order; `west > east` spans the antimeridian."""

    west: float
    south: float
    east: float
    north: float

    def contains(self, p: Point) -> bool:
        if not self.south <= p.lat <= self.north:
            return False
        if self.west <= self.east:
            return self.west <= p.lon <= self.east
        return p.lon >= self.west or p.lon <= self.east


def distance_m(a: Point, b: Point) -> float:
    """The great-circle distance in metres (haversine)."""
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi = phi2 - phi1
    dlam = math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def destination(start: Point, bearing_deg: float, distance: float) -> Point:
    """The point `distance` metres from `start` on the initial bearing (degrees from north)."""
    delta = distance / EARTH_RADIUS_M
    theta = math.radians(bearing_deg)
    phi1, lam1 = math.radians(start.lat), math.radians(start.lon)
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lam2 = lam1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * sin_phi2,
    )
    lon = (math.degrees(lam2) + 540.0) % 360.0 - 180.0
    return Point(math.degrees(phi2), lon)


def in_polygon(ring: Sequence[Point], p: Point) -> bool:
    """Ray casting (even-odd rule) in the (lon, lat) plane; see the module's limits."""
    inside = False
    j = len(ring) - 1
    for i, a in enumerate(ring):
        b = ring[j]
        if (a.lat > p.lat) != (b.lat > p.lat):
            cross_lon = a.lon + (p.lat - a.lat) * (b.lon - a.lon) / (b.lat - a.lat)
            if p.lon < cross_lon:
                inside = not inside
        j = i
    return inside


def contains(shape: Shape, p: Point) -> bool:
    if isinstance(shape, Circle):
        return distance_m(shape.center, p) <= shape.radius_m
    return in_polygon(shape.ring, p)


def _local_xy(origin: Point, p: Point) -> tuple[float, float]:
    """`p` in metres east and north of `origin` (equirectangular: good to a few km)."""
    dlon = (p.lon - origin.lon + 540.0) % 360.0 - 180.0
    x = math.radians(dlon) * math.cos(math.radians(origin.lat)) * EARTH_RADIUS_M
    y = math.radians(p.lat - origin.lat) * EARTH_RADIUS_M
    return x, y


def _segment_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from the origin to the segment a-b, in the plane."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length2))
    return math.hypot(ax + t * dx, ay + t * dy)


def boundary_distance_m(shape: Shape, p: Point) -> float:
    """How far `p` is from the shape's boundary: negative inside, positive outside."""
    if isinstance(shape, Circle):
        return distance_m(shape.center, p) - shape.radius_m
    xy = [_local_xy(p, v) for v in shape.ring]
    nearest = min(_segment_distance(xy[i - 1], xy[i]) for i in range(len(xy)))
    return -nearest if in_polygon(shape.ring, p) else nearest


def circle_ring(circle: Circle, segments: int = CIRCLE_SEGMENTS) -> list[Point]:
    """The circle as a polygon of `segments` vertices on its boundary."""
    return [
        destination(circle.center, 360.0 * i / segments, circle.radius_m) for i in range(segments)
    ]


# Shapes as JSON: validated on the way in, canonical on the way out.


def _number(raw: Any, field: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise Invalid(f"{field} must be a finite number", field=field)
    return float(raw)


def parse_point(lat: Any, lon: Any, field: str) -> Point:
    """A point from two numbers; `Invalid` (naming `field`) when either is out of range."""
    lat_f, lon_f = _number(lat, f"{field}.lat"), _number(lon, f"{field}.lon")
    if not -90.0 <= lat_f <= 90.0:
        raise Invalid(f"latitude {lat_f} is outside [-90, 90]", field=f"{field}.lat")
    if not -180.0 <= lon_f <= 180.0:
        raise Invalid(f"longitude {lon_f} is outside [-180, 180]", field=f"{field}.lon")
    return Point(lat_f, lon_f)


def _position(raw: Any, field: str) -> Point:
    """A GeoJSON position `[lon, lat]` (a third number, the altitude, is ignored)."""
    if not isinstance(raw, list | tuple) or len(raw) not in (2, 3):
        raise Invalid(f"{field} must be a position [lon, lat]", field=field)
    return parse_point(raw[1], raw[0], field)


def parse_shape(raw: Any, field: str = "shape") -> Shape:
    """A circle or polygon from its JSON form, checked; `Invalid` names the faulty field."""
    if not isinstance(raw, dict):
        raise Invalid(f"{field} must be an object with a type", field=field)
    kind = raw.get("type")
    if kind == "circle":
        return _parse_circle(raw, field)
    if kind == "polygon":
        return _parse_polygon(raw, field)
    raise Invalid(
        f"unknown shape type {kind!r}: use one of {', '.join(SHAPE_TYPES)}", field=f"{field}.type"
    )


def _unknown_keys(raw: dict[str, Any], allowed: set[str], field: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise Invalid(f"unknown field(s) {', '.join(unknown)}", field=f"{field}.{unknown[0]}")


def _parse_circle(raw: dict[str, Any], field: str) -> Circle:
    _unknown_keys(raw, {"type", "center", "radius_m"}, field)
    center = _position(raw.get("center"), f"{field}.center")
    radius = _number(raw.get("radius_m"), f"{field}.radius_m")
    if not 0 < radius <= MAX_RADIUS_M:
        raise Invalid(
            f"radius_m must be above 0 and at most {MAX_RADIUS_M:,.0f}", field=f"{field}.radius_m"
        )
    return Circle(center, radius)


def _parse_polygon(raw: dict[str, Any], field: str) -> Polygon:
    _unknown_keys(raw, {"type", "coordinates"}, field)
    where = f"{field}.coordinates"
    coordinates = raw.get("coordinates")
    if not isinstance(coordinates, list):
        raise Invalid(f"{where} must be a list of positions [lon, lat]", field=where)
    if len(coordinates) > MAX_VERTICES + 1:
        raise Invalid(f"a polygon has at most {MAX_VERTICES} vertices", field=where)
    ring: list[Point] = []
    for i, position in enumerate(coordinates):
        p = _position(position, f"{where}.{i}")
        if not ring or p != ring[-1]:  # repeated vertices add nothing
            ring.append(p)
    if len(ring) > 1 and ring[0] == ring[-1]:  # a closed GeoJSON ring
        ring.pop()
    if len(ring) < 3:
        raise Invalid("a polygon needs at least 3 distinct vertices", field=where)
    _check_polygon(ring, where)
    return Polygon(tuple(ring))


def _check_polygon(ring: list[Point], where: str) -> None:
    if any(abs(p.lat) > MAX_ABS_POLYGON_LAT for p in ring):
        raise Invalid(
            f"polygon vertices must lie within ±{MAX_ABS_POLYGON_LAT:g}° latitude", field=where
        )
    lons = [p.lon for p in ring]
    if max(lons) - min(lons) >= 180.0:
        raise Invalid("a polygon may not cross the antimeridian (180° longitude)", field=where)
    if any(distance_m(ring[0], p) > MAX_EXTENT_M for p in ring):
        raise Invalid(f"a polygon may reach at most {MAX_EXTENT_M:,.0f} m wide", field=where)
    xy = [_local_xy(ring[0], p) for p in ring]
    crossing = _self_crossing(xy)
    if crossing is not None:
        i, j = crossing
        raise Invalid(f"the polygon crosses itself (edges {i} and {j})", field=where)
    edges = zip(xy, xy[1:] + xy[:1], strict=True)
    area = abs(sum(a[0] * b[1] - b[0] * a[1] for a, b in edges)) / 2
    if area < MIN_AREA_M2:
        raise Invalid("the polygon has no area (its vertices lie on one line)", field=where)


def _orientation(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> int:
    value = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return 0 if value == 0 else (1 if value > 0 else -1)


def _on_segment(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> bool:
    """c, collinear with a-b, lies within the segment's box."""
    return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])


def _segments_meet(
    p1: tuple[float, float],
    p2: tuple[float, float],
    q1: tuple[float, float],
    q2: tuple[float, float],
) -> bool:
    o1, o2 = _orientation(p1, p2, q1), _orientation(p1, p2, q2)
    o3, o4 = _orientation(q1, q2, p1), _orientation(q1, q2, p2)
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and _on_segment(p1, p2, q1))
        or (o2 == 0 and _on_segment(p1, p2, q2))
        or (o3 == 0 and _on_segment(q1, q2, p1))
        or (o4 == 0 and _on_segment(q1, q2, p2))
    )


def _self_crossing(xy: list[tuple[float, float]]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges that touch (edge i runs from vertex i to i + 1)."""
    n = len(xy)
    for i in range(n):
        a1, a2 = xy[i], xy[(i + 1) % n]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:  # the first and last edges share vertex 0
                continue
            if _segments_meet(a1, a2, xy[j], xy[(j + 1) % n]):
                return i, j
    return None


def shape_json(shape: Shape) -> dict[str, Any]:
    """The canonical JSON form, as stored and returned (positions as [lon, lat])."""
    if isinstance(shape, Circle):
        return {
            "type": "circle",
            "center": [shape.center.lon, shape.center.lat],
            "radius_m": shape.radius_m,
        }
    return {"type": "polygon", "coordinates": [[p.lon, p.lat] for p in shape.ring]}


def stored_shape(data: dict[str, Any]) -> Shape:
    """A shape from its stored canonical form, without checking it again."""
    if data["type"] == "circle":
        lon, lat = data["center"][:2]
        return Circle(Point(float(lat), float(lon)), float(data["radius_m"]))
    return Polygon(tuple(Point(float(lat), float(lon)) for lon, lat, *_ in data["coordinates"]))


def geojson_geometry(shape: Shape) -> dict[str, Any]:
    """A GeoJSON Polygon to draw: a polygon as it is, a circle as a 64-gon on its boundary."""
    ring = circle_ring(shape) if isinstance(shape, Circle) else list(shape.ring)
    closed = [[p.lon, p.lat] for p in ring]
    closed.append(closed[0])
    return {"type": "Polygon", "coordinates": [closed]}


def bounds(shape: Shape) -> BBox:
    """A box around the shape (a little generous for circles), for a first cut in SQL."""
    if isinstance(shape, Polygon):
        lats = [p.lat for p in shape.ring]
        lons = [p.lon for p in shape.ring]
        return BBox(min(lons), min(lats), max(lons), max(lats))
    c = shape.center
    dlat = math.degrees(shape.radius_m / EARTH_RADIUS_M) * 1.01
    south, north = max(-90.0, c.lat - dlat), min(90.0, c.lat + dlat)
    widest = max(abs(south), abs(north))
    if widest >= 89.0:  # near a pole every longitude is close
        return BBox(-180.0, south, 180.0, north)
    dlon = dlat / math.cos(math.radians(widest))
    if dlon >= 180.0:
        return BBox(-180.0, south, 180.0, north)
    west = (c.lon - dlon + 540.0) % 360.0 - 180.0
    east = (c.lon + dlon + 540.0) % 360.0 - 180.0
    return BBox(west, south, east, north)


def parse_bbox(text: str, field: str = "bbox") -> BBox:
    """`west,south,east,north` in degrees (GeoJSON's bbox order)."""
    parts = text.split(",")
    if len(parts) != 4:
        raise Invalid(f"{field} is west,south,east,north in degrees", field=field)
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError:
        raise Invalid(f"{field} is west,south,east,north in degrees", field=field) from None
    for value, name, limit in ((west, "west", 180), (east, "east", 180)):
        if not -limit <= value <= limit:
            raise Invalid(f"{field}: {name} {value} is outside [-180, 180]", field=field)
    for value, name in ((south, "south"), (north, "north")):
        if not -90 <= value <= 90:
            raise Invalid(f"{field}: {name} {value} is outside [-90, 90]", field=field)
    if south > north:
        raise Invalid(f"{field}: south {south} is above north {north}", field=field)
    return BBox(west, south, east, north)
