"""MambaMIL on the patch grid (``mambamil_2d``): 2D SR-Mamba layers over the slide's patch grid (2DMamba's scan,
Zhang et al., CVPR 2025) with a coordinate embedding.

Linear(in_dim, d_model) + GELU (+ dropout) + coordinate embedding -> n_layers x [x + SRMamba2D(LayerNorm(x))] ->
LayerNorm -> attention pooling over the instances -> Linear(d_model, C), with MambaMIL's sizes and initialisation.

* The grid: each slide's patches on its patch grid (level-0 coordinates / the tile stage's ``step_level0``); the
  slides of a patient side by side, one empty column apart. The model's ``grid_step`` (patch stride in px at the
  features' target resolution, recorded in the checkpoint config) must equal every bag's, so inference rebuilds
  the grid the model was trained on; coordinates off the grid or a grid over ``max_grid_cells`` are one-line
  :class:`~mambamil.ops.scan2d.GridError` s naming the slide.
* Coordinate embedding: Linear(2, d_model) of (column, row) / max(height, width) of the bag's grid (2DMamba adds a
  linear embedding of the coordinates to the projected features), added before the layers.
* SRMamba2D: Mamba's mixer with the 2D selective scan (:func:`~mambamil.ops.scan2d.selective_scan_2d`); as in
  2DMamba the depthwise causal conv runs over the instances in row-major (raster) order. The second branch (SR) scans
  the grid whose rows and columns are each interleaved with stride ``rate`` (MambaMIL's sequence reordering,
  per axis), so cells ``rate`` apart become neighbours. Background cells: ``background`` ``pad`` (2DMamba's zero pad
  token: no input, the decay of a zero delta) or ``skip``.

The model needs coordinates: ``model(x, coords=InstanceCoords)``; :func:`mambamil.models.common.call_model` passes
them to every model with ``needs_coords``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mambamil.models.common import InstanceCoords, MILModel, as_bag, make_output, xavier_init
from mambamil.models.mamba import Mamba, _grad_free, causal_depthwise_conv
from mambamil.models.registry import register_model
from mambamil.ops.scan2d import (
    BACKENDS_2D,
    BACKGROUND,
    DEFAULT_MAX_CELLS,
    GridError,
    ScanGrid,
    patch_grid,
    selective_scan_2d,
)

__all__ = ["MambaMIL2D", "SRMamba2D", "bag_grid", "mambamil_2d", "target_stride"]


def target_stride(meta: Any) -> float | None:
    """Patch stride in px at the features' target resolution (patch_size x (1 - overlap)), None when unrecorded."""
    if meta is None or getattr(meta, "patch_size", None) is None:
        return None
    return float(meta.patch_size) * (1.0 - float(meta.overlap or 0.0))


def _level0_step(meta: Any, coords: np.ndarray) -> float:
    """The level-0 grid step of a slide: the tile stage's ``step_level0``, else its patch size x (1 - overlap), else
    the smallest spacing of the coordinates (bags from other tilers)."""
    if getattr(meta, "step_level0", None):
        return float(meta.step_level0)
    if getattr(meta, "patch_size_level0", None):
        return float(meta.patch_size_level0) * (1.0 - float(meta.overlap or 0.0))
    gaps = np.concatenate([np.diff(np.unique(coords[:, 0])), np.diff(np.unique(coords[:, 1]))])
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if len(gaps) else 1.0


