"""The order stage: the permutation that turns a slide's bag of patches into the sequence the scan reads.

Methods, over the patch grid (coordinates divided by the grid step):

- ``raster``  row by row, left to right (what MambaMIL used: CLAM's coordinate order);
- ``snake``   boustrophedon: odd rows right to left, so consecutive rows join at the same end;
- ``hilbert`` along a Hilbert curve over the grid: neighbours on the slide stay near in the sequence;
- ``random``  a seeded random permutation (a control).

The permutation is stored as a sidecar ``.npy`` (int64) next to the features and applied when bags load.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mambamil.errors import InputFileError
from mambamil.fileio import atomic_output
from mambamil.qc import refuse_stub

if TYPE_CHECKING:
    from mambamil.h5layout import CoordsAttrs

METHODS = ("raster", "snake", "hilbert", "random")


def grid_positions(coords: np.ndarray, step: float | None = None) -> np.ndarray:
    """Integer (column, row) grid positions of level-0 coordinates; the step defaults to the smallest spacing."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros((0, 2), np.int64)
    if step is None or step <= 0:
        gaps = np.concatenate([np.diff(np.unique(coords[:, 0])), np.diff(np.unique(coords[:, 1]))])
        gaps = gaps[gaps > 0]
        step = float(gaps.min()) if len(gaps) else 1.0
    origin = coords.min(axis=0)
    return np.round((coords - origin) / step).astype(np.int64)


def hilbert_index(col: np.ndarray, row: np.ndarray, order: int) -> np.ndarray:
    """Distance along a Hilbert curve of side 2**order for integer (col, row) (vectorised xy→d)."""
    x = np.asarray(col, dtype=np.int64).copy()
    y = np.asarray(row, dtype=np.int64).copy()
    d = np.zeros_like(x)
    s = 1 << (order - 1) if order > 0 else 0
    while s > 0:
        rx = ((x & s) > 0).astype(np.int64)
        ry = ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        # Rotate the quadrant so the sub-curve is in standard orientation.
        flip = ry == 0
        swap_and_mirror = flip & (rx == 1)
        x = np.where(swap_and_mirror, s - 1 - x, x)
        y = np.where(swap_and_mirror, s - 1 - y, y)
        x, y = np.where(flip, y, x), np.where(flip, x, y)
        s >>= 1
    return d


def order_permutation(coords: np.ndarray, method: str, step: float | None = None, seed: int = 0) -> np.ndarray:
    """Indices into ``coords`` giving the sequence for ``method`` (a permutation of range(N))."""
    if method not in METHODS:
        raise ValueError(f"unknown order method {method!r}; choose from {', '.join(METHODS)}")
    n = len(coords)
    if method == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    pos = grid_positions(coords, step)
    col, row = pos[:, 0], pos[:, 1]
    if method == "raster":
        keys = (col, row)
    elif method == "snake":
        keys = (np.where(row % 2 == 1, -col, col), row)
    else:
        side = int(max(col.max(initial=0), row.max(initial=0))) + 1
        keys = (hilbert_index(col, row, max(1, int(np.ceil(np.log2(side))))),)
    return np.lexsort(keys).astype(np.int64)  # last key is primary


def bag_permutation(coords: np.ndarray, meta: CoordsAttrs | None, method: str, seed: int = 0) -> np.ndarray:
    """The order of a bag from its coordinates; the grid step comes from the tile stage's ``step_level0``
    attribute when present, else from the coordinate spacing."""
    step = meta.step_level0 if meta is not None else None
    return order_permutation(coords, method, float(step) if step else None, seed)


def slide_seed(seed: int, slide_id: str) -> int:
    """A per-slide seed stable across runs and machines (for the ``random`` control)."""
    return (seed * 1_000_003 + zlib.crc32(slide_id.encode())) % (2**32)


#: The order of a model that read bags as stored (no order stage: original MambaMIL, CLAM ``.pt`` bags).
STORED = "stored"


def slide_order(coords: np.ndarray, meta: CoordsAttrs | None, method: str, seed: int, slide_id: str) -> np.ndarray:
    """The sequence of one slide's bag for ``method`` and the order stage's ``seed``: what the order stage writes
    and what inference recomputes (the ``random`` control draws with :func:`slide_seed` of the slide id)."""
    return bag_permutation(coords, meta, method, slide_seed(seed, slide_id))


def window_spread(coords: np.ndarray, perm: np.ndarray, window: int = 16, step: float | None = None) -> float:
    """Mean distance (in grid steps) of a sequence window's patches from the window's centroid.

    What the scan sees together is ``window`` consecutive instances; lower spread = they are spatially compact.
    """
    pos = grid_positions(coords, step)[perm].astype(np.float64)
    n = len(pos)
    if n == 0:
        return 0.0
    window = max(1, min(window, n))
    starts = np.arange(0, n - window + 1, max(1, window // 2))
    spreads = [np.linalg.norm(w - w.mean(axis=0), axis=1).mean() for w in (pos[i : i + window] for i in starts)]
    return float(np.mean(spreads))


def write_order(path: str | Path, perm: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(perm, dtype=np.int64))


def read_order(path: str | Path, n: int) -> np.ndarray:
    """Load a stored permutation and check it is one of range(n)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "order file not found (run the order stage)")
    refuse_stub(path)
    try:
        perm = np.load(path)
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"not a readable .npy order file ({exc})") from exc
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise InputFileError(path, f"not a permutation of the bag's {n} instances (shape {perm.shape})")
    return perm.astype(np.int64)
