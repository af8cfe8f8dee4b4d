"""Boundaries: GeoJSON is checked as a person would write it wrong, and a point finds the polygon that holds it."""

from __future__ import annotations

import pytest

from domain.errors import InvalidCommand
from domain.geo import check_geometry, contains

SQUARE = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0]]
HOLE = [[4.0, 4.0], [6.0, 4.0], [6.0, 6.0], [4.0, 6.0], [4.0, 4.0]]


def test_inside_outside_holes_and_several_polygons() -> None:
    donut = check_geometry({"type": "Polygon", "coordinates": [SQUARE, HOLE]})
    assert contains(donut, lat=1, long=1) and contains(donut, lat=9.9, long=3)
    assert not contains(donut, lat=5, long=5)  # in the hole
    assert not contains(donut, lat=11, long=5) and not contains(donut, lat=5, long=-0.1)
    far = [[[20.0, 20.0], [30.0, 20.0], [25.0, 30.0], [20.0, 20.0]]]
    both = check_geometry({"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[SQUARE], far]}})
    assert contains(both, lat=22, long=25) and contains(both, lat=1, long=1) and not contains(both, lat=15, long=15)


@pytest.mark.parametrize(
    ("geometry", "says"),
    [
        ({"type": "Point", "coordinates": [1, 2]}, "Polygon or MultiPolygon"),
        ({"type": "Polygon", "coordinates": []}, "no rings"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "at least 4"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, "not closed"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [181, 0], [1, 1], [0, 0]]]}, "longitude"),
        ({"type": "Polygon", "coordinates": [[[0, 0], ["a", 0], [1, 1], [0, 0]]]}, "numbers"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1], [1, 1], [0, 0]]]}, "[longitude, latitude]"),
    ],
)
def test_a_bad_boundary_says_what_to_fix(geometry: dict, says: str) -> None:
    with pytest.raises(InvalidCommand, match=says.replace("[", r"\[").replace("]", r"\]")):
        check_geometry(geometry)
