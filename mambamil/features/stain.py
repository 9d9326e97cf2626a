"""Stain normalisation before the encoder (optional): torchstain's Macenko or Reinhard, torch backend, on the device.

The normaliser is fitted once to a reference tile: the shipped one (:data:`DEFAULT_REFERENCE`, a 256-px tile of
the demo generator's synthetic H&E, made by :func:`render_default_reference`) or a tile the user names. The method,
the reference (path and SHA-256) and the fitted stain parameters (Macenko: the H&E stain matrix and the 99th
percentile concentrations; Reinhard: the LAB means and standard deviations) are recorded in the feature file
(:meth:`StainNormaliser.attrs`); bags normalised differently are refused together like bags of another encoder
(:data:`mambamil.h5layout.ENCODER_IDENTITY`).

A tile whose tissue-coloured pixels (optical density ≥ ``beta`` in every channel, torchstain's own filter) are
fewer than :data:`MIN_TISSUE_FRACTION`, or whose normalised pixels are not finite, keeps its pixels unnormalised
and is counted (:attr:`StainNormaliser.fallbacks`): never a NaN feature.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mambamil.errors import InputFileError, MambamilError

log = logging.getLogger(__name__)

STAIN_METHODS = ("none", "macenko", "reinhard")
#: The shipped reference tile (256 × 256 px RGB PNG, :func:`render_default_reference`).
DEFAULT_REFERENCE = Path(__file__).with_name("data") / "stain_reference.png"
#: Least fraction of a tile's pixels with tissue colour (optical density ≥ beta in every channel) to fit it.
MIN_TISSUE_FRACTION = 0.05
#: The stain attributes of a feature file made without stain normalisation.
NO_STAIN_ATTRS = {"stain_norm": "none", "stain_reference": "", "stain_reference_sha256": "", "stain_fit": "",
                  "stain_fallbacks": 0}  # fmt: skip
#: torchstain's defaults: transmitted light intensity and transparency threshold (optical density).
IO, BETA = 240, 0.15


def render_default_reference(size: int = 256) -> np.ndarray:
    """The shipped reference tile: the ``size``-px square of most tissue in a small positive demo slide
    (:mod:`mambamil.demo`, fixed seed), uint8 RGB. Regenerates :data:`DEFAULT_REFERENCE`."""
    from mambamil import demo

    spec = next(s for s in demo.cohort_specs(2, seed=0, size=(1024, 1024)) if s.positive)
    rgb, _, _ = demo.render_slide(spec)
    od = _optical_density(torch.from_numpy(rgb).permute(2, 0, 1).float())
    tissue = (od >= BETA).all(dim=0).float()[None, None]
    counts = torch.nn.functional.avg_pool2d(tissue, size, stride=size // 4)[0, 0]
    y, x = divmod(int(torch.argmax(counts)), counts.shape[1])
    y, x = y * (size // 4), x * (size // 4)
    return np.ascontiguousarray(rgb[y : y + size, x : x + size])


def _optical_density(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB on 0…255 → optical density as torchstain computes it."""
    return -torch.log((x + 1) / IO)


def tissue_fraction(x: torch.Tensor) -> float:
    """Fraction of a (3, H, W) tile's pixels that torchstain's Macenko keeps (OD ≥ beta in every channel)."""
    return float((_optical_density(x) >= BETA).all(dim=0).float().mean())


def reference_path(reference: str | Path | None) -> Path:
    """The reference tile a ``features.stain_reference`` setting names: the file given, else the shipped one."""
    return Path(reference) if reference else DEFAULT_REFERENCE


def read_reference(path: str | Path) -> tuple[np.ndarray, str]:
    """A reference tile as uint8 RGB and its file's SHA-256; a one-line error naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError as exc:
        raise InputFileError(path, "stain reference tile not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputFileError(path, f"stain reference is not a readable image ({type(exc).__name__})") from exc
    return rgb, hashlib.sha256(data).hexdigest()


class StainNormaliser:
    """torchstain ``method`` (``macenko`` | ``reinhard``) fitted to the reference tile on ``device``; called on a
    float (B, 3, H, W) batch on 0…255 (rounded uint8 levels), it returns the batch normalised, tile by tile."""

    def __init__(self, method: str, reference: str | Path | None, device: torch.device) -> None:
        import torchstain

        if method not in STAIN_METHODS[1:]:
            raise MambamilError(f"features.stain_norm must be one of {', '.join(STAIN_METHODS)}, got {method!r}")
        self.method = method
        self.reference = reference_path(reference)
        rgb, self.reference_sha256 = read_reference(self.reference)
        target = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().to(device)
        if tissue_fraction(target) < MIN_TISSUE_FRACTION:
            raise InputFileError(self.reference, "stain reference has too little tissue colour to fit")
        if method == "macenko":
            self.normaliser = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        else:
            self.normaliser = torchstain.normalizers.ReinhardNormalizer(backend="torch")
        self.device = device
        try:
            self.normaliser.fit(target)
        except RuntimeError as exc:  # torchstain keeps some constants on the CPU (Reinhard's colour matrices)
            if device.type == "cpu":
                raise
            log.warning("torchstain %s does not run on %s (%s); it runs on the CPU", method, device, exc)
            self.device = torch.device("cpu")
            self.normaliser.fit(target.cpu())
        self.fallbacks = 0
        self.tiles = 0

    def fitted(self) -> dict[str, Any]:
        """The fitted stain parameters (what the reference makes of the tiles)."""
        n = self.normaliser
        if self.method == "macenko":
            values = {"stain_matrix_he": n.HERef, "max_concentration": n.maxCRef}
        else:
            values = {"lab_means": n.target_means, "lab_stds": n.target_stds}
        return {k: np.round(torch.as_tensor(v).double().cpu().numpy(), 6).tolist() for k, v in values.items()}

    def attrs(self) -> dict[str, Any]:
        """The feature file's stain attributes (:class:`~mambamil.h5layout.FeatureAttrs`)."""
        return {
            "stain_norm": self.method,
            "stain_reference": str(self.reference.resolve()),
            "stain_reference_sha256": self.reference_sha256,
            "stain_fit": json.dumps(self.fitted(), sort_keys=True),
            "stain_fallbacks": self.fallbacks,
        }

    def normalise_tile(self, x: torch.Tensor) -> torch.Tensor | None:
        """One (3, H, W) tile normalised, as float on 0…255; None when it cannot be fitted (too little tissue
        colour, or a non-finite result)."""
        if tissue_fraction(x) < MIN_TISSUE_FRACTION:
            return None
        tile = x.to(self.device)
        try:
            if self.method == "macenko":
                out, _, _ = self.normaliser.normalize(I=tile, Io=IO, beta=BETA, stains=False)
            else:
                out = self.normaliser.normalize(I=tile)
        except (RuntimeError, IndexError, ValueError):  # a degenerate fit (torch.linalg errors are RuntimeErrors)
            return None
        out = out.permute(2, 0, 1).float().to(x.device)
        return out if bool(torch.isfinite(out).all()) else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = batch.clone()
        for i in range(batch.shape[0]):
            tile = self.normalise_tile(batch[i])
            self.tiles += 1
            if tile is None:
                self.fallbacks += 1
            else:
                out[i] = tile
        return out

    def report(self, slide_id: str) -> None:
        """Log how many tiles kept their own pixels (too little tissue colour to fit)."""
        if self.fallbacks:
            log.warning(
                "%s: %d of %d tiles had too little tissue colour for %s stain normalisation; kept unnormalised",
                slide_id,
                self.fallbacks,
                self.tiles,
                self.method,
            )
