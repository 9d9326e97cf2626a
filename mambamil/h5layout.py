"""H5 layouts: the one place that writes and reads the pipeline's HDF5 files.

Coordinates file (tile stage), ``tiles/<slide_id>.h5``::

    /coords  int64 (N, 2)  level-0 top-left (x, y) of each patch, row-major grid order
        attrs: target_mpp, patch_size (px at target_mpp), patch_size_level0, slide_mpp, mpp_source,
               level0_dim (w, h), patch_level, downsample (ds_x, ds_y), level_dim (w, h of patch_level),
               overlap, step_level0, tissue_threshold, name (slide_id), slide_path, mambamil_version
    /tissue_fraction  float32 (N,)  tissue fraction of each kept patch

CLAM and TRIDENT readers find the attributes they expect on ``coords`` (``patch_level``, ``patch_size``,
``downsample``, ``level_dim``, ``patch_size_level0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mambamil import __version__
from mambamil.errors import InputFileError
from mambamil.fileio import atomic_output


@dataclass
class CoordsFile:
    """The content of a tile-stage coordinates file."""

    coords: np.ndarray  # (N, 2) int64 level-0 (x, y)
    attrs: dict[str, Any]
    tissue_fraction: np.ndarray | None = None

    @property
    def patch_size(self) -> int:
        return int(self.attrs["patch_size"])

    @property
    def target_mpp(self) -> float:
        return float(self.attrs["target_mpp"])

    @property
    def patch_size_level0(self) -> float:
        return float(self.attrs["patch_size_level0"])


def _clean_attr(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return np.asarray(value)
    return value


def write_coords(path: str | Path, coords: np.ndarray, attrs: dict[str, Any], tissue_fraction: np.ndarray) -> None:
    """Write a coordinates file atomically."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("coords", data=coords)
        for key, value in {**attrs, "mambamil_version": __version__}.items():
            ds.attrs[key] = _clean_attr(value)
        f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, dtype=np.float32))


def read_coords(path: str | Path) -> CoordsFile:
    """Read a coordinates file; raises :class:`InputFileError` if it is missing, empty or malformed."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "coordinates file not found (run the tile stage first)")
    if path.stat().st_size == 0:
        raise InputFileError(path, "coordinates file is empty (0 bytes)")
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise InputFileError(path, "no 'coords' dataset: not a tile-stage coordinates file")
            ds = f["coords"]
            coords = np.asarray(ds[()], dtype=np.int64)
            attrs = {k: _attr_value(v) for k, v in ds.attrs.items()}
            tissue = np.asarray(f["tissue_fraction"][()]) if "tissue_fraction" in f else None
    except OSError as exc:
        raise InputFileError(path, f"not a readable HDF5 file ({exc})") from exc
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputFileError(path, f"'coords' has shape {coords.shape}, expected (N, 2)")
    missing = [k for k in ("patch_size", "target_mpp", "patch_size_level0") if k not in attrs]
    if missing:
        raise InputFileError(path, f"'coords' lacks attributes {missing}")
    return CoordsFile(coords=coords, attrs=attrs, tissue_fraction=tissue)


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
