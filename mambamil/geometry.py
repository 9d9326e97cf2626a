"""Polygons with holes between raster masks and GeoJSON (level-0 pixel coordinates, as QuPath expects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

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


def _ring(points: np.ndarray, scale: float) -> list[list[float]]:
    ring = [[round(float(x), 2), round(float(y), 2)] for x, y in points * scale]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def polygons_to_feature_collection(polygons: list[Polygon], scale: float, class_name: str) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of annotation polygons (QuPath's import format), scaled to level 0.

    Mask pixel i covers level-0 [i·scale, (i+1)·scale); contour points sit on pixel centres, hence the +0.5.
    """
    features = []
    for poly in polygons:
        rings = [_ring(poly.exterior + 0.5, scale)] + [_ring(h + 0.5, scale) for h in poly.holes]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
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
