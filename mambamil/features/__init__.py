"""The features stage: patch coordinates → one embedding per patch, per slide.

- :mod:`mambamil.features.presets`: foundation-model presets as data (``uni_v2``, ``virchow2``, … one row each).
- :mod:`mambamil.features.encoders`: the encoder registry (the presets' builders, ``timm:<name>``,
  ``list_encoders``); :mod:`mambamil.features.weights`: their weights (``random`` | ``hub`` | a local checkpoint
  file or hub snapshot folder loaded strictly, SHA-256 recorded).
- :mod:`mambamil.features.stain`: optional Macenko / Reinhard stain normalisation (torchstain) before the encoder.
- :mod:`mambamil.features.datapath`: block reads, the one resize on the device; :mod:`mambamil.features.many_slides`:
  many slides in one process.
- :mod:`mambamil.features.extract`: batched, multi-worker extraction of one slide into a feature H5
  (layout in :mod:`mambamil.h5layout`).

This module stays light (no torch import) so the Snakefile can name output folders with :func:`encoder_tag`.
"""

from __future__ import annotations

import re

RANDOM = "random"
HUB = "hub"


def encoder_tag(encoder: str, weights: str | None = None, tag: str | None = None) -> str:
    """The folder name for an encoder's features: ``results/features/<tag>/<slide_id>.h5``.

    ``tag`` wins when given; otherwise the encoder name made file-safe (``timm:resnet18`` → ``timm-resnet18``),
    with ``-random`` appended for random weights so such features never sit beside real ones.
    """
    if tag:
        return tag
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder).strip("-") or "encoder"
    return f"{base}-random" if weights == RANDOM else base