def bag_grid(coords: InstanceCoords, grid_step: float | None, max_cells: int = DEFAULT_MAX_CELLS) -> ScanGrid:
    """The grid of a bag: each slide's patch grid (checked against ``grid_step``), slides side by side."""
    rows = np.empty(len(coords.coords), np.int64)
    cols = np.empty_like(rows)
    height, left = 0, 0
    ids = np.asarray(coords.slide_ids)
    for sid in dict.fromkeys(coords.slide_ids):  # slide ids in the order of their first instance
        sel = np.flatnonzero(ids == sid)
        meta = coords.meta.get(sid)
        stride = target_stride(meta)
        if grid_step is not None and stride is not None and abs(stride - grid_step) > 1e-6 * grid_step:
            raise GridError(
                f"slide {sid}: patches at a stride of {stride:g} px, but the model's grid step is {grid_step:g} px"
            )
        c = np.asarray(coords.coords[sel], dtype=np.float64)
        if (c < 0).any():
            raise GridError(f"slide {sid}: the bag has no patch coordinates; mambamil_2d needs them")
        g = patch_grid(c, _level0_step(meta, c), f"slide {sid}", max_cells)
        rows[sel], cols[sel] = g.rows, g.cols + left
        height, left = max(height, g.height), left + g.width + 1
    width = left - 1
    if height * width > max_cells:
        raise GridError(
            f"slides {', '.join(dict.fromkeys(coords.slide_ids))}: the patch grid is {height} x {width} = "
            f"{height * width} cells, over the limit of {max_cells} cells (max_grid_cells)"
        )
    return ScanGrid(rows, cols, height, width)


