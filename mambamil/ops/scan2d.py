"""2D selective scan over a slide's patch grid (2DMamba's semantics, Zhang et al., CVPR 2025, arXiv 2412.00678).

Instances sit on the cells of a patch grid (row ``i``, column ``j``; the grid step is the tile stage's patch
stride). With ``a = exp(delta A)`` and ``b = delta B u`` per cell, the scan is a horizontal selective scan whose
states are then scanned vertically with the same decays::

    g_{i,j} = a_{i,j} * g_{i,j-1} + b_{i,j}           (horizontal, along each row, from zero)
    h_{i,j} = a_{i,j} * h_{i-1,j} + g_{i,j}           (vertical, down each column, from zero)
    y_{i,j} = C_{i,j} . h_{i,j} + D u_{i,j},   then y * silu(z)  when z is given

as 2DMamba's ``PScan_2D`` (horizontal pass, then a vertical pass with the raw decays) and its CUDA kernel compute.
Shapes follow the 1D scan (:mod:`mambamil.ops.selective_scan`): ``u, delta, z (batch, d, N)``, ``B, C (batch, n,
N)``, ``A (d, n)`` with N the instances in any order; :class:`ScanGrid` gives each instance's cell.

Background cells of the grid's bounding box (no instance):

``pad``   (default; 2DMamba's ``mamba_2d_pad_token='zero'``) a pad cell is a cell with zero input: raw delta 0
          and u 0, so ``b = 0`` and its decay is ``exp(softplus(delta_bias) A)`` (``delta_bias`` alone without
          softplus, 1 without bias). Pad cells carry and decay the state in both passes (information from the
          left of a hole reaches the cells below it, as in 2DMamba).
``skip``  background cells do not exist: each row's instances follow each other directly in the horizontal
          pass, each column's in the vertical pass.

Backends: ``reference`` (sequential float64 loop over the bounding box, autograd; defines the semantics),
``chunked`` (PyTorch, exact to float32 rounding, bounded memory; see :func:`selective_scan_2d_chunked`),
``triton`` (:mod:`mambamil.ops.triton_scan2d`). ``auto`` picks ``triton`` for CUDA tensors when Triton is usable,
else ``chunked``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mambamil.errors import MambamilError
from mambamil.ops.selective_scan import _EXP_FLOOR, _compute_dtype, _finish, _prep_delta, _triton_usable

__all__ = [
    "BACKENDS_2D",
    "BACKGROUND",
    "DEFAULT_MAX_CELLS",
    "GridError",
    "ScanGrid",
    "patch_grid",
    "selective_scan_2d",
    "selective_scan_2d_chunked",
    "selective_scan_2d_reference",
]

BACKENDS_2D = ("auto", "triton", "chunked", "reference")
BACKGROUND = ("pad", "skip")
#: largest bounding box (rows x columns) a grid may have unless configured otherwise (a 40k x 40k px slide at
#: 224 px patches is 180 x 180 = 32k cells; 4M cells is a 2048 x 2048 grid)
DEFAULT_MAX_CELLS = 1 << 22
#: target number of state elements (rows x cells x batch x d x n) of one block of rows in the chunked scan
DEFAULT_BLOCK = 1 << 23


class GridError(MambamilError):
    """Coordinates that do not form a patch grid, or a grid over the configured limit."""


@dataclass(frozen=True)
class ScanGrid:
    """The grid cell (``rows``, ``cols``: int64 (N,), from 0) of each of N instances, in a ``height x width`` box."""

    rows: np.ndarray
    cols: np.ndarray
    height: int
    width: int

    @classmethod
    def from_positions(
        cls, positions: np.ndarray | Tensor, source: str = "bag", max_cells: int = DEFAULT_MAX_CELLS
    ) -> ScanGrid:
        """Grid of integer (column, row) positions (any origin); duplicates and boxes over ``max_cells`` refused."""
        if isinstance(positions, Tensor):
            positions = positions.detach().cpu().numpy()
        pos = np.asarray(positions).reshape(-1, 2)
        if len(pos) == 0:
            raise GridError(f"{source}: no instances to place on a grid")
        if not np.issubdtype(pos.dtype, np.integer):
            raise GridError(f"{source}: grid positions must be integers, got {pos.dtype}")
        pos = pos.astype(np.int64) - pos.min(axis=0)
        width, height = (int(v) + 1 for v in pos.max(axis=0))
        if height * width > max_cells:
            raise GridError(
                f"{source}: the patch grid is {height} x {width} = {height * width} cells, over the limit of "
                f"{max_cells} cells (max_grid_cells)"
            )
        key = pos[:, 1] * width + pos[:, 0]
        uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
        if len(uniq) != len(key):
            k = int(first[np.argmax(counts > 1)])
            raise GridError(
                f"{source}: {len(key) - len(uniq)} instances share a grid cell with another, e.g. column "
                f"{pos[k, 0]}, row {pos[k, 1]} (overlapping tiling, or a grid step larger than the patch stride)"
            )
        return cls(pos[:, 1].copy(), pos[:, 0].copy(), height, width)

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def cell_index(self) -> np.ndarray:
        """(height, width) instance index of each cell, -1 for background."""
        idx = np.full((self.height, self.width), -1, np.int64)
        idx[self.rows, self.cols] = np.arange(len(self.rows))
        return idx

    def permuted(self, perm: np.ndarray) -> ScanGrid:
        """The grid of the instances reordered by ``perm`` (instance k of the result is instance perm[k])."""
        return ScanGrid(self.rows[perm], self.cols[perm], self.height, self.width)


def patch_grid(
    coords: np.ndarray, step: float, source: str = "bag", max_cells: int = DEFAULT_MAX_CELLS, tol: float = 0.01
) -> ScanGrid:
    """The :class:`ScanGrid` of level-0 patch coordinates (N, 2) (x, y) with grid ``step`` px (the patch stride).

    Every coordinate must lie on the grid (within ``tol`` of a step) and no two on one cell, else a
    :class:`GridError` naming ``source`` (the slide) and the offending step.
    """
    if not step or step <= 0:
        raise GridError(f"{source}: no patch stride (step_level0) to build the patch grid from")
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        raise GridError(f"{source}: no instances to place on a grid")
    off = (c - c.min(axis=0)) / step
    pos = np.rint(off)
    err = np.abs(off - pos).max(axis=1)
    if (err > tol).any():
        k = int(np.argmax(err))
        raise GridError(
            f"{source}: patch ({c[k, 0]:g}, {c[k, 1]:g}) is {err[k] * step:g} px off the patch grid of step "
            f"{step:g} px (level 0); {int((err > tol).sum())} of {len(c)} patches are off it (mixed patch sizes or "
            f"overlapping tiling?)"
        )
    return ScanGrid.from_positions(pos.astype(np.int64), source, max_cells)


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, grid: ScanGrid, background: str) -> None:
    if background not in BACKGROUND:
        raise ValueError(f"selective_scan_2d: background must be one of {BACKGROUND}, got {background!r}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan_2d: u, delta must be (batch, d, N), got {tuple(u.shape)}, {delta.shape}")
    b, d, N = u.shape
    if len(grid) != N:
        raise ValueError(f"selective_scan_2d: {N} instances but the grid places {len(grid)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan_2d: A must be (d={d}, n), got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, A.shape[1], N):
            raise ValueError(f"selective_scan_2d: {name} must be (batch, n, N)={(b, A.shape[1], N)}, got {t.shape}")


def _pad_delta(delta_bias: Tensor | None, delta_softplus: bool, b: int, d: int, ref: Tensor) -> Tensor:
    """Delta of a pad cell (raw delta 0), (b, d)."""
    return _prep_delta(ref.new_zeros(b, d, 1), delta_bias, delta_softplus, ref.dtype)[:, :, 0]


# ----------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------
def selective_scan_2d_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    grid: ScanGrid,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    background: str = "pad",
) -> Tensor:
    """Sequential float64 loop over every cell of the bounding box (the definition); autograd through it."""
    _check(u, delta, A, B, C, grid, background)
    dt = torch.float64
    b, d, N = u.shape
    dl = _prep_delta(delta.to(dt), None if delta_bias is None else delta_bias.to(dt), delta_softplus, dt)
    uf, Af, Bf, Cf = u.to(dt), A.to(dt), B.to(dt), C.to(dt)
    a_pad = torch.exp(_pad_delta(delta_bias, delta_softplus, b, d, uf)[:, :, None] * Af)
    cells = grid.cell_index
    V = [uf.new_zeros(b, d, A.shape[1]) for _ in range(grid.width)]  # vertical state of each column
    ys: list[Tensor | None] = [None] * N
    for i in range(grid.height):
        g = uf.new_zeros(b, d, A.shape[1])  # horizontal state
        for j in range(grid.width):
            k = int(cells[i, j])
            if k >= 0:
                a = torch.exp(dl[:, :, k, None] * Af)
                g = a * g + (dl[:, :, k] * uf[:, :, k])[:, :, None] * Bf[:, None, :, k]
            elif background == "pad":
                a = a_pad
                g = a * g
            else:
                continue
            V[j] = a * V[j] + g
            if k >= 0:
                ys[k] = torch.einsum("bdn,bn->bd", V[j], Cf[:, :, k])
    y = torch.stack(ys, dim=2)  # type: ignore[arg-type]
    return _finish(y, uf, None if D is None else D.to(dt), None if z is None else z.to(dt), dt).to(u.dtype)


# ----------------------------------------------------------------------------------------------
# chunked
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """Cells of the scan in row-major order, cut into blocks of whole rows.

    Each block is a (R, M) matrix of extended-cell indices (rows of the block x the longest row's cells), where
    index N is the pad cell and N + 1 the identity filler (decay 1, no input) of rows shorter than M, with each
    row's grid columns and the (R, M) mask of tissue cells.
    """

    blocks: list[tuple[Tensor, list[Tensor], np.ndarray]]  # (idx (R, M), cols per row, tissue (R, M))


def _plan(grid: ScanGrid, background: str, per_cell: int, budget: int, device: torch.device | str = "cpu") -> _Plan:
    """Row-major cells (tissue only for ``skip``; the whole box from the first tissue row for ``pad``)."""
    N = len(grid)
    cells = grid.cell_index
    first_row = int(grid.rows.min())
    rows: list[tuple[np.ndarray, np.ndarray]] = []  # (extended index, column) of each row's cells
    for i in range(first_row, grid.height):
        line = cells[i]
        if background == "skip":
            cols = np.flatnonzero(line >= 0)
            if len(cols) == 0:
                continue
            rows.append((line[cols], cols))
        else:  # pad cells everywhere; above the first tissue row every state is zero
            rows.append((np.where(line >= 0, line, N), np.arange(grid.width)))
    blocks = []
    start = 0
    while start < len(rows):
        stop, longest = start, 0
        while stop < len(rows):
            m = max(longest, len(rows[stop][0]))
            if stop > start and (stop - start + 1) * m * per_cell > budget:
                break
            longest, stop = m, stop + 1
        idx = np.full((stop - start, longest), N + 1, np.int64)
        for r, (ext, _) in enumerate(rows[start:stop]):
            idx[r, : len(ext)] = ext
        cols = [torch.as_tensor(c, device=device) for _, c in rows[start:stop]]
        blocks.append((torch.as_tensor(idx, device=device), cols, idx < N))
        start = stop
    return _Plan(blocks)


def _gather(x: Tensor, flat: Tensor, R: int, M: int) -> Tensor:
    """Extended per-cell tensor x (b, c, N+2) at cells ``flat`` (R*M,) as (R, M, b, c)."""
    return x[:, :, flat].permute(2, 0, 1).reshape(R, M, *x.shape[:2])


def _block_forward(
    V: Tensor, ins: tuple[Tensor, ...], A: Tensor, idx: Tensor, cols: list[Tensor], lo: float, keep: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """One block of rows, in place on the column states V (W, b, d, n). ``ins`` = (de, du, Bx, Cx), each (b, c, N+2).

    The horizontal pass runs all rows of the block at once, one cell after another; the vertical pass one row
    after another, all of its cells at once. Returns y (R*M, b, d) and, with ``keep``, the block's decays ``a``,
    horizontal states ``g`` and the vertical states above each cell ``up`` (R, M, b, d, n) for the backward.
    """
    R, M = idx.shape
    flat = idx.reshape(-1)
    de, du, Bc, Cc = (_gather(x, flat, R, M) for x in ins)
    a = torch.mul(de.unsqueeze(-1), A).clamp_(min=lo).exp_()  # (R, M, b, d, n)
    g = torch.empty_like(a)
    torch.mul(du[:, 0, :, :, None], Bc[:, 0, :, None, :], out=g[:, 0])
    for t in range(1, M):
        torch.mul(a[:, t], g[:, t - 1], out=g[:, t]).addcmul_(du[:, t, :, :, None], Bc[:, t, :, None, :])
    up = torch.empty_like(a) if keep else None
    y = a.new_zeros(R, M, *de.shape[2:])
    W = V.shape[0]
    for r in range(R):
        c, m = cols[r], len(cols[r])
        full = m == W  # a row over every column: work on V itself, no gather/scatter
        h = V if full else V.index_select(0, c)
        if up is not None:
            up[r, :m] = h
        h.mul_(a[r, :m]).add_(g[r, :m])
        if not full:
            V.index_copy_(0, c, h)
        torch.matmul(h, Cc[r, :m, :, :, None], out=y[r, :m, :, :, None])
    return y.reshape(R * M, *y.shape[2:]), ({"a": a, "g": g, "up": up, "de": de, "du": du, "B": Bc, "C": Cc}
                                          if keep else {})


class _Scan2DFn(torch.autograd.Function):
    """Core 2D scan y = C . h on extended cells (no D, z, bias, softplus) with a block-wise custom backward."""

    @staticmethod
    def forward(ctx, de, du, Bx, Cx, A, plan, width):  # type: ignore[override]
        b, d, N2 = de.shape
        lo = _EXP_FLOOR[de.dtype]
        V = de.new_zeros(width, b, d, A.shape[1])
        y = de.new_zeros(N2, b, d)
        starts = []
        for idx, cols, _ in plan.blocks:
            starts.append(V.clone())
            yb, _ = _block_forward(V, (de, du, Bx, Cx), A, idx, cols, lo, keep=False)
            y.index_copy_(0, idx.reshape(-1), yb)  # pad and filler slots (N, N+1) are written and dropped
        ctx.save_for_backward(de, du, Bx, Cx, A, *starts)
        ctx.plan, ctx.width = plan, width
        return y[: N2 - 2]

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        de, du, Bx, Cx, A, *starts = ctx.saved_tensors
        plan = ctx.plan
        b, d, _ = de.shape
        lo = _EXP_FLOOR[de.dtype]
        gy = torch.cat([gy, gy.new_zeros(2, b, d)])  # (N+2, b, d)
        g_de, g_du = torch.zeros_like(de), torch.zeros_like(du)
        g_B, g_C = torch.zeros_like(Bx), torch.zeros_like(Cx)
        g_A = torch.zeros_like(A)
        lam_up = de.new_zeros(ctx.width, b, d, A.shape[1])  # a_below * lambda_h_below, per column
        for (idx, cols, _), V0 in reversed(list(zip(plan.blocks, starts, strict=True))):
            R, M = idx.shape
            flat = idx.reshape(-1)
            _, s = _block_forward(V0.clone(), (de, du, Bx, Cx), A, idx, cols, lo, keep=True)
            a, g, up = s["a"], s["g"], s["up"]
            gyc = gy[flat].reshape(R, M, b, d)
            lam_h = torch.zeros_like(a)
            dC = de.new_zeros(R, M, b, A.shape[1])
            W = lam_up.shape[0]
            for r in reversed(range(R)):  # vertical adjoint, bottom row first
                c, m = cols[r], len(cols[r])
                full = m == W
                lh = lam_h[r, :m]
                torch.mul(gyc[r, :m, :, :, None], s["C"][r, :m, :, None, :], out=lh)
                lh.add_(lam_up if full else lam_up.index_select(0, c))
                if full:
                    torch.mul(lh, a[r, :m], out=lam_up)
                else:
                    lam_up.index_copy_(0, c, lh * a[r, :m])
                h = torch.addcmul(g[r, :m], a[r, :m], up[r, :m])
                torch.matmul(gyc[r, :m, :, None, :], h, out=dC[r, :m, :, None, :])
            # horizontal adjoint, right to left, all rows at once: lam_g_t = lam_h_t + a_{t+1} lam_g_{t+1}
            ddu, dde = de.new_empty(R, M, b, d), de.new_empty(R, M, b, d)
            dB = de.new_empty(R, M, b, A.shape[1])
            lam_g = torch.zeros_like(a[:, 0])
            dA = torch.zeros_like(lam_g)
            Bt, dut, det = s["B"][..., None], s["du"][:, :, :, None, :], s["de"][..., None]
            for t in reversed(range(M)):
                lam_g.add_(lam_h[:, t])
                torch.matmul(lam_g, Bt[:, t], out=ddu[:, t, :, :, None])  # sum_n lam_g B
                torch.matmul(dut[:, t], lam_g, out=dB[:, t, :, None, :])  # sum_d lam_g delta u
                da = lam_h[:, t].mul_(up[:, t])  # da_t = lam_h_t up_t + lam_g_t g_{t-1}, times a_t
                if t > 0:
                    da.addcmul_(lam_g, g[:, t - 1])
                da.mul_(a[:, t])
                dA.addcmul_(da, det[:, t])
                torch.sum(da.mul_(A), -1, out=dde[:, t])
                lam_g.mul_(a[:, t])
            g_A.add_(dA.sum((0, 1)))
            for grad, val in ((g_de, dde), (g_du, ddu), (g_B, dB), (g_C, dC)):
                grad.index_add_(2, flat, val.reshape(R * M, b, -1).permute(1, 2, 0))
        return g_de, g_du, g_B, g_C, g_A, None, None


def selective_scan_2d_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    grid: ScanGrid,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    background: str = "pad",
    block: int | None = None,
) -> Tensor:
    """Row-block scan in plain PyTorch, exact to float32 rounding, with bounded memory.

    Cells are taken in row-major order (tissue cells only with ``skip``; with ``pad`` every cell of the box from
    the first tissue row on, pad cells sharing one decay). Consecutive rows form a block of about ``block``
    state elements (rows x longest row x batch x d x n, default 2**23): the horizontal pass runs all rows of a
    block at once, cell by cell, then the vertical pass updates the column states (W, batch, d, n) row by row.
    Each block runs under activation checkpointing, so only the column states at block boundaries are kept for
    the backward, which recomputes one block at a time: memory is O(batch*d*n*(W * blocks + block)), never
    O(H*W*d*n). Cost is O(tissue) with ``skip`` and O(box) multiply-adds with ``pad`` (pad cells carry state).
    """
    _check(u, delta, A, B, C, grid, background)
    dt = _compute_dtype(u)
    b, d, _ = u.shape
    n = A.shape[1]
    dl = _prep_delta(delta, delta_bias, delta_softplus, dt)
    uf, Af, Bf, Cf = u.to(dt), A.to(dt), B.to(dt), C.to(dt)
    pad_de = _pad_delta(delta_bias, delta_softplus, b, d, uf)
    zeros = uf.new_zeros(b, d, 1)
    de = torch.cat([dl, pad_de[:, :, None], zeros], dim=2)  # extended cells: N = pad, N + 1 = identity filler
    du = torch.cat([dl * uf, zeros, zeros], dim=2)
    Bx = F.pad(Bf, (0, 2))
    Cx = F.pad(Cf, (0, 2))
    plan = _plan(grid, background, b * d * n, block or DEFAULT_BLOCK, u.device)
    y = _Scan2DFn.apply(de, du, Bx, Cx, Af, plan, grid.width)  # (N, b, d)
    y = y.permute(1, 2, 0)
    return _finish(y, uf, None if D is None else D.to(dt), None if z is None else z.to(dt), dt).to(u.dtype)


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------
def _triton_scan2d():
    from mambamil.ops import triton_scan2d

    return triton_scan2d


def selective_scan_2d(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    grid: ScanGrid,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    background: str = "pad",
    backend: str = "auto",
) -> Tensor:
    """2D selective scan of N instances on ``grid`` (see the module docstring); returns y (batch, d, N)."""
    if backend not in BACKENDS_2D:
        raise ValueError(f"selective_scan_2d: unknown backend {backend!r}; choose one of {BACKENDS_2D}")
    if backend == "auto":
        backend = "triton" if u.is_cuda and _triton_usable(u) and A.shape[1] <= 16 else "chunked"
    args = (u, delta, A, B, C, grid, D, z, delta_bias, delta_softplus, background)
    if backend == "reference":
        return selective_scan_2d_reference(*args)
    if backend == "triton":
        return _triton_scan2d().selective_scan_2d_triton(*args)
    return selective_scan_2d_chunked(*args)


def grid_cells(grid: ScanGrid, background: str) -> int:
    """Cells the scan visits: the instances (``skip``) or the box from the first tissue row (``pad``)."""
    return len(grid) if background == "skip" else (grid.height - int(grid.rows.min())) * grid.width

