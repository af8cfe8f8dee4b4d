"""Boundaries as GeoJSON polygons (WGS-84, [longitude, latitude]) and which one holds a point: pure arithmetic."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from domain.errors import InvalidCommand

MAX_VERTICES = 20_000
"""Vertices one boundary may have: a grid's outline, not a survey."""


def check_geometry(geometry: Any) -> dict[str, Any]:
    """A GeoJSON Polygon or MultiPolygon (or a Feature holding one), normalised to the geometry, or InvalidCommand."""
    if isinstance(geometry, dict) and geometry.get("type") == "Feature":
        geometry = geometry.get("geometry")
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        raise InvalidCommand('a boundary is a GeoJSON Polygon or MultiPolygon: {"type": "Polygon", "coordinates": ...}')
    polygons = [geometry.get("coordinates")] if geometry["type"] == "Polygon" else geometry.get("coordinates")
    if not isinstance(polygons, list) or not polygons:
        raise InvalidCommand("the boundary's coordinates are empty")
    vertices = 0
    out = []
    for p, polygon in enumerate(polygons):
        if not isinstance(polygon, list) or not polygon:
            raise InvalidCommand(f"polygon {p} has no rings; give [[[long, lat], ...]] with the outer ring first")
        rings = []
        for r, ring in enumerate(polygon):
            where = f"polygon {p} ring {r}"
            if not isinstance(ring, list) or len(ring) < 4:
                raise InvalidCommand(f"{where} needs at least 4 positions (a closed triangle)")
            points = []
            for position in ring:
                if not isinstance(position, list | tuple) or len(position) < 2:
                    raise InvalidCommand(f"{where}: each position is [longitude, latitude]")
                long, lat = position[0], position[1]
                if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (long, lat)):
                    raise InvalidCommand(f"{where}: positions are numbers, got {position!r}")
                if not (math.isfinite(long) and math.isfinite(lat) and -180 <= long <= 180 and -90 <= lat <= 90):
                    raise InvalidCommand(f"{where}: {position!r} is not [longitude -180..180, latitude -90..90]")
                points.append([float(long), float(lat)])
            if points[0] != points[-1]:
                raise InvalidCommand(f"{where} is not closed: its last position must repeat its first")
            vertices += len(points)
            rings.append(points)
        out.append(rings)
    if vertices > MAX_VERTICES:
        raise InvalidCommand(f"the boundary has {vertices} vertices; at most {MAX_VERTICES} (simplify it)")
    return {"type": "MultiPolygon", "coordinates": out}


def contains(geometry: dict[str, Any], lat: float, long: float) -> bool:
    """True when the point lies inside the (Multi)Polygon: inside an outer ring and outside its holes."""
    return any(
        _in_ring(polygon[0], long, lat) and not any(_in_ring(hole, long, lat) for hole in polygon[1:])
        for polygon in geometry["coordinates"]
    )


def _in_ring(ring: list[list[float]], x: float, y: float) -> bool:
    """Ray casting (even-odd rule)."""
    inside = False
    for (x1, y1), (x2, y2) in pairwise(ring):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside
