"""MambaMIL aggregator (Yang et al., MICCAI 2024), with the module names of isyangshu/MambaMIL.

Linear(in_dim, 512) + GELU (+ dropout) -> n_layers x [x + SRMamba(LayerNorm(x))] -> LayerNorm ->
attention pooling (Linear 512->128, Tanh, Linear 128->1, softmax over instances) -> Linear(512, C).

State-dict keys equal the original code's (``_fc1.0.*``, ``layers.{i}.0.*`` (LayerNorm),
``layers.{i}.1.*`` (mixer), ``norm.*``, ``attention.{0,2}.*``, ``classifier.*``), so checkpoints saved
by isyangshu/MambaMIL load as they are (see :func:`mambamil.models.load_checkpoint`).

Initialisation (``init``):

* ``"xavier"`` (default) – what the original code does: after building the blocks it re-initialises
  every Linear with Xavier-normal weights and zero biases, which also wipes Mamba's Δ (dt_proj)
  initialisation (softplus(0) = 0.69 for every channel). Default because it reproduces the published
  models and their training dynamics.
* ``"mamba"`` – Xavier for the MIL layers (``_fc1``, attention, classifier) only; the Mamba blocks keep
  mamba-ssm's own initialisation (log-uniform Δ in [1e-3, 0.1], default Linear init).

``grad_checkpointing=True`` recomputes each layer in the backward pass: only one layer's activations
are alive at a time (measured: 1.7 GB -> 1.0 GB for a 10k-instance training step with 2 layers), for
about one extra forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mambamil.models.common import MILModel, as_bag, make_output, xavier_init
from mambamil.models.mamba import BiMamba, Mamba, SRMamba
from mambamil.models.registry import register_model

LAYERS = {"srmamba": SRMamba, "bimamba": BiMamba, "mamba": Mamba}


class MambaMIL(MILModel):
    """MambaMIL with SRMamba / BiMamba / Mamba layers; forward(bag) -> output dict."""

    model_name = "mambamil"

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        task: str = "classification",
        layer: str = "srmamba",
        rate: int = 10,
        n_layers: int = 2,
        dropout: float = 0.25,
        d_model: int = 512,
        init: str = "xavier",
        act: str = "gelu",
        grad_checkpointing: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        layer = layer.lower()
        if layer not in LAYERS:
            raise ValueError(f"unknown MambaMIL layer {layer!r}; choose one of {sorted(LAYERS)}")
        if init not in ("xavier", "mamba"):
            raise ValueError(f"unknown init {init!r}; choose 'xavier' or 'mamba'")
        if act not in ("gelu", "relu"):
            raise ValueError(f"unknown act {act!r}; choose 'gelu' or 'relu'")
        if int(rate) < 1 or int(n_layers) < 1:
            raise ValueError(f"rate and n_layers must be >= 1, got rate={rate}, n_layers={n_layers}")
        super().__init__(
            in_dim, n_classes, task, layer=layer, rate=int(rate), n_layers=int(n_layers),
            dropout=float(dropout), d_model=int(d_model), init=init, act=act,
            grad_checkpointing=bool(grad_checkpointing),
        )  # fmt: skip
        self.layer_type, self.rate, self.scan_backend = layer, int(rate), scan_backend
        self.grad_checkpointing = bool(grad_checkpointing)
        fc1: list[nn.Module] = [nn.Linear(in_dim, d_model), nn.GELU() if act == "gelu" else nn.ReLU()]
        if dropout:
            fc1.append(nn.Dropout(dropout))
        self._fc1 = nn.Sequential(*fc1)
        self.norm = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(d_model),
                LAYERS[layer](d_model=d_model, d_state=16, d_conv=4, expand=2, scan_backend=scan_backend),
            )
            for _ in range(n_layers)
        )
        self.classifier = nn.Linear(d_model, n_classes)
        self.attention = nn.Sequential(nn.Linear(d_model, 128), nn.Tanh(), nn.Linear(128, 1))
        if init == "xavier":
            xavier_init(self)
        else:
            for m in (self._fc1, self.attention, self.classifier, self.norm):
                xavier_init(m)

    def _mix(self, block: nn.Sequential, h: Tensor) -> Tensor:
        norm, mixer = block
        return mixer(norm(h), rate=self.rate) if self.layer_type == "srmamba" else mixer(norm(h))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self._fc1(as_bag(x, self.in_dim))  # (1, N, d_model)
        for block in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = h + checkpoint(self._mix, block, h, use_reentrant=False)
            else:
                h = h + self._mix(block, h)
        h = self.norm(h)
        a_raw = self.attention(h).transpose(1, 2)  # (1, 1, N)
        a = F.softmax(a_raw, dim=-1)
        logits = self.classifier(torch.bmm(a, h).squeeze(1))  # (1, C)
        return make_output(logits, a_raw.squeeze(1), a.squeeze(1), self.task)


def original_config(state_dict: dict[str, Tensor]) -> dict:
    """Infer in_dim, n_classes, n_layers, d_model and the layer family from an original state dict.

    SRMamba and BiMamba have identical parameters; a two-branch checkpoint is taken as ``srmamba``
    (the paper's model) unless the caller overrides ``layer``.
    """
    idx = {int(k.split(".")[1]) for k in state_dict if k.startswith("layers.")}
    two_branch = any(k.endswith(".A_b_log") for k in state_dict)
    return {
        "in_dim": int(state_dict["_fc1.0.weight"].shape[1]),
        "d_model": int(state_dict["_fc1.0.weight"].shape[0]),
        "n_classes": int(state_dict["classifier.weight"].shape[0]),
        "n_layers": max(idx) + 1 if idx else 0,
        "layer": "srmamba" if two_branch else "mamba",
    }


@register_model
def mambamil(**kw: Any) -> MILModel:
    """MambaMIL (kwargs: layer srmamba|bimamba|mamba, rate, n_layers, dropout, d_model, init, act)."""
    return MambaMIL(**kw)


__all__ = ["LAYERS", "MambaMIL", "mambamil", "original_config"]
