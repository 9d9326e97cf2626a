"""Polygons with holes between raster masks and GeoJSON (level-0 pixel coordinates, as QuPath expects).

OpenCV's contours run through pixel centres, so a region joined by a one-pixel neck, or a hole touching its outer
ring, gives a ring that touches itself: an invalid polygon that QuPath and GIS tools reject or mis-measure. The
GeoJSON writer repairs such rings with shapely (``make_valid``, then snapping to the written 0.01 px grid), so every
polygon written is valid (OGC simple features) and keeps its holes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import shapely
import shapely.geometry

CLASS_COLORS = {"Tissue": [0, 160, 0], "Lesion": [200, 0, 0]}


@dataclass
class Polygon:
    """An outer ring with holes, in the pixel coordinates of the mask it came from (float (K, 2) arrays)."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)

    def area(self) -> float:
        """Area in mask pixels (exterior minus holes)."""
        outer = cv2.contourArea(self.exterior.astype(np.float32))
        return outer - sum(cv2.contourArea(h.astype(np.float32)) for h in self.holes)


def mask_polygons(mask: np.ndarray, min_area: float = 0.0, min_hole_area: float = 0.0) -> list[Polygon]:
    """Outer contours with their holes (OpenCV RETR_CCOMP); areas in mask pixels.

    Regions smaller than ``min_area`` are dropped and holes smaller than ``min_hole_area`` are filled.
    """
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    polygons: list[Polygon] = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:
            continue  # a hole; collected with its parent
        holes = []
        child = hierarchy[i][2]
        while child != -1:
            if cv2.contourArea(contours[child]) >= max(min_hole_area, 1e-9):
                holes.append(contours[child][:, 0, :].astype(np.float64))
            child = hierarchy[child][0]
        poly = Polygon(contour[:, 0, :].astype(np.float64), holes)
        if len(poly.exterior) >= 3 and poly.area() >= min_area and poly.area() > 0:
            polygons.append(poly)
    return polygons


def polygons_to_mask(polygons: list[Polygon], shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Rasterise polygons (coordinates divided by ``scale``) into a bool mask of ``shape`` (h, w)."""
    mask = np.zeros(shape, np.uint8)
    for poly in polygons:
        cv2.fillPoly(mask, [np.round(poly.exterior / scale).astype(np.int32)], 1)
        if poly.holes:
            cv2.fillPoly(mask, [np.round(h / scale).astype(np.int32) for h in poly.holes], 0)
    return mask.astype(bool)


#: Coordinates are written with this many decimals (level-0 px); geometry is made valid on that grid.
DECIMALS = 2


def _polygons(geom: shapely.Geometry) -> list[shapely.Polygon]:
    """The polygons of a geometry, flattening (Multi)Polygons inside a GeometryCollection."""
    parts = shapely.get_parts(shapely.get_parts(geom))
    return [g for g in parts if isinstance(g, shapely.Polygon)]


def valid_geometry(poly: Polygon, scale: float) -> dict[str, Any] | None:
    """A polygon (mask px, contour points on pixel centres) as a valid GeoJSON Polygon/MultiPolygon in level-0 px,
    or None when nothing with an area is left. Self-touching rings are split, holes kept."""
    exterior = (poly.exterior + 0.5) * scale
    holes = [(h + 0.5) * scale for h in poly.holes if len(h) >= 3]
    if len(exterior) < 3:
        return None
    geom: shapely.Geometry = shapely.geometry.Polygon(exterior, holes)
    if not geom.is_valid:
        geom = shapely.MultiPolygon(_polygons(shapely.make_valid(geom)))  # drops the lines of collapsed necks
    geom = shapely.set_precision(geom, 10.0**-DECIMALS)  # snapped to the written grid; the output is valid
    parts = [g for g in _polygons(geom) if g.area > 0]
    if not parts:
        return None
    merged = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    mapping = shapely.geometry.mapping(merged)

    def rings(polygon: Any) -> list[list[list[float]]]:
        return [[[round(x, DECIMALS), round(y, DECIMALS)] for x, y in ring] for ring in polygon]

    if mapping["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": rings(mapping["coordinates"])}
    return {"type": "MultiPolygon", "coordinates": [rings(p) for p in mapping["coordinates"]]}


def polygons_to_feature_collection(polygons: list[Polygon], scale: float, class_name: str) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of annotation polygons (QuPath's import format), scaled to level 0; every
    geometry valid (:func:`valid_geometry`).

    Mask pixel i covers level-0 [i·scale, (i+1)·scale); contour points sit on pixel centres, hence the +0.5.
    """
    features = []
    for poly in polygons:
        geometry = valid_geometry(poly, scale)
        if geometry is None:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "classification": {
                        "name": class_name,
                        "color": CLASS_COLORS.get(class_name, [0, 0, 255]),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def mask_to_feature_collection(mask: np.ndarray, scale: float, class_name: str) -> dict[str, Any]:
    """Polygons of a bool mask whose pixels are ``scale`` level-0 pixels wide, as GeoJSON."""
    return polygons_to_feature_collection(mask_polygons(mask), scale, class_name)


def feature_collection_to_mask(fc: dict[str, Any], shape: tuple[int, int], scale: float) -> np.ndarray:
    """Rasterise a FeatureCollection of (Multi)Polygons in level-0 px onto a mask whose pixels are ``scale`` wide."""
    polygons = []
    for feature in fc.get("features", []):
        geom = feature["geometry"]
        parts = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
        for rings in parts:
            arrays = [np.asarray(r, dtype=np.float64) - 0.5 * scale for r in rings]
            polygons.append(Polygon(arrays[0], arrays[1:]))
    return polygons_to_mask(polygons, shape, scale)
