"""H5 layouts: the one place that writes and reads the pipeline's HDF5 files.

Coordinates file (tile stage), ``tiles/<slide_id>.h5``::

    /coords  int64 (N, 2)  level-0 top-left (x, y) of each patch, row-major grid order
        attrs: target_mpp, patch_size (px at target_mpp), patch_size_level0, slide_mpp, mpp_source,
               level0_dim (w, h), patch_level, downsample (ds_x, ds_y), level_dim (w, h of patch_level),
               overlap, step_level0, tissue_threshold, name (slide_id), slide_path, mambamil_version
    /tissue_fraction  float32 (N,)  tissue fraction of each kept patch

CLAM and TRIDENT readers find the attributes they expect on ``coords`` (``patch_level``, ``patch_size``,
``downsample``, ``level_dim``, ``patch_size_level0``).

Feature file (features stage), ``features/<encoder_tag>/<slide_id>.h5``::

    /          attrs: format = "mambamil.features", format_version = 1
    /features  float32 or float16 (N, D)  one embedding per patch, row i belongs to coords[i]
        attrs: encoder, encoder_tag, encoder_kwargs (JSON), feature_dim, weights ("random" | "hub" |
               "checkpoint"), weights_path, weights_sha256 (SHA-256 of the checkpoint file, "" otherwise),
               state_dict_sha256 (SHA-256 of the loaded parameters), random_weights (bool), warning (set when
               the weights are random), input_size (h, w), mean, std, interpolation, precision, device,
               storage_dtype, slide_id, target_mpp, patch_size, patch_size_level0, slide_mpp,
               settings_json (what a rerun compares to decide whether to skip), mambamil_version,
               torch_version, timm_version
    /coords    int64 (N, 2)  level-0 top-left (x, y), identical to the tile stage's coords (same order)
        attrs: the tile stage's coords attributes, copied unchanged

CLAM (``h5_files/<slide>.h5``: ``features`` (N, 1024), ``coords`` (N, 2)) and TRIDENT
(``features_<encoder>/<slide>.h5``: the same two datasets, coords attributes from its patcher) read the two
datasets by name, so they read these files too; :func:`read_bag` reads theirs (and CLAM ``.pt`` bags).

A QC stub (:mod:`mambamil.qc`) at either path marks an excluded slide; every reader here refuses it, and every bag
reader refuses empty, non-finite and all-zero bags (:func:`check_bag_values`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mambamil import __version__
from mambamil.errors import InputFileError
from mambamil.fileio import atomic_output
from mambamil.qc import refuse_stub


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
    refuse_stub(path)
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


# -- features ---------------------------------------------------------------------------------------------
FEATURES_FORMAT = "mambamil.features"
FEATURES_FORMAT_VERSION = 1


@dataclass
class Bag:
    """A bag of patch embeddings: ``features`` (N, D), level-0 ``coords`` (N, 2) or None when unknown."""

    features: np.ndarray
    coords: np.ndarray | None
    attrs: dict[str, Any]
    source: str  # "mambamil" | "clam" | "trident" | "pt"
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    feature_attrs: dict[str, Any],
    coords_attrs: dict[str, Any] | None = None,
) -> None:
    """Write a feature file atomically (layout in this module's docstring)."""
    features = np.asarray(features)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or features.shape[0] != coords.shape[0]:
        raise ValueError(f"features {features.shape} and coords {coords.shape} do not pair up")
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FEATURES_FORMAT
        f.attrs["format_version"] = FEATURES_FORMAT_VERSION
        ds = f.create_dataset("features", data=features)
        for key, value in {**feature_attrs, "mambamil_version": __version__}.items():
            ds.attrs[key] = _clean_attr(value)
        cs = f.create_dataset("coords", data=coords)
        for key, value in (coords_attrs or {}).items():
            cs.attrs[key] = _clean_attr(value)


def read_feature_attrs(path: str | Path) -> dict[str, Any] | None:
    """The ``features`` attributes and row count of a mambamil feature file, or None if it is not one."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FEATURES_FORMAT or "features" not in f:
                return None
            attrs = {k: _attr_value(v) for k, v in f["features"].attrs.items()}
            attrs["n_rows"] = int(f["features"].shape[0])
            return attrs
    except (OSError, KeyError):
        return None


def read_features(path: str | Path) -> Bag:
    """Read a feature H5 file (mambamil, CLAM or TRIDENT layout); :class:`InputFileError` if malformed."""
    path = _existing(path, "feature file")
    refuse_stub(path)
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise InputFileError(path, f"no 'features' dataset (datasets: {sorted(f.keys())})")
            fds = f["features"]
            features = np.asarray(fds[()])
            attrs: dict[str, Any] = {}
            coords = None
            if "coords" in f:
                coords = np.asarray(f["coords"][()])
                attrs.update({k: _attr_value(v) for k, v in f["coords"].attrs.items()})
            attrs.update({k: _attr_value(v) for k, v in fds.attrs.items()})
            root = {k: _attr_value(v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise InputFileError(path, f"not a readable HDF5 file ({exc})") from exc
    if root.get("format") == FEATURES_FORMAT:
        source = "mambamil"
    elif "savetodir" in attrs or "target_magnification" in attrs or "level0_magnification" in attrs:
        source = "trident"
    else:
        source = "clam"
    return _checked_bag(path, features, coords, attrs, source)


def read_pt_bag(path: str | Path) -> Bag:
    """Read a CLAM ``.pt`` bag (a tensor (N, D); TRIDENT's ``.pt`` holds a numpy array).

    ``.pt`` files carry no coordinates; they come from the CLAM sibling ``../h5_files/<slide>.h5`` when
    present, else ``coords`` is None.
    """
    import torch  # heavy; only here

    path = _existing(path, "feature file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputFileError(path, f"not a loadable PyTorch bag ({type(exc).__name__}: {_first_line(exc)})") from exc
    if isinstance(obj, dict) and "features" in obj:
        obj = obj["features"]
    if isinstance(obj, torch.Tensor):
        features = obj.detach().float().numpy() if obj.dtype == torch.bfloat16 else obj.detach().numpy()
    elif isinstance(obj, np.ndarray):
        features = obj
    else:
        raise InputFileError(path, f"expected a tensor (N, D), found {type(obj).__name__}")
    coords, attrs = None, {}
    sibling = path.parent.parent / "h5_files" / f"{path.stem}.h5"
    if sibling.exists():
        with contextlib.suppress(InputFileError):
            h5 = read_features(sibling)
            coords, attrs = h5.coords, {**h5.attrs, "coords_from": str(sibling)}
    return _checked_bag(path, features, coords, attrs, "pt")


def read_bag(path: str | Path) -> Bag:
    """Read any bag the project accepts: mambamil/CLAM/TRIDENT feature H5, or a CLAM/TRIDENT ``.pt``.

    Dispatches on the suffix (``.h5``/``.hdf5``, ``.pt``/``.pth``), else on the file's magic bytes.
    """
    path = _existing(path, "feature file")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return read_features(path)
    if suffix in (".pt", ".pth"):
        return read_pt_bag(path)
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        return read_features(path)
    if magic[:2] == b"PK" or magic[:1] == b"\x80":
        return read_pt_bag(path)
    raise InputFileError(path, "neither an HDF5 nor a PyTorch file: cannot read it as a feature bag")


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, f"{what} not found")
    if path.is_dir():
        raise InputFileError(path, f"is a directory, not a {what}")
    if path.stat().st_size == 0:
        raise InputFileError(path, f"{what} is empty (0 bytes)")
    return path


def _checked_bag(
    path: Path, features: np.ndarray, coords: np.ndarray | None, attrs: dict[str, Any], source: str
) -> Bag:
    if features.ndim == 3 and features.shape[0] == 1:  # (1, N, D) as some pipelines save it
        features = features[0]
    if features.ndim != 2:
        raise InputFileError(path, f"'features' has shape {features.shape}, expected (N, D)")
    if coords is not None:
        if coords.ndim == 3 and coords.shape[0] == 1:
            coords = coords[0]
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise InputFileError(path, f"'coords' has shape {coords.shape}, expected (N, 2)")
        if len(coords) != len(features):
            raise InputFileError(path, f"{len(features)} feature rows but {len(coords)} coords")
        coords = coords.astype(np.int64, copy=False)
    check_bag_values(path, features)
    return Bag(features=features, coords=coords, attrs=attrs, source=source, path=path)


def _row_list(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", … ({len(rows)} rows)" if len(rows) > limit else "")


def check_bag_values(path: str | Path, features: np.ndarray) -> None:
    """Refuse a bag that would make a meaningless prediction: no rows, non-finite values (NaN/inf; the error
    names the first bad rows) or all zeros. Every bag reader calls this, so train, evaluate, predict and
    heatmap never see such a bag."""
    if features.shape[0] == 0:
        raise InputFileError(path, "empty bag: 0 patches (the slide yielded no patches; exclude it or re-tile)")
    finite = np.isfinite(features)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        kinds = sorted({"NaN" if np.isnan(v) else "inf" for v in features[~finite][:1000].astype(np.float64)})
        raise InputFileError(
            path,
            f"non-finite features ({'/'.join(kinds)}) in {len(bad_rows)} of {features.shape[0]} rows, "
            f"first rows {_row_list(bad_rows)}",
        )
    if not features.any():
        raise InputFileError(path, f"all {features.shape[0]} feature rows are zero (a broken extraction)")


def _numpy_safe_globals() -> list[Any]:
    """Globals that numpy arrays pickled by ``torch.save`` need under ``weights_only=True``."""
    out: list[Any] = [np.ndarray, np.dtype]
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    out.append(_reconstruct)
    out += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int64")]
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
