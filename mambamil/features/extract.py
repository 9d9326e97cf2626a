"""Feature extraction for one slide: the tile stage's coordinates → ``features`` (N, D) in an H5 file.

Reading: :mod:`mambamil.features.datapath`. DataLoader workers (each opens its own slide handle) read blocks of
neighbouring patches with one OpenSlide request each and cut them; each patch is the level-0 square
``patch_size × target_mpp`` µm wide at the stored coordinate, read from the pyramid level at or finer than the
encoder's input. The main process sends uint8 patches to the device through pinned buffers, resizes them there
once, with the encoder's interpolation, to its pre-crop input size, crops, optionally normalises the stain
(:mod:`mambamil.features.stain`), normalises,
runs the model in ``torch.inference_mode`` with channels-last memory and bf16/fp16 autocast on CUDA, and writes
the file atomically.

A rerun skips a slide whose output exists with the same ``settings_json`` (encoder, weights and their hash,
resolution, coordinates' hash, precision, storage dtype).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mambamil.config import settings_from_config
from mambamil.device import encoder_autocast, resolve_device, resolve_encoder_precision
from mambamil.errors import InputFileError
from mambamil.features import RANDOM, encoder_tag
from mambamil.features.datapath import (
    BlockDataset,
    DeviceResize,
    StageTimes,
    default_num_workers,
    embed_blocks,
    make_block_loader,
    plan_blocks,
    plan_reads,
    pre_crop_size,
)
from mambamil.features.encoders import (
    RANDOM_SEED,
    Encoder,
    TimmOverrides,
    check_tile_resolution,
    create_encoder,
    fast_model,
    file_sha256,
    resolve_weights_file,
    weights_kind,
)
from mambamil.features.presets import PRESETS
from mambamil.features.stain import NO_STAIN_ATTRS, StainNormaliser, read_reference, reference_path
from mambamil.h5layout import FEATURES_FORMAT_VERSION, CoordsFile, read_coords, read_feature_attrs, write_features
from mambamil.slide import Slide, open_slide

log = logging.getLogger(__name__)

#: A patch may overhang the slide's level-0 edge by this many pixels (grid rounding) before it is "outside".
EDGE_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class FeatureSettings:
    """The ``features`` section of the config; defaults live in the schema only (use :meth:`from_config`)."""

    encoder: str
    weights: str | None
    encoder_kwargs: dict[str, Any]
    tag: str | None
    batch_size: int
    num_workers: int | None
    device: str
    precision: str
    fp16_storage: bool
    torch_threads: int | None
    mean: list[float]
    std: list[float]
    input_size: int | None
    interpolation: str | None
    pooling: str | None
    compile: bool
    stain_norm: str
    stain_reference: str | None

    @classmethod
    def from_config(cls, section: dict[str, Any] | None = None, **overrides: Any) -> FeatureSettings:
        """Settings from a (validated) ``features`` config section, then non-None keyword overrides."""
        return settings_from_config(cls, "features", section, **overrides)

    @property
    def encoder_tag(self) -> str:
        return encoder_tag(self.encoder, self.weights, self.tag)


@dataclass
class FeatureResult:
    slide_id: str
    n_patches: int
    dim: int
    seconds: float
    skipped: bool
    output: Path
    profile: StageTimes | None = None

    @property
    def patches_per_s(self) -> float:
        return self.n_patches / self.seconds if self.seconds > 0 else float("nan")


# -- patch reader -----------------------------------------------------------------------------------------
def _guarded(batches: Iterator[dict[str, Any]], slide: Slide) -> Iterator[dict[str, Any]]:
    """Items; a reader process that dies (killed, out of memory) becomes a one-line fault (never an exclusion)."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            raise slide.fault(
                f"a patch reader process died ({first}): killed or out of memory, not a bad slide; retry, with more "
                "memory (resources mem_mb) or fewer readers (features.num_workers)"
            ) from exc
        yield batch


# -- checks -----------------------------------------------------------------------------------------------
def _check_coords(slide: Slide, cf: CoordsFile, coords_path: Path, size0: float) -> None:
    dims = cf.meta.level0_dim
    if dims is not None and tuple(int(v) for v in dims) != tuple(slide.dimensions):
        raise slide.error(
            f"coords file {coords_path} was made for a {dims[0]}x{dims[1]} px slide, this one is "
            f"{slide.dimensions[0]}x{slide.dimensions[1]} px (wrong slide?)"
        )
    w0, h0 = slide.dimensions
    x, y = cf.coords[:, 0], cf.coords[:, 1]
    tol = EDGE_TOLERANCE_PX
    bad = (x < -tol) | (y < -tol) | (x + size0 > w0 + tol) | (y + size0 > h0 + tol)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise slide.error(
            f"{int(bad.sum())} of {len(bad)} patches in {coords_path} lie outside the {w0}x{h0} px slide "
            f"(first: #{i} at ({x[i]}, {y[i]}), {size0:.1f} px wide)"
        )


