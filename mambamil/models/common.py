"""Pieces shared by every MIL aggregator: bag normalisation, the output dict, the survival head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

TASKS = ("classification", "survival")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    return task


def as_bag(x: Tensor, in_dim: int) -> Tensor:
    """Validate one bag, (N, D) or (1, N, D), and return it as float (1, N, D)."""
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"expected one bag of shape (N, D) or (1, N, D), got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError("empty bag: a bag needs at least one instance")
    if x.shape[2] != in_dim:
        raise ValueError(f"bag feature dim {x.shape[2]} does not match the model's in_dim {in_dim}")
    return x.float()


def survival_head(logits: Tensor) -> dict[str, Tensor]:
    """Discrete-time survival outputs: hazards = sigmoid(logits), S = cumprod(1 - hazards), risk = -sum(S)."""
    hazards = torch.sigmoid(logits)
    S = torch.cumprod(1 - hazards, dim=1)
    return {"hazards": hazards, "S": S, "risk": -torch.sum(S, dim=1)}


def make_output(logits: Tensor, attention_raw: Tensor, attention: Tensor, task: str) -> dict[str, Tensor]:
    """The dict every model returns: logits (1, C), attention / attention_raw (1, N) (+ survival keys)."""
    out = {"logits": logits, "attention": attention, "attention_raw": attention_raw}
    if task == "survival":
        out.update(survival_head(logits))
    return out


def xavier_init(module: nn.Module) -> None:
    """The original MambaMIL/CLAM init: Xavier-normal Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)


class MILModel(nn.Module):
    """Base class: keeps ``in_dim``, ``n_classes``, ``task`` and the ``config`` for create_model; models that read
    the instances' coordinates set ``needs_coords`` (forward(x, coords=InstanceCoords))."""

    model_name = ""
    needs_coords = False

    def __init__(self, in_dim: int, n_classes: int, task: str, **config: Any) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 1:
            raise ValueError(f"in_dim and n_classes must be >= 1, got {in_dim}, {n_classes}")
        self.in_dim, self.n_classes, self.task = int(in_dim), int(n_classes), check_task(task)
        self.config: dict[str, Any] = {
            "name": self.model_name,
            "in_dim": self.in_dim,
            "n_classes": self.n_classes,
            "task": self.task,
            **config,
        }


@dataclass(frozen=True)
class InstanceCoords:
    """Where a bag's instances lie: level-0 coordinates (N, 2), the slide of each instance, and each slide's
    coordinates attributes (:class:`~mambamil.h5layout.CoordsAttrs`, or None); for models with ``needs_coords``."""

    coords: np.ndarray
    slide_ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_slide(cls, coords: np.ndarray, slide_id: str, meta: Any = None) -> InstanceCoords:
        return cls(np.asarray(coords), [slide_id] * len(coords), {slide_id: meta})

    @classmethod
    def concat(cls, parts: list[InstanceCoords]) -> InstanceCoords:
        """The coordinates of bags concatenated in the order of ``parts`` (a patient's slides)."""
        return cls(
            np.concatenate([p.coords for p in parts]),
            [s for p in parts for s in p.slide_ids],
            {k: v for p in parts for k, v in p.meta.items()},
        )


def call_model(model: nn.Module, x: Tensor, coords: InstanceCoords | None = None) -> dict[str, Tensor]:
    """Run a MIL model on one bag: the one place that passes coordinates, to the models that declare
    ``needs_coords`` (and to wrappers that forward them)."""
    if getattr(model, "needs_coords", False):
        return model(x, coords=coords)
    return model(x)