def sr_grid(grid: ScanGrid, rate: int) -> ScanGrid:
    """Rows and columns each interleaved with stride ``rate``: 0, r, 2r, ..., 1, r+1, ... (SR reordering per axis)."""
    kh, kw = -(-grid.height // rate), -(-grid.width // rate)
    rows = (grid.rows % rate) * kh + grid.rows // rate
    cols = (grid.cols % rate) * kw + grid.cols // rate
    return ScanGrid(rows, cols, kh * min(rate, grid.height), kw * min(rate, grid.width))


class SRMamba2D(Mamba):
    """Two-branch Mamba mixer whose scans run on the grid: the grid itself and its SR-interleaved copy."""

    n_branches = 2

    def __init__(self, *args: Any, background: str = "pad", **kw: Any) -> None:
        scan_backend = kw.pop("scan_backend", "auto")
        super().__init__(*args, scan_backend="auto", **kw)
        if scan_backend not in BACKENDS_2D:
            raise ValueError(f"unknown scan_backend {scan_backend!r}; choose one of {', '.join(BACKENDS_2D)}")
        if background not in BACKGROUND:
            raise ValueError(f"unknown background {background!r}; choose one of {BACKGROUND}")
        self.scan_backend, self.background = scan_backend, background

    def _branch2d(self, xz: Tensor, suffix: str, grid: ScanGrid, raster: Tensor) -> Tensor:
        conv, x_proj, dt_proj, A_log, D = self._branch_parts(suffix)
        x, z = xz.chunk(2, dim=1)
        # depthwise causal conv along the raster order of the grid, as 2DMamba's conv over the flattened grid
        inverse = torch.empty_like(raster)
        inverse[raster] = torch.arange(len(raster), device=raster.device)
        x = F.silu(causal_depthwise_conv(x[:, :, raster], conv.weight, conv.bias))[:, :, inverse]
        x_dbl = F.linear(x.transpose(1, 2), x_proj.weight)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(dt_proj.weight, dt.transpose(1, 2))
        return selective_scan_2d(
            x, delta, -torch.exp(A_log.float()), B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            grid, D.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True,
            background=self.background, backend=self.scan_backend,
        )  # fmt: skip

    def forward(self, hidden_states: Tensor, grid: ScanGrid, rate: int = 10) -> Tensor:  # type: ignore[override]
        """(1, N, d_model) on ``grid`` -> (1, N, d_model)."""
        xz = self._in_proj(hidden_states)
        out = self._out_proj(self._branch2d(xz, "", grid, _raster(grid, xz.device)))
        sr = sr_grid(grid, rate)
        y_b = self._out_proj(self._branch2d(xz, "_b", sr, _raster(sr, xz.device)))
        return out.add_(y_b) if _grad_free(out, y_b) else out + y_b


def _raster(grid: ScanGrid, device: torch.device) -> Tensor:
    """Instance indices in row-major order of their cells."""
    return torch.as_tensor(np.lexsort((grid.cols, grid.rows)), device=device)


class MambaMIL2D(MILModel):
    """MambaMIL with 2D SR-Mamba layers on the patch grid; forward(bag, coords=InstanceCoords) -> output dict."""

    model_name = "mambamil_2d"
    needs_coords = True

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        task: str = "classification",
        rate: int = 10,
        n_layers: int = 2,
        dropout: float = 0.25,
        d_model: int = 512,
        background: str = "pad",
        grid_step: float | None = None,
        max_grid_cells: int = DEFAULT_MAX_CELLS,
        act: str = "gelu",
        grad_checkpointing: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        if int(rate) < 1 or int(n_layers) < 1:
            raise ValueError(f"rate and n_layers must be >= 1, got rate={rate}, n_layers={n_layers}")
        if act not in ("gelu", "relu"):
            raise ValueError(f"unknown act {act!r}; choose 'gelu' or 'relu'")
        super().__init__(
            in_dim, n_classes, task, rate=int(rate), n_layers=int(n_layers), dropout=float(dropout),
            d_model=int(d_model), background=background, grid_step=None if grid_step is None else float(grid_step),
            max_grid_cells=int(max_grid_cells), act=act, grad_checkpointing=bool(grad_checkpointing),
        )  # fmt: skip
        self.rate, self.grad_checkpointing = int(rate), bool(grad_checkpointing)
        fc1: list[nn.Module] = [nn.Linear(in_dim, d_model), nn.GELU() if act == "gelu" else nn.ReLU()]
        if dropout:
            fc1.append(nn.Dropout(dropout))
        self._fc1 = nn.Sequential(*fc1)
        self.pos_embed = nn.Linear(2, d_model)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(d_model),
                SRMamba2D(
                    d_model=d_model, d_state=16, d_conv=4, expand=2, background=background, scan_backend=scan_backend
                ),
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.attention = nn.Sequential(nn.Linear(d_model, 128), nn.Tanh(), nn.Linear(128, 1))
        self.classifier = nn.Linear(d_model, n_classes)
        xavier_init(self)

    @property
    def grid_step(self) -> float | None:
        return self.config["grid_step"]

    def set_grid_step(self, step: float) -> None:
        """Fix the patch stride (px at the target resolution) the model reads grids with; kept in its config."""
        self.config["grid_step"] = float(step)

    def grid(self, coords: InstanceCoords) -> ScanGrid:
        return bag_grid(coords, self.grid_step, self.config["max_grid_cells"])

    def _mix(self, block: nn.Sequential, h: Tensor, grid: ScanGrid) -> Tensor:
        norm, mixer = block
        return mixer(norm(h), grid, rate=self.rate)

    def forward(self, x: Tensor, coords: InstanceCoords | None = None) -> dict[str, Tensor]:
        h = self._fc1(as_bag(x, self.in_dim))  # (1, N, d_model)
        if coords is None or len(coords.coords) != h.shape[1]:
            raise GridError(f"mambamil_2d needs the patch coordinates of all {h.shape[1]} instances")
        grid = self.grid(coords)
        pos = torch.as_tensor(np.stack([grid.cols, grid.rows], 1), dtype=h.dtype, device=h.device)
        h = h + self.pos_embed(pos / max(grid.height, grid.width))
        for block in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = h + checkpoint(self._mix, block, h, grid, use_reentrant=False)
            else:
                h = h + self._mix(block, h, grid)
        h = self.norm(h)
        a_raw = self.attention(h).transpose(1, 2)  # (1, 1, N)
        a = F.softmax(a_raw, dim=-1)
        logits = self.classifier(torch.bmm(a, h).squeeze(1))
        return make_output(logits, a_raw.squeeze(1), a.squeeze(1), self.task)


@register_model
def mambamil_2d(**kw: Any) -> MILModel:
    """MambaMIL on the patch grid (kwargs: rate, n_layers, dropout, d_model, background pad|skip, grid_step,
    max_grid_cells, act, grad_checkpointing, scan_backend)."""
    return MambaMIL2D(**kw)