def _coords_sha256(coords: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(coords, dtype=np.int64).tobytes()).hexdigest()


def settings_fingerprint(settings: FeatureSettings, cf: CoordsFile, weights_sha: str, precision: str) -> dict[str, Any]:
    """What determines the numbers in a feature file; a rerun with the same fingerprint is skipped."""
    kind = weights_kind(settings.weights)
    return {
        "format_version": FEATURES_FORMAT_VERSION,
        "encoder": settings.encoder,
        "encoder_kwargs": settings.encoder_kwargs,
        "weights": kind,
        "weights_sha256": weights_sha,
        "random_seed": RANDOM_SEED if kind == RANDOM else None,
        "target_mpp": cf.target_mpp,
        "patch_size": cf.patch_size,
        "slide_mpp": cf.meta.slide_mpp,
        "coords_sha256": _coords_sha256(cf.coords),
        "precision": precision,
        "fp16_storage": settings.fp16_storage,
        **({"timm_overrides": vars(o)} if (o := TimmOverrides.of(settings)).any else {}),
        **(
            {"stain_norm": settings.stain_norm, "stain_reference_sha256": _reference_sha(settings)}
            if _stained(settings)
            else {}
        ),
    }


def _stained(settings: FeatureSettings) -> bool:
    return settings.stain_norm not in (None, "none")


def _reference_sha(settings: FeatureSettings) -> str:
    return read_reference(reference_path(settings.stain_reference))[1]


# -- one slide --------------------------------------------------------------------------------------------
def extract_slide(
    slide_path: str | Path,
    coords_path: str | Path,
    out_path: str | Path,
    settings: FeatureSettings | None = None,
    slide_id: str | None = None,
    progress: bool = True,
    force: bool = False,
    encoder: Encoder | None = None,
    profile: bool = False,
) -> FeatureResult:
    """Embed every patch of one slide and write ``out_path`` atomically (layout in :mod:`mambamil.h5layout`).

    Skips the work when ``out_path`` exists with the same settings fingerprint (unless ``force``). A prebuilt
    ``encoder`` (same name/weights as ``settings``) saves rebuilding it across slides in one process.
    ``profile`` times each stage of the data path into ``FeatureResult.profile``.
    """
    settings = settings or FeatureSettings.from_config()
    start = time.perf_counter()
    coords_path, out_path = Path(coords_path), Path(out_path)
    cf = read_coords(coords_path)
    slide_id = slide_id or str(cf.meta.name or Path(slide_path).stem)
    n = len(cf.coords)
    if n == 0:
        raise InputFileError(coords_path, f"no patches for slide '{slide_id}' (0 coordinates): nothing to embed")
    kind = weights_kind(settings.weights)
    weights_sha = ""
    if kind == "checkpoint":
        ckpt = resolve_weights_file(str(settings.weights), PRESETS.get(settings.encoder))  # a file or hub snapshot
        weights_sha = encoder.weights_sha256 if encoder is not None else file_sha256(ckpt)
    device = resolve_device(settings.device)
    precision = resolve_encoder_precision(settings.precision, device)
    fingerprint = json.dumps(settings_fingerprint(settings, cf, weights_sha, precision), sort_keys=True)

    if out_path.exists() and not force:
        old, n_old = read_feature_attrs(out_path) or (None, 0)
        if old is not None and old.settings_json == fingerprint and n_old == n:
            log.info("%s: %s is up to date (same settings); skipped", slide_id, out_path)
            return FeatureResult(slide_id, n, int(old.feature_dim or 0), 0.0, True, out_path)
        log.info("%s: %s exists with other settings; recomputing", slide_id, out_path)

    if settings.torch_threads:
        torch.set_num_threads(int(settings.torch_threads))
    with open_slide(slide_path, mpp=cf.meta.slide_mpp, slide_id=slide_id) as slide:
        size0 = cf.patch_size * cf.target_mpp / slide.mpp
        _check_coords(slide, cf, coords_path, size0)
        if encoder is None:
            encoder = create_encoder(
                settings.encoder,
                settings.weights,
                checkpoint_sha256=weights_sha or None,
                overrides=TimmOverrides.of(settings),
                **settings.encoder_kwargs,
            )
        check_tile_resolution(encoder, cf.target_mpp, cf.patch_size, slide_id)
        model = fast_model(encoder, device, settings.compile)
        out_dtype = np.dtype(np.float16 if settings.fp16_storage else np.float32)
        times = StageTimes() if profile else None
        stain = StainNormaliser(settings.stain_norm, settings.stain_reference, device) if _stained(settings) else None
        feats, resized = _embed_slide(
            slide, cf.coords, size0, encoder, model, settings, device, precision, out_dtype, times, progress, stain
        )
        t_write = time.perf_counter()
        if stain is not None:
            stain.report(slide_id)
        meta = replace(
            encoder.attrs(),
            **(stain.attrs() if stain is not None else NO_STAIN_ATTRS),
            encoder_tag=settings.encoder_tag,
            resize=resized,
            precision=precision,
            device=device.type,
            storage_dtype=str(out_dtype),
            slide_id=slide_id,
            target_mpp=cf.target_mpp,
            patch_size=cf.patch_size,
            patch_size_level0=cf.patch_size_level0,
            read_size_level0=size0,
            slide_mpp=slide.mpp,
            coords_file=str(coords_path.resolve()),
            settings_json=fingerprint,
            torch_version=str(torch.__version__),
            timm_version=_timm_version(),
        )
        write_features(out_path, feats, cf.coords, meta, cf.meta)
        if times is not None:
            times.main["write"] += time.perf_counter() - t_write
    seconds = time.perf_counter() - start
    if times is not None:
        times.wall = seconds
    log.info(
        "%s: %d patches → %d-d features in %.1f s (%.1f patches/s)", slide_id, n, encoder.dim, seconds, n / seconds
    )
    return FeatureResult(slide_id, n, encoder.dim, seconds, False, out_path, times)


