"""Checkpoint IO for the MIL aggregators, and the import of original (isyangshu/MambaMIL) state dicts.

Checkpoints are ``{"model": name, "config": model.config, "state_dict": ..., **extra}``;
:func:`load_checkpoint` also accepts a raw state dict saved by isyangshu/MambaMIL, given the metadata its
weights cannot tell (:func:`original_metadata`); :func:`convert_original` stores it once in a project checkpoint.
Every problem with a checkpoint file is a :class:`~mambamil.errors.CheckpointError` that names the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambamil.errors import CheckpointError
from mambamil.fileio import atomic_output
from mambamil.models.common import TASKS, MILModel
from mambamil.models.registry import create_model
from mambamil.models.sr_mamba import LAYERS, original_config

__all__ = [
    "ORIGINAL_OPTIONS",
    "ORIGINAL_SOURCE",
    "convert_original",
    "load_checkpoint",
    "original_metadata",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


def save_checkpoint(path: str | os.PathLike, model: MILModel, extra: dict | None = None) -> Path:
    """Atomically save {"model", "config", "state_dict", **extra} (:func:`mambamil.fileio.atomic_output`)."""
    path = Path(path)
    extra = dict(extra or {})
    clash = {"model", "config", "state_dict"} & set(extra)
    if clash:
        raise ValueError(f"save_checkpoint: extra may not contain reserved keys {sorted(clash)}")
    payload = {
        "model": model.config["name"],
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"checkpoint does not match {type(model).__name__}: "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}",
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise CheckpointError(
            path,
            f"checkpoint shapes differ for {bad[:5]}: "
            + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:3]),
        )
    model.load_state_dict(state)


#: Where original (isyangshu/MambaMIL) checkpoints come from, recorded in converted checkpoints.
ORIGINAL_SOURCE = "isyangshu/MambaMIL"

#: What an original state dict cannot tell, and the CLI option that gives it.
ORIGINAL_OPTIONS = {
    "layer": "--layer",
    "rate": "--rate",
    "task": "--task",
    "classes": "--classes",
    "n_bins": "--n-bins",
}


def original_metadata(path: Path, state: dict[str, torch.Tensor], given: dict[str, Any]) -> tuple[dict, dict]:
    """Model config and checkpoint extras of an original MambaMIL state dict from ``given`` metadata.

    The weights tell in_dim, d_model, n_layers, the number of outputs and whether the mixer has one branch
    (``mamba``) or two (``srmamba`` or ``bimamba``: identical keys and shapes). What they cannot tell (layer,
    rate, task, classes or number of time bins) must be in ``given``; a missing or inconsistent value is a
    :class:`CheckpointError` naming the option to add. Nothing is guessed.
    """
    given = {k: v for k, v in given.items() if v is not None and v != ()}
    inferred = original_config(state)
    task = given.get("task")
    needed = ["layer", "rate", "task"] + (["classes"] if task == "classification" else [])
    needed += ["n_bins"] if task == "survival" else []
    missing = [k for k in needed if k not in given]
    if missing:
        opts = ", ".join(ORIGINAL_OPTIONS[k] for k in missing)
        raise CheckpointError(
            path, f"an original MambaMIL state dict carries no {'/'.join(missing)}; add {opts} (never guessed)"
        )
    if task not in TASKS:
        raise CheckpointError(path, f"--task must be classification or survival, got {task!r}")
    layer = str(given["layer"]).lower()
    two_branch = inferred["layer"] == "srmamba"
    if layer not in LAYERS or (layer == "mamba") == two_branch:
        family = "two-branch (srmamba or bimamba)" if two_branch else "one-branch (mamba)"
        raise CheckpointError(path, f"--layer {layer} does not fit the weights: their mixer is {family}")
    n_out = inferred["n_classes"]
    classes = [str(c) for c in given.get("classes", ())]
    if task == "classification" and len(classes) != n_out:
        raise CheckpointError(path, f"--classes gives {len(classes)} classes but the classifier has {n_out} outputs")
    if task == "survival" and int(given["n_bins"]) != n_out:
        raise CheckpointError(path, f"--n-bins {given['n_bins']} but the classifier has {n_out} outputs")
    config = {**inferred, "layer": layer, "rate": int(given["rate"]), "task": task, "dropout": 0.25}
    extra = {
        "source": ORIGINAL_SOURCE,
        "original_file": path.name,
        "task": task,
        "task_kind": task,
        "classes": classes,
        "in_dim": inferred["in_dim"],
        "order": {"method": "stored", "seed": 0},
        "precision": "fp32",
        "feature_scaler": None,
    }
    return config, extra


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    original: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[MILModel, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`, or an original MambaMIL state dict.

    An original (isyangshu/MambaMIL) state dict needs ``original`` metadata: layer, rate, task, and classes
    (classification) or n_bins (survival); see :func:`original_metadata`. ``overrides`` replace entries of a
    project checkpoint's model config. Returns ``(model in eval mode, extra)``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(path, f"not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"expected a dict checkpoint, got {type(obj).__name__}")
    if "state_dict" in obj and "config" in obj:
        config = {**obj["config"], **overrides}
        name = config.pop("name", obj.get("model"))
        try:
            model = create_model(name, **config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(path, f"cannot rebuild its model {name!r}: {e}") from None
        _load_state(model, obj["state_dict"], path)
        extra = {k: v for k, v in obj.items() if k not in ("model", "config", "state_dict")}
        if original and any(v is not None and v != () for v in original.values()):
            log.warning("%s: a project checkpoint carries its own metadata; ignoring %s", path, sorted(original))
    else:
        state = obj.get("model_state_dict", obj.get("state_dict", obj))
        state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if "_fc1.0.weight" not in state or "classifier.weight" not in state:
            raise CheckpointError(
                path,
                "neither a mambamil checkpoint nor an original MambaMIL state dict "
                f"(no '_fc1.0.weight'/'classifier.weight'; first keys {sorted(state)[:5]})",
            )
        config, extra = original_metadata(path, state, original or {})
        model = create_model("mambamil", **config)
        _load_state(model, state, path)
    model.eval()
    return model, extra


def convert_original(src: str | os.PathLike, out: str | os.PathLike, **metadata: Any) -> tuple[MILModel, dict]:
    """Convert an original MambaMIL state dict into a project checkpoint carrying ``metadata`` (layer, rate, task,
    classes or n_bins), so later loads need no options. Returns the model and the stored extras."""
    model, extra = load_checkpoint(src, original=metadata)
    save_checkpoint(out, model, extra)
    return model, extra
