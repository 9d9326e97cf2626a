"""Mamba v1 mixer and MambaMIL's two-branch variants (SRMamba, BiMamba).

Parameter names follow ``mamba_ssm.modules.mamba_simple.Mamba`` and isyangshu/MambaMIL's
``srmamba.py`` / ``bimamba.py`` exactly, so their state dicts load unchanged:
``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj`` and, for the second branch,
``conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b``.

The selective scan goes through :func:`mambamil.ops.selective_scan` (``scan_backend``; ``auto``: mamba-ssm's
kernel on CUDA when installed, else the Triton kernels on CUDA, the chunked scan on CPU); the causal
depthwise conv uses ``causal_conv1d`` on CUDA when installed, else ``torch.nn.functional.conv1d``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambamil.ops import selective_scan
from mambamil.ops.selective_scan import BACKENDS

try:  # optional CUDA extension
    from causal_conv1d import causal_conv1d_fn
except Exception:  # pragma: no cover - not installed on CPU machines
    causal_conv1d_fn = None

__all__ = ["BiMamba", "Mamba", "SRMamba", "sr_reorder", "sr_restore"]


def sr_reorder(x: Tensor, rate: int) -> Tensor:
    """SRMamba's sequence reordering of x (b, c, L).

    Zero-pads L to a multiple of ``rate`` and interleaves with stride ``rate``: the new order is
    positions 0, r, 2r, ..., then 1, r+1, ..., (``"b (k w) d -> b (w k) d"`` with w = rate).
    """
    b, c, L = x.shape
    K = math.ceil(L / rate)
    if K * rate != L:
        x = F.pad(x, (0, K * rate - L))
    return x.reshape(b, c, K, rate).transpose(2, 3).reshape(b, c, K * rate)


def sr_restore(x: Tensor, rate: int, length: int) -> Tensor:
    """Inverse of :func:`sr_reorder`: undo the interleaving and crop to ``length``."""
    b, c, Lp = x.shape
    return x.reshape(b, c, rate, Lp // rate).transpose(2, 3).reshape(b, c, Lp)[:, :, :length]


def causal_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Causal depthwise conv of x (b, c, L) with weight (c, 1, k): Conv1d(padding=k-1)[..., :L].

    k shifted multiply-adds instead of F.conv1d, which is slow for depthwise kernels on CPU.
    """
    k = weight.shape[-1]
    w = weight.view(weight.shape[0], k, 1)
    L = x.shape[-1]
    out = x * w[:, k - 1]
    if bias is not None:
        out = out + bias[:, None]
    for s in range(1, min(k, L)):
        out[..., s:] += x[..., : L - s] * w[:, k - 1 - s]
    return out


def _grad_free(*tensors: Tensor) -> bool:
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


