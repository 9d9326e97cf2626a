"""Triton kernel of the 2D selective scan (:mod:`mambamil.ops.scan2d`): the forward pass on the GPU.

Import only through :func:`mambamil.ops.scan2d._triton_scan2d` (it imports Triton). Like
:mod:`mambamil.ops.triton_scan`, kernels run compiled on CUDA tensors, on CPU tensors only under Triton's
interpreter (``TRITON_INTERPRET=1`` before Triton is imported).

Algorithm: the chunked scan's plan (row-major cells, blocks of whole rows; pad cells are extended cell N) is
flattened into one cell stream per block: (extended cell index, grid column, row-start flag). One program owns one
(batch, channel block) tile of ``BLOCK_D x NP`` (channel, state) lanes and walks the block's cells in order, the
horizontal state ``g`` in registers (reset at a row start) and the column states ``V`` (W, b, d, n) in global
memory: per cell ``a = exp(delta A)``, ``g = a g + delta u B``, ``h = a V[col] + g``, ``V[col] = h``,
``y = C . h``. Only decays in (0, 1] are multiplied, nothing is divided, so it is exact to float32 rounding like
the chunked scan. The column states at every block start are kept (as the chunked scan keeps them) and the
backward is the chunked scan's block-wise backward (:class:`mambamil.ops.scan2d._Scan2DFn`), which runs on the
GPU tensors as they are. Parallelism is batch x channel blocks (d=1024: 64 programs), the cells run in sequence.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mambamil.ops.scan2d import _EXP_FLOOR, ScanGrid, _prepare, _Scan2DFn

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
#: channels per program and warps
BLOCK_D, WARPS = 16, 4
MAX_N = 16


@triton.jit
def _scan2d_fwd_kernel(
    de_ptr, du_ptr, B_ptr, C_ptr, A_ptr, V_ptr, y_ptr, cell_ptr, col_ptr, start_ptr,
    ncells, b, d, n, N2,
    LO: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr,
):  # fmt: skip
    """One (batch, channel block) over a block's cell stream; de, du (b, d, N2), B, C (b, n, N2), A (d, n),
    V (W, b, d, n) in place, y (N2, b, d)."""
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    dmask, nmask = offs_d < d, offs_n < n
    mdn = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0)
    g = tl.zeros((BLOCK_D, NP), dtype=tl.float32)
    for t in range(ncells):
        k = tl.load(cell_ptr + t)
        col = tl.load(col_ptr + t)
        first = tl.load(start_ptr + t)
        de = tl.load(de_ptr + (pid_b * d + offs_d) * N2 + k, mask=dmask, other=0.0)
        du = tl.load(du_ptr + (pid_b * d + offs_d) * N2 + k, mask=dmask, other=0.0)
        Bv = tl.load(B_ptr + (pid_b * n + offs_n) * N2 + k, mask=nmask, other=0.0)
        Cv = tl.load(C_ptr + (pid_b * n + offs_n) * N2 + k, mask=nmask, other=0.0)
        a = tl.exp(tl.maximum(de[:, None] * A, LO))
        g = tl.where(first != 0, 0.0, g)
        g = a * g + du[:, None] * Bv[None, :]
        voff = ((col * b + pid_b) * d + offs_d[:, None]) * n + offs_n[None, :]
        h = a * tl.load(V_ptr + voff, mask=mdn, other=0.0) + g
        tl.store(V_ptr + voff, h, mask=mdn)
        tl.store(y_ptr + (k * b + pid_b) * d + offs_d, tl.sum(h * Cv[None, :], axis=1), mask=dmask)


def cell_stream(idx: Tensor, cols: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """A block's cells in scan order: extended cell index, grid column and row-start flag (int32)."""
    cells = torch.cat([idx[r, : len(c)] for r, c in enumerate(cols)])
    col = torch.cat(cols)
    start = torch.zeros(len(cells), dtype=torch.int32, device=idx.device)
    start[torch.cumsum(torch.tensor([0] + [len(c) for c in cols[:-1]], device=idx.device), 0)] = 1
    return cells.to(torch.int32), col.to(torch.int32), start


def _launch(V: Tensor, ins: tuple[Tensor, ...], A: Tensor, y: Tensor, stream: tuple[Tensor, Tensor, Tensor]) -> None:
    de, du, Bx, Cx = ins
    b, d, N2 = de.shape
    n = A.shape[1]
    grid = (b, triton.cdiv(d, BLOCK_D))
    _scan2d_fwd_kernel[grid](
        de, du, Bx, Cx, A, V, y, *stream, len(stream[0]), b, d, n, N2,
        LO=_EXP_FLOOR[torch.float32], BLOCK_D=BLOCK_D, NP=triton.next_power_of_2(n), num_warps=WARPS,
    )  # fmt: skip


class _Scan2DTritonFn(_Scan2DFn):
    """The chunked scan's autograd Function with the forward blocks run by the Triton kernel."""

    @staticmethod
    def forward(ctx, de, du, Bx, Cx, A, plan, width, keep_starts):  # type: ignore[override]
        b, d, N2 = de.shape
        V = de.new_zeros(width, b, d, A.shape[1])
        y = de.new_zeros(N2, b, d)
        starts = []
        for idx, cols, _ in plan.blocks:
            if keep_starts:
                starts.append(V.clone())
            _launch(V, (de, du, Bx, Cx), A, y, cell_stream(idx, cols))
        ctx.save_for_backward(de, du, Bx, Cx, A, *starts)
        ctx.plan, ctx.width = plan, width
        return y[: N2 - 2]


def selective_scan_2d_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, grid: ScanGrid, D: Tensor | None = None,
    z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False, background: str = "pad",
) -> Tensor:  # fmt: skip
    """:func:`mambamil.ops.scan2d.selective_scan_2d` with the Triton forward (float32 math); CUDA tensors, or CPU
    tensors under the interpreter."""
    if u.is_cuda == INTERPRETED:
        where = "CPU tensors under TRITON_INTERPRET=1" if INTERPRETED else "CUDA tensors"
        raise RuntimeError(f"selective_scan_2d: backend 'triton' needs {where} here")
    if A.shape[1] > MAX_N:
        raise ValueError(f"selective_scan_2d: backend 'triton' takes d_state <= {MAX_N}, got {A.shape[1]}")
    return _prepare(u, delta, A, B, C, grid, D, z, delta_bias, delta_softplus, background, _Scan2DTritonFn,
                    torch.float32)  # fmt: skip


def compile_kernel(arch: int = 90, n: int = 16, d: int = 1024, ncells: int = 90_000):
    """Compile the forward kernel for ``sm_<arch>`` without a GPU (Triton's bundled ptxas) as the JIT specialises
    it (16-aligned pointers; integers divisible by 16 marked so); returns (CompiledKernel, options, elements per
    loop iteration), for benchmarks/triton_compile.py."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {"LO": _EXP_FLOOR[torch.float32], "BLOCK_D": BLOCK_D, "NP": triton.next_power_of_2(n)}
    ints = {"ncells": ncells, "b": 1, "d": d, "n": n, "N2": ncells + 2}
    sig, attrs = {}, {}
    for i, name in enumerate(_scan2d_fwd_kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ints:
            sig[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "*i32" if name in ("cell_ptr", "col_ptr", "start_ptr") else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
    options = {"num_warps": WARPS}
    kernel = triton.compile(ASTSource(_scan2d_fwd_kernel, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                            options=options)  # fmt: skip
    return kernel, options, BLOCK_D * triton.next_power_of_2(n)


__all__ = ["INTERPRETED", "cell_stream", "compile_kernel", "selective_scan_2d_triton"]
