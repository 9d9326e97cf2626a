"""H5 layouts: the one place that writes and reads the pipeline's HDF5 files (every dataset and attribute, and
how CLAM and TRIDENT read them: docs/h5.md).

- coordinates file (tile stage), ``tiles/<slide_id>.h5``: ``/coords`` int64 (N, 2), level-0 top-left (x, y) of
  each patch in row-major grid order; ``/tissue_fraction`` float32 (N,).
- feature file (features stage), ``features/<encoder_tag>/<slide_id>.h5``: root ``format = "mambamil.features"``,
  ``format_version``; ``/features`` float32 or float16 (N, D), row i belongs to ``coords[i]``; ``/coords`` the
  tile stage's, unchanged.
- QC stubs (:mod:`mambamil.qc`): root attributes only (:func:`write_root_attrs`, :func:`read_root_attrs`).

:class:`CoordsAttrs` and :class:`FeatureAttrs` are the attribute lists as typed records; their ``to_attrs`` and
``from_attrs`` are the only code that knows the names on disk (unnamed attributes are kept in ``extra``).
:func:`read_bag` also reads CLAM and TRIDENT feature files and CLAM ``.pt`` bags. Every reader refuses a QC stub,
and every bag reader refuses empty, non-finite and all-zero bags (:func:`check_bag_values`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import h5py
import numpy as np

from mambamil import __version__
from mambamil.errors import InputFileError
from mambamil.fileio import atomic_output
from mambamil.qc import refuse_stub


# -- attribute records ------------------------------------------------------------------------------------
class _Attrs:
    """A dataclass whose fields are the attributes of one dataset, named as on disk (docs/h5.md).

    Every field is optional (foreign CLAM/TRIDENT files carry few or none); ``REQUIRED`` names those a mambamil
    file must have. Attributes without a field are kept in ``extra`` so nothing read is lost when written again.
    """

    DATASET: ClassVar[str]
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    extra: dict[str, Any]

    def to_attrs(self) -> dict[str, Any]:
        """The attributes to write: ``extra`` and every field that is set (``None`` is not written)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}  # type: ignore[arg-type]
        return {**self.extra, **{k: v for k, v in values.items() if v is not None}}

    @classmethod
    def from_attrs(cls, mapping: Mapping[str, Any], path: str | Path, strict: bool = True) -> Self:
        """The record of the attributes ``mapping`` (as h5py gives them) read from ``path``; with ``strict``, an
        :class:`InputFileError` naming the file when one of ``REQUIRED`` is missing."""
        values = {k: _attr_value(v) for k, v in mapping.items()}
        missing = [k for k in cls.REQUIRED if k not in values] if strict else []
        if missing:
            raise InputFileError(path, f"'{cls.DATASET}' lacks attributes {missing}")
        names = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
        return cls(**known, extra={k: v for k, v in values.items() if k not in names})


@dataclass(frozen=True)
class CoordsAttrs(_Attrs):
    """The attributes of a coordinates file's ``coords`` (copied unchanged onto a feature file's ``coords``)."""

    DATASET: ClassVar[str] = "coords"
    REQUIRED: ClassVar[tuple[str, ...]] = ("patch_size", "target_mpp", "patch_size_level0")
    target_mpp: float | None = None
    patch_size: int | None = None  # px at target_mpp (CLAM, TRIDENT: px at patch_level)
    patch_size_level0: float | None = None
    slide_mpp: float | None = None
    mpp_source: str | None = None
    level0_dim: tuple[int, int] | None = None
    patch_level: int | None = None
    downsample: tuple[float, float] | None = None
    level_dim: tuple[int, int] | None = None
    downsampled_level_dim: tuple[int, int] | None = None
    overlap: float | None = None
    step_level0: float | None = None
    tissue_threshold: float | None = None
    name: str | None = None
    slide_path: str | None = None
    mambamil_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureAttrs(_Attrs):
    """The attributes of a feature file's ``features`` dataset: provenance of the embeddings."""

    DATASET: ClassVar[str] = "features"

    encoder: str | None = None
    encoder_tag: str | None = None
    encoder_kwargs: str | None = None  # JSON
    feature_dim: int | None = None
    weights: str | None = None  # "random" | "hub" | "checkpoint"
    weights_path: str | None = None
    weights_sha256: str | None = None
    state_dict_sha256: str | None = None
    random_weights: bool | None = None
    warning: str | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str | None = None
    precision: str | None = None
    device: str | None = None
    storage_dtype: str | None = None
    slide_id: str | None = None
    target_mpp: float | None = None
    patch_size: int | None = None
    patch_size_level0: float | None = None
    read_size_level0: float | None = None
    slide_mpp: float | None = None
    coords_file: str | None = None
    settings_json: str | None = None
    mambamil_version: str | None = None
    torch_version: str | None = None
    timm_version: str | None = None
    preset: str | None = None  # the encoder preset ("" for timm:/registered encoders; absent in older files)
    output: str | None = None  # output recipe: cls | cls+mean | mean | pooled | projection | attn_pool
    interpolation: str | None = None  # resize interpolation: area | bilinear | bicubic
    crop_pct: float | None = None  # < 1: resized to input/crop_pct and centre-cropped
    encoder_mpp: float | None = None  # µm/px the preset was trained at
    stain_norm: str | None = None  # none | macenko | reinhard (absent in older files: none)
    stain_reference: str | None = None
    stain_reference_sha256: str | None = None
    stain_fit: str | None = None  # JSON
    stain_fallbacks: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _write_attrs(ds: h5py.Dataset, record: _Attrs | None) -> None:
    for key, value in (record.to_attrs() if record is not None else {}).items():
        ds.attrs[key] = _clean_attr(value)