class Mamba(nn.Module):
    """Mamba v1 mixer (mamba-ssm's ``Mamba``) on (batch, L, d_model) sequences."""

    n_branches = 1

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if scan_backend not in BACKENDS:
            raise ValueError(f"unknown scan_backend {scan_backend!r}; choose one of {', '.join(BACKENDS)}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self._dt = (dt_min, dt_max, dt_init_floor)
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        for suffix in [""] + (["_b"] if self.n_branches == 2 else []):
            self._make_branch(suffix, conv_bias)

    def _make_branch(self, suffix: str, conv_bias: bool) -> None:
        d_inner, n = self.d_inner, self.d_state
        conv = nn.Conv1d(d_inner, d_inner, self.d_conv, groups=d_inner, padding=self.d_conv - 1, bias=conv_bias)
        x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)
        dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        D = nn.Parameter(torch.ones(d_inner))
        A_log._no_weight_decay = True  # type: ignore[attr-defined]
        D._no_weight_decay = True  # type: ignore[attr-defined]
        setattr(self, "conv1d" + suffix, conv)
        setattr(self, "x_proj" + suffix, x_proj)
        setattr(self, "dt_proj" + suffix, dt_proj)
        setattr(self, "A_log" if not suffix else "A" + suffix + "_log", A_log)
        setattr(self, "D" + suffix, D)
        self.reset_dt(suffix)

    @torch.no_grad()
    def reset_dt(self, suffix: str = "") -> None:
        """Mamba's Δ initialisation: uniform dt_proj weight, bias = softplus⁻¹(dt), dt log-uniform."""
        dt_min, dt_max, floor = self._dt
        dt_proj: nn.Linear = getattr(self, "dt_proj" + suffix)
        std = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

    def _branch_parts(self, suffix: str) -> tuple[nn.Conv1d, nn.Linear, nn.Linear, Tensor, Tensor]:
        """conv1d, x_proj, dt_proj, A_log and D of one SSM branch (``suffix`` "" or "_b": the state-dict names)."""
        A_log = getattr(self, "A_log" if not suffix else "A" + suffix + "_log")
        names = ("conv1d", "x_proj", "dt_proj")
        return (*(getattr(self, name + suffix) for name in names), A_log, getattr(self, "D" + suffix))

    def _branch(self, xz: Tensor, suffix: str) -> Tensor:
        """One SSM branch on xz (b, 2*d_inner, L) -> (b, d_inner, L) (before out_proj)."""
        conv, x_proj, dt_proj, A_log, D = self._branch_parts(suffix)
        x, z = xz.chunk(2, dim=1)
        if causal_conv1d_fn is not None and x.is_cuda:
            x = causal_conv1d_fn(x.contiguous(), conv.weight.squeeze(1), conv.bias, activation="silu")
        else:
            x = F.silu(causal_depthwise_conv(x, conv.weight, conv.bias), inplace=_grad_free(x, conv.weight))
        x_dbl = F.linear(x.transpose(1, 2), x_proj.weight)  # (b, L, dt_rank + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(dt_proj.weight, dt.transpose(1, 2))  # (b, d_inner, L)
        A = -torch.exp(A_log.float())
        delta_bias: Tensor | None = dt_proj.bias.float()
        if _grad_free(delta, delta_bias) and not delta.is_cuda:  # softplus(delta + bias) in place, by blocks
            for i in range(0, delta.shape[1], 128):
                blk = delta[:, i : i + 128]
                blk.copy_(F.softplus(blk.add_(delta_bias[i : i + 128, None])))
            delta_bias = None
        return selective_scan(
            x,
            delta,
            A,
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            D.float(),
            z=z,
            delta_bias=delta_bias,
            delta_softplus=delta_bias is not None,
            backend=self.scan_backend,
        )

    def _in_proj(self, hidden_states: Tensor) -> Tensor:
        xz = torch.matmul(self.in_proj.weight, hidden_states.transpose(1, 2))  # (b, 2*d_inner, L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        return xz

    def _out_proj(self, y: Tensor) -> Tensor:
        return F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(batch, L, d_model) -> (batch, L, d_model)."""
        return self._out_proj(self._branch(self._in_proj(hidden_states), ""))


class SRMamba(Mamba):
    """MambaMIL's SR-Mamba: a forward branch plus a branch on the stride-``rate`` reordered sequence."""

    n_branches = 2

    def forward(self, hidden_states: Tensor, rate: int = 10) -> Tensor:
        if rate < 1:
            raise ValueError(f"SRMamba: rate must be >= 1, got {rate}")
        L = hidden_states.shape[1]
        xz = self._in_proj(hidden_states)
        y = self._branch(xz, "")
        if _grad_free(y):  # inference: project each branch (linear, so equal) to keep peak memory low
            out = self._out_proj(y)
            del y
            xz = sr_reorder(xz, rate)
            y_b = sr_restore(self._branch(xz, "_b"), rate, L)
            del xz
            return out.add_(self._out_proj(y_b))
        y_b = sr_restore(self._branch(sr_reorder(xz, rate), "_b"), rate, L)
        return self._out_proj(y + y_b)


class BiMamba(Mamba):
    """Bidirectional Mamba as in MambaMIL's ``bimamba.py``: the second branch runs reversed."""

    n_branches = 2

    def forward(self, hidden_states: Tensor, rate: int | None = None) -> Tensor:
        xz = self._in_proj(hidden_states)
        y = self._branch(xz, "")
        if _grad_free(y):
            out = self._out_proj(y)
            del y
            xz = xz.flip(-1)
            return out.add_(self._out_proj(self._branch(xz, "_b").flip(-1)))
        return self._out_proj(y + self._branch(xz.flip(-1), "_b").flip(-1))
