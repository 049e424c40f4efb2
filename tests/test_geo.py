"""Geometry, presence and the site's figures as plain functions: no server, no database."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper.errors import Invalid
from fleetkeeper.query import parse
from fleetkeeper.services.geo.environment import site_query, summarize
from fleetkeeper.services.geo.fences import LEAVE_MARGIN_M, still_inside
from fleetkeeper.services.geo.geometry import (
    CIRCLE_SEGMENTS,
    MAX_RADIUS_M,
    BBox,
    Circle,
    Point,
    Polygon,
    boundary_distance_m,
    bounds,
    contains,
    destination,
    distance_m,
    geojson_geometry,
    parse_bbox,
    parse_shape,
    shape_json,
    stored_shape,
)
from fleetkeeper.services.geo.positions import KEEPALIVE, MIN_MOVE_M, should_store

BERLIN = Point(52.5200, 13.4050)
PARIS = Point(48.8566, 2.3522)

lats = st.floats(min_value=-80, max_value=80)
lons = st.floats(min_value=-179, max_value=179)
points = st.builds(Point, lats, lons)
bearings = st.floats(min_value=0, max_value=360)
site_distances = st.floats(min_value=1, max_value=50_000)


def square(center: Point, half_m: float) -> Polygon:
    """A square of side 2·half_m around `center` (corners on the diagonals)."""
    corner = half_m * math.sqrt(2)
    return Polygon(tuple(destination(center, b, corner) for b in (45, 135, 225, 315)))


def invalid_field(raw: Any) -> str:
    with pytest.raises(Invalid) as caught:
        parse_shape(raw)
    field: str = caught.value.extra["field"]
    return field


# Distances


def test_distance_between_known_cities() -> None:
    assert distance_m(BERLIN, PARIS) == pytest.approx(877_500, rel=0.005)
    assert distance_m(Point(0, 0), Point(1, 0)) == pytest.approx(111_195, rel=1e-4)


@given(points, points)
def test_distance_is_symmetric_and_bounded(a: Point, b: Point) -> None:
    assert distance_m(a, b) == pytest.approx(distance_m(b, a), abs=1e-6)
    assert 0 <= distance_m(a, b) <= math.pi * 6_371_008.8 + 1e-6
    assert distance_m(a, a) == pytest.approx(0, abs=1e-6)


@given(points, points, points)
def test_distance_obeys_the_triangle_inequality(a: Point, b: Point, c: Point) -> None:
    assert distance_m(a, c) <= distance_m(a, b) + distance_m(b, c) + 1e-6


@given(points, bearings, site_distances)
def test_destination_lies_at_the_distance_asked(start: Point, bearing: float, d: float) -> None:
    assert distance_m(start, destination(start, bearing, d)) == pytest.approx(d, rel=1e-6)


# Containment


@given(points, st.floats(min_value=10, max_value=MAX_RADIUS_M), bearings)
def test_a_circle_holds_what_is_nearer_than_its_radius(
    center: Point, radius: float, bearing: float
) -> None:
    circle = Circle(center, radius)
    assert contains(circle, center)
    assert contains(circle, destination(center, bearing, radius * 0.99))
    assert not contains(circle, destination(center, bearing, radius * 1.01))


@given(points, st.floats(min_value=20, max_value=20_000), bearings, st.integers(0, 3))
def test_a_polygon_holds_its_inside_whatever_way_its_ring_runs(
    center: Point, half: float, bearing: float, shift: int
) -> None:
    poly = square(center, half)
    turned = Polygon(poly.ring[shift:] + poly.ring[:shift])
    backwards = Polygon(poly.ring[::-1])
    inside = destination(center, bearing, half * 0.5)
    outside = destination(center, bearing, half * 1.6)
    for shape in (poly, turned, backwards):
        assert contains(shape, center)
        assert contains(shape, inside)
        assert not contains(shape, outside)


def test_a_concave_polygon_leaves_out_its_notch() -> None:
    # A "U" open to the north, 300 m wide: the notch is outside, the arms are inside.
    corners = [(0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3)]
    u = parse_shape({"type": "polygon", "coordinates": [[x / 1000, y / 1000] for x, y in corners]})
    assert contains(u, Point(0.0015, 0.0005))
    assert contains(u, Point(0.0015, 0.0025))
    assert not contains(u, Point(0.0015, 0.0015))
    assert not contains(u, Point(0.004, 0.0015))


@given(points, st.floats(min_value=50, max_value=5_000), bearings, st.floats(0.1, 3.0))
def test_boundary_distance_is_negative_inside_and_positive_outside(
    center: Point, radius: float, bearing: float, factor: float
) -> None:
    p = destination(center, bearing, radius * factor)
    for shape in (Circle(center, radius), square(center, radius)):
        d = boundary_distance_m(shape, p)
        if abs(d) > 1.0:  # right on the boundary either answer is fine
            assert (d < 0) == contains(shape, p)


def test_boundary_distance_of_a_polygon_is_metres_to_the_nearest_edge() -> None:
    poly = square(BERLIN, 100)
    east_edge_plus_50 = destination(BERLIN, 90, 150)
    assert boundary_distance_m(poly, east_edge_plus_50) == pytest.approx(50, abs=0.5)
    assert boundary_distance_m(poly, BERLIN) == pytest.approx(-100, abs=0.5)


@given(points, st.floats(min_value=1, max_value=MAX_RADIUS_M), bearings, st.floats(0, 1))
def test_the_bounds_of_a_circle_hold_all_of_it(
    center: Point, radius: float, bearing: float, factor: float
) -> None:
    box = bounds(Circle(center, radius))
    assert box.contains(destination(center, bearing, radius * factor))


def test_a_circle_is_drawn_as_a_closed_ring_on_its_boundary() -> None:
    circle = Circle(BERLIN, 250)
    geometry = geojson_geometry(circle)
    ring = geometry["coordinates"][0]
    assert geometry["type"] == "Polygon"
    assert len(ring) == CIRCLE_SEGMENTS + 1 and ring[0] == ring[-1]
    for lon, lat in ring:
        assert distance_m(BERLIN, Point(lat, lon)) == pytest.approx(250, rel=1e-6)


# Presence


def test_entering_needs_the_boundary_crossed_and_leaving_needs_the_margin() -> None:
    fence = Circle(BERLIN, 100)
    just_outside = destination(BERLIN, 0, 100 + LEAVE_MARGIN_M / 2)
    well_outside = destination(BERLIN, 0, 100 + LEAVE_MARGIN_M * 2)
    assert not still_inside(fence, just_outside, was_inside=False)
    assert still_inside(fence, just_outside, was_inside=True)
    assert not still_inside(fence, well_outside, was_inside=True)
    assert still_inside(fence, BERLIN, was_inside=False)


def test_a_parked_device_stores_a_position_only_hourly() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    nearby = destination(BERLIN, 90, MIN_MOVE_M / 2)
    moved = destination(BERLIN, 90, MIN_MOVE_M * 5)
    assert should_store(None, BERLIN, t0)
    assert not should_store((BERLIN, t0), nearby, t0 + timedelta(minutes=5))
    assert should_store((BERLIN, t0), nearby, t0 + KEEPALIVE)
    assert should_store((BERLIN, t0), moved, t0 + timedelta(seconds=1))


# Shapes from JSON


def test_shapes_round_trip_through_their_json() -> None:
    circle = parse_shape({"type": "circle", "center": [13.405, 52.52], "radius_m": 250})
    assert circle == Circle(BERLIN, 250.0)
    poly = square(BERLIN, 500)
    for shape in (circle, poly):
        assert parse_shape(shape_json(shape)) == shape
        assert stored_shape(shape_json(shape)) == shape
    assert shape_json(circle) == {"type": "circle", "center": [13.405, 52.52], "radius_m": 250.0}


def test_a_closed_ring_and_repeated_vertices_are_taken_as_meant() -> None:
    ring = [[13.40, 52.52], [13.41, 52.52], [13.41, 52.52], [13.41, 52.53], [13.40, 52.52]]
    shape = parse_shape({"type": "polygon", "coordinates": ring})
    assert isinstance(shape, Polygon) and len(shape.ring) == 3


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": "hexagon"}, "shape.type"),
        ("circle", "shape"),
        ({"type": "circle", "center": [13.4, 91], "radius_m": 10}, "shape.center.lat"),
        ({"type": "circle", "center": [181, 52], "radius_m": 10}, "shape.center.lon"),
        ({"type": "circle", "center": [13.4], "radius_m": 10}, "shape.center"),
        ({"type": "circle", "center": [13.4, 52.5], "radius_m": 0}, "shape.radius_m"),
        ({"type": "circle", "center": [13.4, 52.5], "radius_m": -5}, "shape.radius_m"),
        ({"type": "circle", "center": [13.4, 52.5], "radius_m": 1e9}, "shape.radius_m"),
        ({"type": "circle", "center": [13.4, 52.5], "radius_m": "big"}, "shape.radius_m"),
        ({"type": "circle", "center": [13.4, 52.5], "radius_m": 5, "x": 1}, "shape.x"),
        ({"type": "polygon", "coordinates": [[0, 0], [1, 0]]}, "shape.coordinates"),
        ({"type": "polygon", "coordinates": [[0, 0], [1, 1], [0, 0]]}, "shape.coordinates"),
        ({"type": "polygon", "coordinates": "nope"}, "shape.coordinates"),
        ({"type": "polygon", "coordinates": [[0, 0], [1, 95], [1, 1]]}, "shape.coordinates.1.lat"),
    ],
)
def test_bad_shapes_name_the_field(raw: Any, field: str) -> None:
    assert invalid_field(raw) == field


@pytest.mark.parametrize(
    ("coordinates", "why"),
    [
        ([[0, 0], [0.01, 0.01], [0.01, 0], [0, 0.01]], "crosses itself"),  # a bow tie
        ([[0, 0], [0.01, 0], [0.02, 0]], "no area"),
        ([[179.99, 0], [-179.99, 0], [-179.99, 0.01]], "antimeridian"),
        ([[0, 0], [2, 0], [2, 2]], "at most"),
        ([[0, 89], [1, 89], [1, 89.5]], "latitude"),
    ],
)
def test_self_evidently_wrong_polygons_are_refused(coordinates: list[Any], why: str) -> None:
    with pytest.raises(Invalid, match=why) as caught:
        parse_shape({"type": "polygon", "coordinates": coordinates})
    assert caught.value.extra["field"] == "shape.coordinates"


def test_too_many_vertices_are_refused() -> None:
    around = (destination(BERLIN, i * 360 / 600, 100) for i in range(600))
    ring = [[p.lon, p.lat] for p in around]
    assert invalid_field({"type": "polygon", "coordinates": ring}) == "shape.coordinates"


# Map windows


def test_a_bbox_is_west_south_east_north_and_may_span_the_antimeridian() -> None:
    box = parse_bbox("13,52,14,53")
    assert box == BBox(13, 52, 14, 53)
    assert box.contains(BERLIN) and not box.contains(PARIS)
    pacific = parse_bbox("170,-20,-170,20")
    assert pacific.contains(Point(0, 179)) and pacific.contains(Point(0, -179))
    assert not pacific.contains(Point(0, 0))


@pytest.mark.parametrize(
    "text", ["1,2,3", "a,b,c,d", "0,10,1,5", "0,-91,1,0", "-181,0,0,1", "nan,0,1,1"]
)
def test_bad_bboxes_are_refused(text: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_bbox(text)
    assert caught.value.extra["field"] == "bbox"


# The site's environment


def test_the_site_median_judges_fresh_readings_only() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fresh, old = now - timedelta(minutes=5), now - timedelta(days=3)
    latest = {
        "a": {"temperature": (20.0, fresh), "humidity": (40.0, fresh)},
        "b": {"temperature": (22.0, fresh)},
        "c": {"temperature": (27.0, fresh)},
        "d": {"temperature": (-5.0, old)},
        "e": {},
    }
    stats, readings = summarize(latest, ["temperature", "humidity", "co2"], now, timedelta(days=1))
    temperature = stats["temperature"]
    assert temperature is not None
    assert (temperature.count, temperature.median, temperature.min, temperature.max) == (
        3,
        22.0,
        20.0,
        27.0,
    )
    assert stats["co2"] is None
    assert readings["c"]["temperature"].deviation == 5.0
    assert readings["a"]["humidity"].deviation == 0.0
    assert readings["d"]["temperature"].stale and readings["d"]["temperature"].deviation is None
    assert readings["e"] == {}


@settings(max_examples=200)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1))
def test_any_site_name_becomes_a_query_that_parses(site: str) -> None:
    parse(site_query(site))