# -- coordinates ------------------------------------------------------------------------------------------
@dataclass
class CoordsFile:
    """The content of a tile-stage coordinates file."""

    coords: np.ndarray  # (N, 2) int64 level-0 (x, y)
    meta: CoordsAttrs
    tissue_fraction: np.ndarray | None = None

    @property
    def patch_size(self) -> int:
        return int(self.meta.patch_size)  # type: ignore[arg-type]

    @property
    def target_mpp(self) -> float:
        return float(self.meta.target_mpp)  # type: ignore[arg-type]

    @property
    def patch_size_level0(self) -> float:
        return float(self.meta.patch_size_level0)  # type: ignore[arg-type]


def _clean_attr(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return np.asarray(value)
    return value


def write_coords(path: str | Path, coords: np.ndarray, meta: CoordsAttrs, tissue_fraction: np.ndarray) -> None:
    """Write a coordinates file atomically (``mambamil_version`` set to this version)."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _write_attrs(f.create_dataset("coords", data=coords), replace(meta, mambamil_version=__version__))
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
            attrs = dict(ds.attrs)
            tissue = np.asarray(f["tissue_fraction"][()]) if "tissue_fraction" in f else None
    except OSError as exc:
        raise InputFileError(path, f"not a readable HDF5 file ({exc})") from exc
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputFileError(path, f"'coords' has shape {coords.shape}, expected (N, 2)")
    return CoordsFile(coords=coords, meta=CoordsAttrs.from_attrs(attrs, path), tissue_fraction=tissue)


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_coords_attrs(path: str | Path) -> CoordsAttrs | None:
    """The ``coords`` attributes of a coordinates or feature file, without reading the coordinates (None when it
    has no ``coords``); the caller has checked the file exists and is not a QC stub."""
    with h5py.File(path, "r") as f:
        return CoordsAttrs.from_attrs(f["coords"].attrs, path, strict=False) if "coords" in f else None


# -- QC stubs: a tiny HDF5 file of root attributes (what they mean: mambamil.qc) --------------------------
def write_root_attrs(path: str | Path, attrs: Mapping[str, Any]) -> None:
    """Write an HDF5 file holding only the root attributes ``attrs`` (atomically)."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)


def read_root_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of an HDF5 file (strings decoded, numpy values as Python ones); OSError if unreadable."""
    with h5py.File(path, "r") as f:
        return {k: _attr_value(v) for k, v in f.attrs.items()}


# -- features ---------------------------------------------------------------------------------------------
FEATURES_FORMAT = "mambamil.features"
FEATURES_FORMAT_VERSION = 1
#: Attributes by which a foreign feature file is recognised as TRIDENT's.
TRIDENT_ATTRS = frozenset({"savetodir", "target_magnification", "level0_magnification"})


@dataclass
class Bag:
    """A bag of patch embeddings: ``features`` (N, D), level-0 ``coords`` (N, 2) or None when unknown, and the
    attributes of either dataset (None when the file has none, as CLAM's)."""

    features: np.ndarray
    coords: np.ndarray | None
    coords_meta: CoordsAttrs | None
    feature_meta: FeatureAttrs | None
    source: str  # "mambamil" | "clam" | "trident" | "pt"
    path: Path | None = None
    coords_from: Path | None = None  # a ``.pt`` bag's coordinates file (CLAM's sibling ``h5_files/``)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    feature_meta: FeatureAttrs,
    coords_meta: CoordsAttrs | None = None,
) -> None:
    """Write a feature file atomically (layout in this module's docstring; ``mambamil_version`` of ``features``
    set to this version, ``coords_meta`` written unchanged)."""
    features = np.asarray(features)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or features.shape[0] != coords.shape[0]:
        raise ValueError(f"features {features.shape} and coords {coords.shape} do not pair up")
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FEATURES_FORMAT
        f.attrs["format_version"] = FEATURES_FORMAT_VERSION
        _write_attrs(f.create_dataset("features", data=features), replace(feature_meta, mambamil_version=__version__))
        _write_attrs(f.create_dataset("coords", data=coords), coords_meta)


def read_feature_attrs(path: str | Path) -> tuple[FeatureAttrs, int] | None:
    """The ``features`` attributes and row count of a mambamil feature file, or None if it is not one."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FEATURES_FORMAT or "features" not in f:
                return None
            return FeatureAttrs.from_attrs(f["features"].attrs, path), int(f["features"].shape[0])
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
            features = np.asarray(f["features"][()])
            feature_attrs = dict(f["features"].attrs)
            coords = np.asarray(f["coords"][()]) if "coords" in f else None
            coords_attrs = dict(f["coords"].attrs) if "coords" in f else {}
            mambamil = f.attrs.get("format") == FEATURES_FORMAT
    except OSError as exc:
        raise InputFileError(path, f"not a readable HDF5 file ({exc})") from exc
    if mambamil:
        source = "mambamil"
    elif TRIDENT_ATTRS & (feature_attrs.keys() | coords_attrs.keys()):
        source = "trident"
    else:
        source = "clam"
    coords_meta = CoordsAttrs.from_attrs(coords_attrs, path, strict=False) if coords_attrs else None
    feature_meta = FeatureAttrs.from_attrs(feature_attrs, path, strict=False) if feature_attrs else None
    return _checked_bag(path, features, coords, coords_meta, feature_meta, source)


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
    sibling = path.parent.parent / "h5_files" / f"{path.stem}.h5"
    h5 = None
    if sibling.exists():
        with contextlib.suppress(InputFileError):
            h5 = read_features(sibling)
    if h5 is None:
        return _checked_bag(path, features, None, None, None, "pt")
    bag = _checked_bag(path, features, h5.coords, h5.coords_meta, h5.feature_meta, "pt")
    bag.coords_from = sibling
    return bag


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
    path: Path,
    features: np.ndarray,
    coords: np.ndarray | None,
    coords_meta: CoordsAttrs | None,
    feature_meta: FeatureAttrs | None,
    source: str,
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
    return Bag(features, coords, coords_meta, feature_meta, source, path)


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


# -- which encoder made a bag ---------------------------------------------------------------------------------
#: Feature attributes that identify the encoder behind a bag: name, options, preset recipe, preprocessing and
#: the loaded weights. Files written before some of them existed are compared on the ones both have.
ENCODER_IDENTITY = (
    "encoder",
    "encoder_kwargs",
    "preset",
    "output",
    "mean",
    "std",
    "input_size",
    "interpolation",
    "crop_pct",
    "state_dict_sha256",
    "stain_norm",
    "stain_reference_sha256",
)


def encoder_identity(meta: FeatureAttrs | Mapping[str, Any] | None) -> dict[str, Any]:
    """The :data:`ENCODER_IDENTITY` attributes present in ``meta`` (a file's record or a checkpoint's stored
    ``feature_attrs``), normalised for comparison; empty for bags that record no encoder (CLAM, TRIDENT)."""
    if meta is None:
        return {}
    values = meta.to_attrs() if isinstance(meta, _Attrs) else dict(meta)
    out: dict[str, Any] = {}
    for key in ENCODER_IDENTITY:
        value = values.get(key)
        if value is None or (key == "preset" and value == ""):
            continue
        if isinstance(value, (list, tuple, np.ndarray)):
            value = tuple(round(float(v), 6) for v in np.asarray(value).reshape(-1))
        elif isinstance(value, float):
            value = round(value, 6)
        out[key] = value
    if "encoder" in out:
        out.setdefault("stain_norm", "none")  # written before stain normalisation existed: unnormalised
    return out if "encoder" in out else {}


def describe_encoder(identity: Mapping[str, Any]) -> str:
    """One phrase naming an encoder: ``uni_v2 [cls] (weights 1a2b3c4d5e6f)``."""
    text = str(identity.get("encoder", "unknown encoder"))
    if identity.get("output"):
        text += f" [{identity['output']}]"
    if identity.get("state_dict_sha256"):
        text += f" (weights {str(identity['state_dict_sha256'])[:12]})"
    if identity.get("stain_norm", "none") != "none":
        text += f" + {identity['stain_norm']} stain normalisation"
    return text


def encoder_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """None when two encoder identities agree on every attribute both record, else the first that differs."""
    for key in ENCODER_IDENTITY:
        if key in a and key in b and a[key] != b[key]:
            return f"{key} {a[key]} vs {b[key]}"
    return None


def check_one_encoder(feature_files: Mapping[str, str | Path]) -> dict[str, Any]:
    """The encoder identity shared by every mambamil feature file of a study; an :class:`InputFileError` naming
    both encoders (and a file of each) when two differ. Foreign bags that record no encoder are not compared."""
    first: tuple[Path, dict[str, Any]] | None = None
    for path in map(Path, feature_files.values()):
        found = read_feature_attrs(path)
        identity = encoder_identity(found[0]) if found else {}
        if not identity:
            continue
        if first is None:
            first = (path, identity)
            continue
        diff = encoder_difference(first[1], identity)
        if diff:
            raise InputFileError(
                path,
                f"features made with {describe_encoder(identity)}, but {first[0]} with "
                f"{describe_encoder(first[1])} ({diff}): a study cannot mix two encoders",
            )
    return first[1] if first else {}
