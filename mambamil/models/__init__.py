"""MIL aggregators: a timm-style registry, ``create_model`` and checkpoint save/load.

>>> model = create_model("mambamil", in_dim=1024, n_classes=2, layer="srmamba", rate=10)
>>> out = model(torch.randn(500, 1024))   # {"logits", "attention", "attention_raw"}

The registry and factory live in :mod:`mambamil.models.registry`; each family registers its entry functions
beside its code (:mod:`mambamil.models.mambamil`, :mod:`mambamil.models.baselines`); checkpoint IO and the
import of original MambaMIL state dicts live in :mod:`mambamil.models.checkpoint`.
"""

from __future__ import annotations

# Importing the families registers their models.
from mambamil.models import baselines, mambamil, mambamil2d  # noqa: F401
from mambamil.models.checkpoint import (
    ORIGINAL_OPTIONS,
    ORIGINAL_SOURCE,
    convert_original,
    load_checkpoint,
    original_metadata,
    save_checkpoint,
)
from mambamil.models.common import InstanceCoords, MILModel, call_model, survival_head
from mambamil.models.registry import create_model, list_models, register_model

__all__ = [
    "ORIGINAL_OPTIONS",
    "ORIGINAL_SOURCE",
    "InstanceCoords",
    "MILModel",
    "call_model",
    "convert_original",
    "create_model",
    "list_models",
    "load_checkpoint",
    "original_metadata",
    "register_model",
    "save_checkpoint",
    "survival_head",
]
