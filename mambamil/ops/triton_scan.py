"""Triton selective scan: forward and backward kernels with ``selective_scan_fn``'s semantics.

Import this module only through :func:`mambamil.ops.selective_scan._triton_scan` (it imports Triton, which
may be missing). Kernels run compiled on CUDA tensors; on CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported: the kernels are interpreted or compiled according to
the setting at import time, see :data:`INTERPRETED`).

Algorithm (float32 math; u, delta, B, C, z may be fp16/bf16/fp32; the output has u's dtype)
-------------------------------------------------------------------------------------------
The sequence is cut into chunks of ``BLOCK_L`` steps; every program owns one (batch, channel block of
``BLOCK_D`` channels, chunk) tile of ``BLOCK_D x n x BLOCK_L`` states and scans it with
``tl.associative_scan`` over the pairs ``(a_t, b_t) = (exp(delta_t A), delta_t u_t B_t)`` (the composition of
``h -> a h + b`` maps). Only decays in (0, 1] are multiplied; nothing is divided.

forward   F1  every chunk from a zero state: its end state E and total decay P (products of its decays)
          F2  a scan over the chunk axis (blocks of ``BLOCK_C`` chunks, state carried, in place over E) gives
              every chunk's true end state, i.e. the next chunk's start; these (batch*d*n*L/BLOCK_L floats) are
              all the backward keeps besides the inputs
          F3  every chunk again from its true start state: y_t = C_t . h_t, + D u_t, * silu(z_t), stored
backward  the adjoint ``lam_t = C_t g_t + a_{t+1} lam_{t+1}`` (g = dL/dy before gating) reversed in time:
          B1  every chunk from a zero adjoint after its end: its first adjoint and its decay product
          B2  the reverse scan over the chunk axis: the adjoint entering every chunk from the right
          B3  every chunk: h_{t-1} (scan from the saved start), h_t, lam_t (reverse scan), and the gradients
              du, ddelta (through softplus and delta_bias), dz per step; dB, dC summed over channels with
              atomic adds; per-program partial sums of dA, dD, ddelta_bias reduced afterwards by torch.

Memory: inputs/outputs O(batch*d*L); the chunk buffers are O(batch*d*n*L/BLOCK_L), never O(batch*d*n*L).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: kernels were decorated under Triton's interpreter (they then run on CPU tensors only)
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

#: default tiles: channels per program (forward, backward) and time steps per chunk (the chunk length of the
#: saved start states), and warps per program. Chosen so that ptxas reports no register spills for sm_90
#: (``python benchmarks/triton_compile.py``); not yet tuned by timing on a GPU.
FWD_BLOCK_D, BWD_BLOCK_D = 8, 8
BLOCK_L = 32
FWD_WARPS, BWD_WARPS = 4, 8
#: lanes (d*n) and chunks per step of the chunk-axis scans F2/B2
BLOCK_DN = 64
BLOCK_C = 32


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose x -> a1 x + b1, then x -> a2 x + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    """softplus like torch (x for x > 20), log1p by the Goldberg trick (exact for small exp(x))."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _load_dl(ptr, base, offs_d, t, mask, L):
    """(BLOCK_D, BLOCK_L) tile of a (batch, d, L) tensor as float32 (0 where masked)."""
    return tl.load(ptr + base + offs_d[:, None] * L + t[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_nl(ptr, base, offs_n, t, mask, L):
    """(NP, BLOCK_L) tile of a (batch, n, L) tensor as float32 (0 where masked)."""
    return tl.load(ptr + base + offs_n[:, None] * L + t[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _delta_tile(delta_ptr, bias_ptr, base, offs_d, t, dmask, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Processed delta (softplus(delta + bias)) of a tile and the raw pre-softplus value; 0 outside the data."""
    mask = dmask[:, None] & (t[None, :] < L) & (t[None, :] >= 0)
    x = _load_dl(delta_ptr, base, offs_d, t, mask, L)
    if HAS_BIAS:
        x += tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)[:, None]
    dl = x
    if SOFTPLUS:
        dl = _softplus(x)
    return tl.where(mask, dl, 0.0), x


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, P_ptr, E_ptr, start_ptr,
    d, n, L, nc,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    FINAL: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """F1 (FINAL=False): chunk end state E and decay P from zero. F3 (FINAL=True): y from the true start."""
    pid_c = tl.program_id(0)  # chunks on grid axis 0: CUDA allows only 65535 programs on axes 1 and 2
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    offs_n = tl.arange(0, NP)
    tl_idx = tl.arange(0, BLOCK_L)
    t = pid_c * BLOCK_L + tl_idx
    dmask, nmask, tmask = offs_d < d, offs_n < n, t < L
    mdl = dmask[:, None] & tmask[None, :]
    mnl = nmask[:, None] & tmask[None, :]
    mdn = dmask[:, None] & nmask[None, :]
    base_dl = pid_b * d * L
    base_nl = pid_b * n * L
    dl, _ = _delta_tile(delta_ptr, bias_ptr, base_dl, offs_d, t, dmask, L, HAS_BIAS, SOFTPLUS)
    u = _load_dl(u_ptr, base_dl, offs_d, t, mdl, L)
    Bt = _load_nl(B_ptr, base_nl, offs_n, t, mnl, L)
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0)
    a = tl.exp(dl[:, None, :] * A[:, :, None])
    bu = (dl * u)[:, None, :] * Bt[None, :, :]
    acum, bcum = tl.associative_scan((a, bu), 2, _combine)
    # chunk buffers are (batch, d, n, nc [+1]) with the chunk axis contiguous
    off_dn = pid_b * d * n + offs_d[:, None] * n + offs_n[None, :]
    if FINAL:
        start = tl.load(start_ptr + off_dn * nc + pid_c - 1, mask=mdn & (pid_c > 0), other=0.0)  # 0 for chunk 0
        h = acum * start[:, :, None] + bcum
        Ct = _load_nl(C_ptr, base_nl, offs_n, t, mnl, L)
        y = tl.sum(h * Ct[None, :, :], axis=1)
        if HAS_D:
            y += u * tl.load(D_ptr + offs_d, mask=dmask, other=0.0)[:, None]
        if HAS_Z:
            z = _load_dl(z_ptr, base_dl, offs_d, t, mdl, L)
            y = y * (z * tl.sigmoid(z))
        tl.store(out_ptr + base_dl + offs_d[:, None] * L + t[None, :], y.to(out_ptr.dtype.element_ty), mask=mdl)
    else:
        last = (tl_idx == BLOCK_L - 1)[None, None, :]  # padded steps are identities: the last column is the end
        P = tl.sum(tl.where(last, acum, 0.0), axis=2)
        E = tl.sum(tl.where(last, bcum, 0.0), axis=2)
        tl.store(P_ptr + off_dn * nc + pid_c, P, mask=mdn)
        tl.store(E_ptr + off_dn * nc + pid_c, E, mask=mdn)


@triton.jit
def _chunk_scan_kernel(
    P_ptr, E_ptr, total, nc,
    REVERSE: tl.constexpr, BLOCK_DN: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Scan x_c = P_c x_{c-1} + E_c (REVERSE: x_c = P_c x_{c+1} + E_c) over the chunk axis of (lanes, nc)
    buffers from x = 0 outside, writing x_c over E_c in place (each block of chunks is read before it is
    written, by the one program that owns its lanes)."""
    lanes = tl.program_id(0).to(tl.int64) * BLOCK_DN + tl.arange(0, BLOCK_DN)
    lmask = lanes < total
    cidx = tl.arange(0, BLOCK_C)
    carry = tl.zeros([BLOCK_DN], dtype=tl.float32)
    nblocks = tl.cdiv(nc, BLOCK_C)
    for i in range(nblocks):
        if REVERSE:  # noqa: SIM108 (a constexpr branch in a Triton kernel)
            c = (nblocks - 1 - i) * BLOCK_C + cidx
        else:
            c = i * BLOCK_C + cidx
        m = lmask[:, None] & (c < nc)[None, :]
        P = tl.load(P_ptr + lanes[:, None] * nc + c[None, :], mask=m, other=1.0)
        E = tl.load(E_ptr + lanes[:, None] * nc + c[None, :], mask=m, other=0.0)
        pc, ec = tl.associative_scan((P, E), 1, _combine, reverse=REVERSE)
        x = pc * carry[:, None] + ec
        tl.store(E_ptr + lanes[:, None] * nc + c[None, :], x, mask=m)
        if REVERSE:
            carry = tl.sum(tl.where((cidx == 0)[None, :], x, 0.0), axis=1)
        else:
            carry = tl.sum(tl.where((cidx == BLOCK_C - 1)[None, :], x, 0.0), axis=1)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gout_ptr, start_ptr, lam_ptr,
    P_ptr, E_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dDp_ptr, dbp_ptr,
    d, n, L, nc,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    FINAL: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """B1 (FINAL=False): chunk-local first adjoint E and decay product P. B3 (FINAL=True): all gradients.

    In B3 the per-program dA partial goes to P_ptr (the B1 buffer, free by then).
    """
    pid_c = tl.program_id(0)  # chunks on grid axis 0: CUDA allows only 65535 programs on axes 1 and 2
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    offs_n = tl.arange(0, NP)
    tl_idx = tl.arange(0, BLOCK_L)
    t = pid_c * BLOCK_L + tl_idx
    dmask, nmask, tmask = offs_d < d, offs_n < n, t < L
    mdl = dmask[:, None] & tmask[None, :]
    mnl = nmask[:, None] & tmask[None, :]
    mdn = dmask[:, None] & nmask[None, :]
    base_dl = pid_b * d * L
    base_nl = pid_b * n * L
    off_dn = pid_b * d * n + offs_d[:, None] * n + offs_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0)
    Ct = _load_nl(C_ptr, base_nl, offs_n, t, mnl, L)
    g = _load_dl(gout_ptr, base_dl, offs_d, t, mdl, L)
    if HAS_Z:
        z = _load_dl(z_ptr, base_dl, offs_d, t, mdl, L)
        sig = tl.sigmoid(z)
        gz = g
        g = gz * (z * sig)  # dL/dy before gating
    # adjoint map of step t: lam_t = a_{t+1} lam_{t+1} + C_t g_t  (a at t+1: a shifted load; 1 past the end)
    dl_next, _ = _delta_tile(delta_ptr, bias_ptr, base_dl, offs_d, t + 1, dmask, L, HAS_BIAS, SOFTPLUS)
    a_next = tl.exp(dl_next[:, None, :] * A[:, :, None])
    cg = Ct[None, :, :] * g[:, None, :]
    ap, lb = tl.associative_scan((a_next, cg), 2, _combine, reverse=True)
    if FINAL:
        lam_carry = tl.load(lam_ptr + off_dn * nc + pid_c + 1, mask=mdn & (pid_c + 1 < nc), other=0.0)
        lam = ap * lam_carry[:, :, None] + lb
        # h_{t-1}: scan of the steps shifted by one, the chunk's first element the identity (1, 0)
        t_prev = t - 1
        dl_p, _ = _delta_tile(delta_ptr, bias_ptr, base_dl, offs_d, t_prev, dmask, L, HAS_BIAS, SOFTPLUS)
        first = (tl_idx == 0)[None, :]
        dl_p = tl.where(first, 0.0, dl_p)
        mprev = dmask[:, None] & (t_prev >= 0)[None, :] & (t_prev < L)[None, :]
        u_p = _load_dl(u_ptr, base_dl, offs_d, t_prev, mprev, L)
        B_p = _load_nl(B_ptr, base_nl, offs_n, t_prev, nmask[:, None] & ((t_prev >= 0) & (t_prev < L))[None, :], L)
        a_p = tl.exp(dl_p[:, None, :] * A[:, :, None])
        bu_p = (dl_p * u_p)[:, None, :] * B_p[None, :, :]
        acum, bcum = tl.associative_scan((a_p, bu_p), 2, _combine)
        start = tl.load(start_ptr + off_dn * nc + pid_c - 1, mask=mdn & (pid_c > 0), other=0.0)  # 0 for chunk 0
        h_prev = acum * start[:, :, None] + bcum
        # step t itself
        dl, x = _delta_tile(delta_ptr, bias_ptr, base_dl, offs_d, t, dmask, L, HAS_BIAS, SOFTPLUS)
        u = _load_dl(u_ptr, base_dl, offs_d, t, mdl, L)
        Bt = _load_nl(B_ptr, base_nl, offs_n, t, mnl, L)
        a = tl.exp(dl[:, None, :] * A[:, :, None])
        w = lam * a * h_prev  # lam_t a_t h_{t-1}
        lamB = tl.sum(lam * Bt[None, :, :], axis=1)
        du = dl * lamB
        ddl = u * lamB + tl.sum(w * A[:, :, None], axis=1)
        tl.store(P_ptr + off_dn * nc + pid_c, tl.sum(w * dl[:, None, :], axis=2), mask=mdn)  # dA partial
        tl.atomic_add(dB_ptr + base_nl + offs_n[:, None] * L + t[None, :], tl.sum(lam * (dl * u)[:, None, :], axis=0),
                      mask=mnl, sem="relaxed")  # fmt: skip
        h = a * h_prev + (dl * u)[:, None, :] * Bt[None, :, :]
        tl.atomic_add(dC_ptr + base_nl + offs_n[:, None] * L + t[None, :], tl.sum(h * g[:, None, :], axis=0),
                      mask=mnl, sem="relaxed")  # fmt: skip
        if HAS_Z:
            y = tl.sum(h * Ct[None, :, :], axis=1)
            if HAS_D:
                y += u * tl.load(D_ptr + offs_d, mask=dmask, other=0.0)[:, None]
            dz = gz * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_ptr + base_dl + offs_d[:, None] * L + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mdl)
        off_part = (pid_b * nc + pid_c) * d + offs_d
        if HAS_D:
            du += g * tl.load(D_ptr + offs_d, mask=dmask, other=0.0)[:, None]
            tl.store(dDp_ptr + off_part, tl.sum(g * u, axis=1), mask=dmask)
        if SOFTPLUS:
            ddl = ddl * tl.sigmoid(x)
        ddl = tl.where(mdl, ddl, 0.0)
        if HAS_BIAS:
            tl.store(dbp_ptr + off_part, tl.sum(ddl, axis=1), mask=dmask)
        tl.store(du_ptr + base_dl + offs_d[:, None] * L + t[None, :], du.to(du_ptr.dtype.element_ty), mask=mdl)
        tl.store(ddelta_ptr + base_dl + offs_d[:, None] * L + t[None, :], ddl.to(ddelta_ptr.dtype.element_ty),
                 mask=mdl)  # fmt: skip
    else:
        first = (tl_idx == 0)[None, None, :]
        tl.store(P_ptr + off_dn * nc + pid_c, tl.sum(tl.where(first, ap, 0.0), axis=2), mask=mdn)
        tl.store(E_ptr + off_dn * nc + pid_c, tl.sum(tl.where(first, lb, 0.0), axis=2), mask=mdn)


def _flags(D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool) -> dict:
    return {"HAS_D": D is not None, "HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None,
            "SOFTPLUS": bool(delta_softplus)}  # fmt: skip


def _chunk_scan(P: Tensor, E: Tensor, reverse: bool) -> Tensor:
    """Chunk-axis scan of (batch, d, n, nc) buffers, in place in E: the state after every chunk (forward) or
    the adjoint at every chunk's first step (reverse). Returns E."""
    total = P.numel() // P.shape[-1]
    _chunk_scan_kernel[(triton.cdiv(total, BLOCK_DN),)](P, E, total, P.shape[-1], REVERSE=reverse, BLOCK_DN=BLOCK_DN,
                                                        BLOCK_C=BLOCK_C)  # fmt: skip
    return E


class TritonScanFn(torch.autograd.Function):
    """Selective scan with fused D / z gating, softplus and delta_bias; returns (out, last_state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_d, block_l):  # type: ignore[override]
        u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
        A = A.float().contiguous()
        D = None if D is None else D.float().contiguous()
        z = None if z is None else z.contiguous()
        delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
        b, d, L = u.shape
        n = A.shape[1]
        block_l = block_l or BLOCK_L
        nc = triton.cdiv(L, block_l)
        np2 = triton.next_power_of_2(n)
        f32 = torch.float32
        out = torch.empty_like(u)
        P = u.new_empty(b, d, n, nc, dtype=f32)
        E = torch.empty_like(P)
        fwd_d = block_d or FWD_BLOCK_D
        grid = (nc, triton.cdiv(d, fwd_d), b)
        flags = _flags(D, z, delta_bias, delta_softplus)
        common = dict(d=d, n=n, L=L, nc=nc, BLOCK_D=fwd_d, NP=np2, BLOCK_L=block_l, num_warps=FWD_WARPS, **flags)
        dummy = E  # stands for absent optional tensors (never read: their flag is off)
        args = (u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
                dummy if delta_bias is None else delta_bias, out)  # fmt: skip
        _scan_fwd_kernel[grid](*args, P, E, E, FINAL=False, **common)
        ends = _chunk_scan(P, E, reverse=False)  # state after every chunk: chunk c starts from ends[c - 1]
        del P  # freed before the output pass
        _scan_fwd_kernel[grid](*args, ends, ends, ends, FINAL=True, **common)
        last = ends[..., nc - 1].clone()
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ends)
        ctx.cfg = (flags, block_d, block_l)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, gout, _glast):  # type: ignore[override]
        u, delta, A, B, C, D, z, delta_bias, ends = ctx.saved_tensors
        flags, block_d, block_l = ctx.cfg
        block_d = block_d or BWD_BLOCK_D
        b, d, L = u.shape
        n = A.shape[1]
        nc = ends.shape[-1]
        f32 = torch.float32
        gout = torch.zeros_like(u) if gout is None else gout.contiguous()
        P = u.new_empty(b, d, n, nc, dtype=f32)
        E = torch.empty_like(P)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = None if z is None else torch.empty_like(z)
        dB32 = u.new_zeros(b, n, L, dtype=f32)
        dC32 = torch.zeros_like(dB32)
        dDp = u.new_zeros(b, nc, d, dtype=f32) if D is not None else P
        dbp = u.new_zeros(b, nc, d, dtype=f32) if delta_bias is not None else P
        grid = (nc, triton.cdiv(d, block_d), b)
        np2 = triton.next_power_of_2(n)
        common = dict(d=d, n=n, L=L, nc=nc, BLOCK_D=block_d, NP=np2, BLOCK_L=block_l, num_warps=BWD_WARPS, **flags)
        ins = (u, delta, A, B, C, P if D is None else D, P if z is None else z, P if delta_bias is None else delta_bias,
               gout, ends)  # fmt: skip
        outs = (du, ddelta, P if dz is None else dz, dB32, dC32, dDp, dbp)
        _scan_bwd_kernel[grid](*ins, P, P, E, *outs, FINAL=False, **common)
        lam = _chunk_scan(P, E, reverse=True)  # in place: lam is E
        _scan_bwd_kernel[grid](*ins, lam, P, P, *outs, FINAL=True, **common)
        dA = P.sum((0, 3))
        dD = None if D is None else dDp.sum((0, 1))
        dbias = None if delta_bias is None else dbp.sum((0, 1))
        return du, ddelta, dA, dB32.to(B.dtype), dC32.to(C.dtype), dD, dz, dbias, None, None, None


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    block_d: int | None = None,
    block_l: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Triton selective scan; shapes as :func:`mambamil.ops.selective_scan` (checked there)."""
    if u.is_cuda == INTERPRETED:
        need = "CPU tensors (TRITON_INTERPRET=1 is set)" if INTERPRETED else "CUDA tensors"
        raise RuntimeError(f"selective_scan: backend 'triton' needs {need}")
    out, last = TritonScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_d, block_l)
    return (out, last) if return_last_state else out


def compile_kernels(arch: int = 90, dtype: str = "bf16", n: int = 16) -> dict[str, object]:
    """Compile every kernel variant the autograd Function launches (all options on) for ``sm_<arch>``.

    Needs no GPU (Triton's bundled ptxas); returns ``{name: CompiledKernel}`` (``.asm["ptx"]``, ``.asm["cubin"]``).
    Used to check on CPU-only machines that the CUDA code path compiles.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    io = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "gout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
    flags = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "NP": triton.next_power_of_2(n),
             "BLOCK_L": BLOCK_L}  # fmt: skip
    variants = {
        "fwd_chunk_states": (_scan_fwd_kernel, {**flags, "FINAL": False, "BLOCK_D": FWD_BLOCK_D}, FWD_WARPS),
        "fwd_output": (_scan_fwd_kernel, {**flags, "FINAL": True, "BLOCK_D": FWD_BLOCK_D}, FWD_WARPS),
        "bwd_chunk_adjoints": (_scan_bwd_kernel, {**flags, "FINAL": False, "BLOCK_D": BWD_BLOCK_D}, BWD_WARPS),
        "bwd_gradients": (_scan_bwd_kernel, {**flags, "FINAL": True, "BLOCK_D": BWD_BLOCK_D}, BWD_WARPS),
        "chunk_scan": (_chunk_scan_kernel, {"REVERSE": False, "BLOCK_DN": BLOCK_DN, "BLOCK_C": BLOCK_C}, 4),
        "chunk_scan_reverse": (_chunk_scan_kernel, {"REVERSE": True, "BLOCK_DN": BLOCK_DN, "BLOCK_C": BLOCK_C}, 4),
    }
    out = {}
    for name, (fn, consts, warps) in variants.items():
        sig = {
            a: "constexpr" if a in consts else "i32" if a in ("d", "n", "L", "nc", "total")
            else f"*{dtype}" if a in io else "*fp32"
            for a in fn.arg_names
        }  # fmt: skip
        src = ASTSource(fn, sig, consts)
        out[name] = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    return out