def _embed_slide(
    slide: Slide,
    coords: np.ndarray,
    size0: float,
    encoder: Encoder,
    model: torch.nn.Module,
    settings: FeatureSettings,
    device: torch.device,
    precision: str,
    out_dtype: np.dtype,
    times: StageTimes | None,
    progress: bool,
    stain: StainNormaliser | None = None,
) -> tuple[np.ndarray, str]:
    """Every patch's features as an (N, D) host array, and what the resize did (data path in
    :mod:`mambamil.features.datapath`)."""
    spec = encoder.spec
    plan = plan_reads(slide, size0, pre_crop_size(spec.input_size, spec.crop_pct))
    blocks = plan_blocks(coords, plan.downsample)
    dataset = BlockDataset(str(slide.path), coords, blocks, plan, slide.mpp, slide.slide_id, profile=times is not None)
    workers = default_num_workers() if settings.num_workers is None else settings.num_workers
    workers = 0 if len(blocks) <= 1 else min(workers, len(blocks))  # never start more readers than blocks
    h, w = spec.input_size
    resize = DeviceResize(plan.read_size, (w, h), spec.mean, spec.std, device, spec.interpolation, spec.crop_pct, stain)

    def on_error(i: int, cause: str, fault: bool = True) -> None:
        x, y = coords[i]
        message = f"reading patch {i} at level-0 ({x}, {y}) failed: {cause}"
        raise slide.fault(message) if fault else slide.error(message)

    torch_dtype = torch.float16 if out_dtype == np.float16 else torch.float32
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(coords), unit="patch", desc=slide.slide_id, disable=not progress) as bar,
        ):
            feats = embed_blocks(
                model,
                resize,
                _guarded(iter(make_block_loader(dataset, workers)), slide),
                len(coords),
                encoder.dim,
                settings.batch_size,
                plan,
                device,
                lambda: encoder_autocast(device, precision),
                torch_dtype,
                on_error,
                times,
                bar.update,
            )
            finite = torch.isfinite(feats).all(dim=1)
            if not bool(finite.all()):
                i = int(torch.nonzero(~finite)[0])
                raise slide.error(
                    f"encoder '{encoder.name}' gave non-finite features for {int((~finite).sum())} patches, "
                    f"first #{i} (precision {precision})"
                )
            t0 = time.perf_counter()
            host = feats.cpu().numpy()
            if times is not None:
                times.main["device_to_host"] += time.perf_counter() - t0
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        where = "GPU" if device.type == "cuda" else "host"
        raise slide.fault(
            f"{where} out of memory embedding batches of {settings.batch_size} patches ({encoder.name}, {precision}): "
            f"lower features.batch_size (e.g. --batch-size {max(1, settings.batch_size // 2)}) or free the "
            f"{where} memory, then rerun"
        ) from exc
    finally:
        dataset.close()
    return host, resize.describe()


def _out_of_memory(exc: BaseException) -> bool:
    """A torch allocation that failed: CUDA out of memory, or the CPU allocator's "can't allocate memory"."""
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)


def _timm_version() -> str:
    import timm

    return str(timm.__version__)
