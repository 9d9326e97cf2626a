"""Baseline MIL aggregators: gated-attention ABMIL, mean pooling, max pooling, TransMIL.

Attention outputs (all (1, N)):

* ABMIL – the gated attention softmax; ``attention_raw`` its pre-softmax scores.
* mean – uniform 1/N; ``attention_raw`` zeros (softmax of zeros is uniform).
* max – the share of the hidden feature dims whose max each instance wins (sums to 1);
  ``attention_raw`` the number of dims won (not a softmax input).
* TransMIL – the class token's softmax attention over the instances in the last Transformer layer,
  averaged over heads, restricted to the N real instances (padding copies dropped) and renormalised;
  ``attention_raw`` the head-averaged pre-softmax logits of those positions.
  The original uses Nyström attention (``nystrom_attention`` package, not a dependency here); this
  implementation uses exact multi-head attention through ``scaled_dot_product_attention`` with the same
  layer layout (fc -> square padding -> cls -> TransLayer -> PPEG -> TransLayer -> LayerNorm -> cls head).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamil.models.common import MILModel, as_bag, make_output, xavier_init
from mambamil.models.registry import register_model


def _fc(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ABMIL(MILModel):
    """Gated attention MIL (Ilse et al. 2018), CLAM-style sizes (in_dim -> 512 -> 256 attention)."""

    model_name = "abmil"

    def __init__(
        self, in_dim: int, n_classes: int, task: str = "classification", dropout: float = 0.25,
        hidden: int = 512, attn_dim: int = 256,
    ) -> None:  # fmt: skip
        super().__init__(in_dim, n_classes, task, dropout=float(dropout), hidden=int(hidden), attn_dim=int(attn_dim))
        self.fc = _fc(in_dim, hidden, dropout)
        self.attention_a = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Sigmoid())
        self.attention_c = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)
        xavier_init(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.fc(as_bag(x, self.in_dim)).squeeze(0)  # (N, hidden)
        a_raw = self.attention_c(self.attention_a(h) * self.attention_b(h)).T  # (1, N)
        a = F.softmax(a_raw, dim=1)
        return make_output(self.classifier(a @ h), a_raw, a, self.task)


class _PoolingMIL(MILModel):
    """Projected instances (``fc``) pooled without parameters, then a linear ``classifier``."""

    def __init__(
        self, in_dim: int, n_classes: int, task: str = "classification", dropout: float = 0.25, hidden: int = 512
    ) -> None:
        super().__init__(in_dim, n_classes, task, dropout=float(dropout), hidden=int(hidden))
        self.fc = _fc(in_dim, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_classes)
        xavier_init(self)


class MeanMIL(_PoolingMIL):
    """Mean pooling of the projected instances."""

    model_name = "mean"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.fc(as_bag(x, self.in_dim)).squeeze(0)
        n = h.shape[0]
        a_raw = h.new_zeros(1, n)
        return make_output(self.classifier(h.mean(0, keepdim=True)), a_raw, h.new_full((1, n), 1.0 / n), self.task)


class MaxMIL(_PoolingMIL):
    """Max pooling over instances, per hidden feature."""

    model_name = "max"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.fc(as_bag(x, self.in_dim)).squeeze(0)  # (N, hidden)
        pooled, winners = h.max(dim=0)
        wins = torch.bincount(winners, minlength=h.shape[0]).to(h.dtype).unsqueeze(0)  # (1, N)
        return make_output(self.classifier(pooled.unsqueeze(0)), wins, wins / h.shape[1], self.task)


class _TransLayer(nn.Module):
    """Pre-norm multi-head self-attention with a residual; can also return the cls token's attention."""

    def __init__(self, dim: int = 512, heads: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cls_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        b, n, dim = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, dh)
        cls_logits = None
        if cls_attention:  # the cls token's logits over all tokens, per head
            cls_logits = (q[:, :, :1] @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(dim // self.heads)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, dim)), cls_logits


class _PPEG(nn.Module):
    """TransMIL's pyramid position encoding: depthwise 7/5/3 convs on the square token grid."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        b, _, c = x.shape
        cls_token, feat = x[:, :1], x[:, 1:]
        cnn = feat.transpose(1, 2).reshape(b, c, H, W)
        x = self.proj(cnn) + cnn + self.proj1(cnn) + self.proj2(cnn)
        return torch.cat((cls_token, x.flatten(2).transpose(1, 2)), dim=1)


class TransMIL(MILModel):
    """TransMIL (Shao et al. 2021) with exact attention; see the module docstring for the attention map."""

    model_name = "transmil"

    def __init__(
        self, in_dim: int, n_classes: int, task: str = "classification", dropout: float = 0.0,
        dim: int = 512, heads: int = 8,
    ) -> None:  # fmt: skip
        super().__init__(in_dim, n_classes, task, dropout=float(dropout), dim=int(dim), heads=int(heads))
        self._fc1 = _fc(in_dim, dim, dropout)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = _TransLayer(dim, heads)
        self.pos_layer = _PPEG(dim)
        self.layer2 = _TransLayer(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self._fc1(as_bag(x, self.in_dim))  # (1, N, dim)
        N = h.shape[1]
        side = math.ceil(math.sqrt(N))
        add = side * side - N
        if add:  # pad to a square grid by repeating the first instances, as the original does
            reps = math.ceil(add / N)
            h = torch.cat([h, h.repeat(1, reps, 1)[:, :add]], dim=1)
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        h, _ = self.layer1(h)
        h = self.pos_layer(h, side, side)
        h, cls_logits = self.layer2(h, cls_attention=True)
        logits = self._fc2(self.norm(h)[:, 0])
        assert cls_logits is not None
        a_heads = F.softmax(cls_logits, dim=-1)[:, :, 1 : N + 1]  # (1, heads, N)
        a = a_heads.mean(1)
        a = a / a.sum(dim=1, keepdim=True)
        return make_output(logits, cls_logits[:, :, 1 : N + 1].mean(1), a, self.task)


@register_model
def abmil(**kw: Any) -> MILModel:
    """Gated-attention ABMIL (kwargs: dropout, hidden, attn_dim)."""
    return ABMIL(**kw)


@register_model
def transmil(**kw: Any) -> MILModel:
    """TransMIL with exact attention (kwargs: dropout, dim, heads)."""
    return TransMIL(**kw)


@register_model(name="mean")
def mean_pool(**kw: Any) -> MILModel:
    """Mean pooling, registered as ``"mean"`` (kwargs: dropout, hidden)."""
    return MeanMIL(**kw)


@register_model(name="max")
def max_pool(**kw: Any) -> MILModel:
    """Max pooling, registered as ``"max"`` (kwargs: dropout, hidden)."""
    return MaxMIL(**kw)


__all__ = ["ABMIL", "MaxMIL", "MeanMIL", "TransMIL", "abmil", "max_pool", "mean_pool", "transmil"]
