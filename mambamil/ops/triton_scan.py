"""Triton selective scan: forward and backward kernels with ``selective_scan_fn``'s semantics.

Import this module only through :func:`mambamil.ops.selective_scan._triton_scan` (it imports Triton, which
may be missing). Kernels run compiled on CUDA tensors; on CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported: the kernels are interpreted or compiled according to
the setting at import time, see :data:`INTERPRETED`).

Math in float32 (u, delta, B, C, z may be fp16/bf16/fp32; the output has u's dtype). Memory: inputs/outputs
O(b*d*L), saved segment-start states b*d*n*ceil(L/seg_len), a backward scratch bounded by the number of persistent
programs (never O(b*d*n*L / BLOCK_L)). How the kernels tile, segment and scan, forward and backward: docs/scan.md.
"""

from __future__ import annotations

import math
import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor

#: kernels were decorated under Triton's interpreter (they then run on CPU tensors only)
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

#: steps per sub-chunk (held by one thread), forward and backward, and warps per program; the channels per
#: program are ``THREADS // NP`` so that the (channel, state) plane exactly covers the program's threads
FWD_BLOCK_L, BWD_BLOCK_L = 16, 4
WARPS = 4
#: register cap of the gradient pass (ptxas: 141 without it; none spilled with it, see benchmarks/triton_compile.py)
BWD_MAXNREG = 128
THREADS = 32 * WARPS
#: largest d_state the kernels take (NP = next power of two); larger ones fall back to ``chunked``
MAX_N = 16
#: segment length bounds (steps) and the grid it aims for: WAVES waves of CTAS_PER_SM programs on every SM.
#: SEG_MAX bounds the gradient pass's scratch (its persistent programs, CTAS_PER_SM per SM, hold the states at
#: every backward sub-chunk start of one segment: 64 KB each at n=16); the saved states are 4*b*d*n*L/seg_len B
SEG_MIN, SEG_MAX = 256, 512
WAVES, CTAS_PER_SM, DEFAULT_SMS = 4, 4, 132
#: lanes (d*n) per program of the segment-axis loops F2/B2
BLOCK_DN = 128


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
def _ld(ptr, base, stride, offs, t, mask):
    """Time-major (BLOCK_L, channels) tile of a (batch, channels, L) tensor with unit time stride, as float32."""
    return tl.load(ptr + base + offs[None, :] * stride + t[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _delta_tile(delta_ptr, bias_ptr, base, sd, offs_d, t, dmask, L, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(BLOCK_L, BLOCK_D) processed delta (softplus(delta + bias)), 0 outside the data, and the raw value."""
    mask = dmask[None, :] & (t[:, None] < L) & (t[:, None] >= 0)
    x = _ld(delta_ptr, base, sd, offs_d, t, mask)
    if HAS_BIAS:
        x += tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    dl = x
    if SOFTPLUS:
        dl = _softplus(x)
    return tl.where(mask, dl, 0.0), x


@triton.jit
def _last_row(x, rows, BLOCK_L: tl.constexpr):
    """Row BLOCK_L - 1 of a time-major tile (an in-thread select: the time axis is in registers)."""
    return tl.sum(tl.where((rows == BLOCK_L - 1)[:, None, None], x, 0.0), axis=0)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, P_ptr, E_ptr,
    su_b, su_d, sdl_b, sdl_d, sB_b, sB_n, sC_b, sC_n, sz_b, sz_d,
    d, n, L, seg_len, nseg,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    FINAL: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """F1 (FINAL=False): segment end state E and decay product P from zero. F3 (FINAL=True): y from the start
    state read from E (the segment starts after F2)."""
    pid_s = tl.program_id(0)  # segments on grid axis 0: CUDA allows only 65535 programs on axes 1 and 2
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    offs_n = tl.arange(0, NP)
    rows = tl.arange(0, BLOCK_L)
    dmask, nmask = offs_d < d, offs_n < n
    mdn = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0)[None, :, :]
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0)[None, :]
    off_dn = ((pid_b * nseg + pid_s) * d + offs_d[:, None]) * n + offs_n[None, :]  # (b, nseg, d, n) buffers
    if FINAL:
        h = tl.load(E_ptr + off_dn, mask=mdn, other=0.0)
    else:
        h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
        P = tl.full([BLOCK_D, NP], 1.0, dtype=tl.float32)
    t0 = pid_s * seg_len
    for k in range(0, tl.minimum(seg_len, L - t0), BLOCK_L):
        t = t0 + k + rows
        tmask = t < L
        mdl = tmask[:, None] & dmask[None, :]
        mnl = tmask[:, None] & nmask[None, :]
        dl, _ = _delta_tile(delta_ptr, bias_ptr, pid_b * sdl_b, sdl_d, offs_d, t, dmask, L, HAS_BIAS, SOFTPLUS)
        u = _ld(u_ptr, pid_b * su_b, su_d, offs_d, t, mdl)
        Bt = _ld(B_ptr, pid_b * sB_b, sB_n, offs_n, t, mnl)
        a = tl.exp(dl[:, :, None] * A)
        bu = (dl * u)[:, :, None] * Bt[:, None, :]
        acum, bcum = tl.associative_scan((a, bu), 0, _combine)
        hs = acum * h[None, :, :] + bcum
        h = _last_row(hs, rows, BLOCK_L)  # padded steps are identities
        if FINAL:
            Ct = _ld(C_ptr, pid_b * sC_b, sC_n, offs_n, t, mnl)
            y = tl.sum(hs * Ct[:, None, :], axis=2)
            if HAS_D:
                y += u * Dv
            if HAS_Z:
                z = _ld(z_ptr, pid_b * sz_b, sz_d, offs_d, t, mdl)
                y = y * (z * tl.sigmoid(z))
            optr = out_ptr + pid_b * d * L + offs_d[None, :] * L + t[:, None]
            tl.store(optr, y.to(out_ptr.dtype.element_ty), mask=mdl)
        else:
            P = P * _last_row(acum, rows, BLOCK_L)
    if not FINAL:
        tl.store(P_ptr + off_dn, P, mask=mdn)
        tl.store(E_ptr + off_dn, h, mask=mdn)


@triton.jit
def _segment_loop_kernel(P_ptr, E_ptr, last_ptr, lanes, nseg, REVERSE: tl.constexpr, BLOCK_DN: tl.constexpr):
    """Over the segment axis of (b, nseg, lanes) buffers, in place in E: forward, E[s] <- x_s (the value before
    segment s) with x_{s+1} = P_s x_s + E_s; REVERSE, the same recurrence from the last segment backwards (by
    index arithmetic: no reverse scan). x after the loop goes to last_ptr (b, lanes) when given (not REVERSE)."""
    j = tl.program_id(0) * BLOCK_DN + tl.arange(0, BLOCK_DN)
    pid_b = tl.program_id(1).to(tl.int64)
    m = j < lanes
    x = tl.zeros([BLOCK_DN], dtype=tl.float32)
    for i in range(nseg):
        if REVERSE:  # noqa: SIM108 (a constexpr branch in a Triton kernel)
            s = nseg - 1 - i
        else:
            s = i
        off = (pid_b * nseg + s) * lanes + j
        P = tl.load(P_ptr + off, mask=m, other=1.0)
        E = tl.load(E_ptr + off, mask=m, other=0.0)
        tl.store(E_ptr + off, x, mask=m)
        x = P * x + E
    if not REVERSE:
        tl.store(last_ptr + pid_b * lanes + j, x, mask=m)


@triton.jit
def _bwd_adjoint_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, gout_ptr, P_ptr, E_ptr,
    sdl_b, sdl_d, sC_b, sC_n, sz_b, sz_d, sg_b, sg_d,
    d, n, L, seg_len, nseg,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """B1: the segment's adjoint at its first step from zero after its end (E) and the product of its a_{t+1} (P),
    sub-chunks visited from the segment's end, each loaded in reversed time order and scanned forward."""
    pid_s = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    offs_n = tl.arange(0, NP)
    rows = tl.arange(0, BLOCK_L)
    dmask, nmask = offs_d < d, offs_n < n
    mdn = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0)[None, :, :]
    q = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    P = tl.full([BLOCK_D, NP], 1.0, dtype=tl.float32)
    t0 = pid_s * seg_len
    nsub = tl.cdiv(tl.minimum(seg_len, L - t0), BLOCK_L)
    for jj in range(nsub):
        t = t0 + (nsub - 1 - jj) * BLOCK_L + (BLOCK_L - 1 - rows)  # reversed time
        tmask = t < L
        mdl = tmask[:, None] & dmask[None, :]
        mnl = tmask[:, None] & nmask[None, :]
        dl_next, _ = _delta_tile(delta_ptr, bias_ptr, pid_b * sdl_b, sdl_d, offs_d, t + 1, dmask, L, HAS_BIAS,
                                 SOFTPLUS)  # fmt: skip
        g = _ld(gout_ptr, pid_b * sg_b, sg_d, offs_d, t, mdl)
        if HAS_Z:
            z = _ld(z_ptr, pid_b * sz_b, sz_d, offs_d, t, mdl)
            g = g * (z * tl.sigmoid(z))
        Ct = _ld(C_ptr, pid_b * sC_b, sC_n, offs_n, t, mnl)
        a_next = tl.exp(dl_next[:, :, None] * A)
        acum, qcum = tl.associative_scan((a_next, g[:, :, None] * Ct[:, None, :]), 0, _combine)
        q = _last_row(acum * q[None, :, :] + qcum, rows, BLOCK_L)
        P = P * _last_row(acum, rows, BLOCK_L)
    off_dn = ((pid_b * nseg + pid_s) * d + offs_d[:, None]) * n + offs_n[None, :]
    tl.store(P_ptr + off_dn, P, mask=mdn)
    tl.store(E_ptr + off_dn, q, mask=mdn)


@triton.jit
def _bwd_grad_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gout_ptr, S_ptr, Q_ptr, H_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    su_b, su_d, sdl_b, sdl_d, sB_b, sB_n, sC_b, sC_n, sz_b, sz_d, sg_b, sg_d,
    d, n, L, seg_len, nseg, nsub_max, items, nprog,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """B3: every gradient; persistent programs over the (batch, channel block, segment) items. S: segment start
    states, Q: adjoint entering every segment from the right, H: per-program scratch (nprog, nsub_max, BLOCK_D, NP)
    of the sub-chunk start states."""
    pid = tl.program_id(0)
    ndb = tl.cdiv(d, BLOCK_D)
    offs_n = tl.arange(0, NP)
    rows = tl.arange(0, BLOCK_L)
    nmask = offs_n < n
    off_h = (pid.to(tl.int64) * nsub_max * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]) * NP + offs_n[None, :]
    for w in range(pid, items, nprog):
        pid_s = w % nseg
        pid_d = (w // nseg) % ndb
        pid_b = (w // (nseg * ndb)).to(tl.int64)
        offs_d = (pid_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
        dmask = offs_d < d
        mdn = dmask[:, None] & nmask[None, :]
        A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mdn, other=0.0)[None, :, :]
        off_dn = ((pid_b * nseg + pid_s) * d + offs_d[:, None]) * n + offs_n[None, :]
        t0 = pid_s * seg_len
        nsub = tl.cdiv(tl.minimum(seg_len, L - t0), BLOCK_L)
        # (A) the state at the start of every sub-chunk, into this program's scratch
        h = tl.load(S_ptr + off_dn, mask=mdn, other=0.0)
        tl.debug_barrier()  # the previous item's reads of the scratch are done
        for j in range(nsub):
            tl.store(H_ptr + off_h + j * BLOCK_D * NP, h)
            t = t0 + j * BLOCK_L + rows
            tmask = t < L
            dl, _ = _delta_tile(delta_ptr, bias_ptr, pid_b * sdl_b, sdl_d, offs_d, t, dmask, L, HAS_BIAS, SOFTPLUS)
            u = _ld(u_ptr, pid_b * su_b, su_d, offs_d, t, tmask[:, None] & dmask[None, :])
            Bt = _ld(B_ptr, pid_b * sB_b, sB_n, offs_n, t, tmask[:, None] & nmask[None, :])
            acum, bcum = tl.associative_scan((tl.exp(dl[:, :, None] * A), (dl * u)[:, :, None] * Bt[:, None, :]), 0,
                                             _combine)  # fmt: skip
            h = _last_row(acum * h[None, :, :] + bcum, rows, BLOCK_L)
        tl.debug_barrier()  # the scratch is written
        # (B) the sub-chunks in reverse, carrying the adjoint q
        q = tl.load(Q_ptr + off_dn, mask=mdn, other=0.0)
        dA = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0)[None, :]
            dD = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
        for jj in range(nsub):
            j = nsub - 1 - jj
            t = t0 + j * BLOCK_L + rows  # forward time
            tr = t0 + j * BLOCK_L + (BLOCK_L - 1 - rows)  # reversed time
            tmask, rmask = t < L, tr < L
            mdl, mnl = tmask[:, None] & dmask[None, :], tmask[:, None] & nmask[None, :]
            # adjoint: q_t = C_t g_t + a_{t+1} q_{t+1}, a forward scan over the reversed-time tile
            dl_next, _ = _delta_tile(delta_ptr, bias_ptr, pid_b * sdl_b, sdl_d, offs_d, tr + 1, dmask, L, HAS_BIAS,
                                     SOFTPLUS)  # fmt: skip
            mrl = rmask[:, None] & dmask[None, :]
            g_r = _ld(gout_ptr, pid_b * sg_b, sg_d, offs_d, tr, mrl)
            if HAS_Z:
                z_r = _ld(z_ptr, pid_b * sz_b, sz_d, offs_d, tr, mrl)
                g_r = g_r * (z_r * tl.sigmoid(z_r))
            C_r = _ld(C_ptr, pid_b * sC_b, sC_n, offs_n, tr, rmask[:, None] & nmask[None, :])
            ar, qr = tl.associative_scan((tl.exp(dl_next[:, :, None] * A), g_r[:, :, None] * C_r[:, None, :]), 0,
                                         _combine)  # fmt: skip
            qr = ar * q[None, :, :] + qr
            q = _last_row(qr, rows, BLOCK_L)  # q at the sub-chunk's first step
            lam = tl.flip(qr, 0)  # forward time
            # states: h_t by a forward scan from the scratch; a_t h_{t-1} = h_t - delta_t u_t B_t
            h0 = tl.load(H_ptr + off_h + j * BLOCK_D * NP)
            dl, x = _delta_tile(delta_ptr, bias_ptr, pid_b * sdl_b, sdl_d, offs_d, t, dmask, L, HAS_BIAS, SOFTPLUS)
            u = _ld(u_ptr, pid_b * su_b, su_d, offs_d, t, mdl)
            Bt = _ld(B_ptr, pid_b * sB_b, sB_n, offs_n, t, mnl)
            Ct = _ld(C_ptr, pid_b * sC_b, sC_n, offs_n, t, mnl)
            gz = _ld(gout_ptr, pid_b * sg_b, sg_d, offs_d, t, mdl)
            g = gz
            if HAS_Z:
                z = _ld(z_ptr, pid_b * sz_b, sz_d, offs_d, t, mdl)
                sig = tl.sigmoid(z)
                g = gz * (z * sig)
            dlu = dl * u
            bu = dlu[:, :, None] * Bt[:, None, :]
            acum, bcum = tl.associative_scan((tl.exp(dl[:, :, None] * A), bu), 0, _combine)
            hs = acum * h0[None, :, :] + bcum
            wq = lam * (hs - bu)  # q_t a_t h_{t-1}
            lamB = tl.sum(lam * Bt[:, None, :], axis=2)
            dA += tl.sum(wq * dl[:, :, None], axis=0)
            ddl = u * lamB + tl.sum(wq * A, axis=2)
            du = dl * lamB
            tl.atomic_add(dB_ptr + pid_b * n * L + offs_n[None, :] * L + t[:, None],
                          tl.sum(lam * dlu[:, :, None], axis=1), mask=mnl, sem="relaxed")  # fmt: skip
            tl.atomic_add(dC_ptr + pid_b * n * L + offs_n[None, :] * L + t[:, None],
                          tl.sum(hs * g[:, :, None], axis=1), mask=mnl, sem="relaxed")  # fmt: skip
            off_dl = pid_b * d * L + offs_d[None, :] * L + t[:, None]
            if HAS_Z:
                y = tl.sum(hs * Ct[:, None, :], axis=2)
                if HAS_D:
                    y += u * Dv
                dz = gz * y * sig * (1.0 + z * (1.0 - sig))
                tl.store(dz_ptr + off_dl, dz.to(dz_ptr.dtype.element_ty), mask=mdl)
            if HAS_D:
                du += g * Dv
                dD += tl.sum(tl.where(mdl, g * u, 0.0), axis=0)
            if SOFTPLUS:
                ddl = ddl * tl.sigmoid(x)
            ddl = tl.where(mdl, ddl, 0.0)
            if HAS_BIAS:
                dbias += tl.sum(ddl, axis=0)
            tl.store(du_ptr + off_dl, du.to(du_ptr.dtype.element_ty), mask=mdl)
            tl.store(ddelta_ptr + off_dl, ddl.to(ddelta_ptr.dtype.element_ty), mask=mdl)
        tl.atomic_add(dA_ptr + offs_d[:, None] * n + offs_n[None, :], dA, mask=mdn, sem="relaxed")
        if HAS_D:
            tl.atomic_add(dD_ptr + offs_d, dD, mask=dmask, sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + offs_d, dbias, mask=dmask, sem="relaxed")


def _flags(D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool) -> dict:
    return {"HAS_D": D is not None, "HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None,
            "SOFTPLUS": bool(delta_softplus)}  # fmt: skip


def block_d(n: int) -> int:
    """Channels per program: the (channel, state) plane covers the program's threads."""
    return max(1, THREADS // triton.next_power_of_2(n))


def segment_length(b: int, d: int, n: int, L: int, sms: int = DEFAULT_SMS) -> int:
    """Steps per segment: the longest (at most SEG_MAX, at least SEG_MIN, a multiple of both sub-chunk lengths)
    that still gives WAVES waves of CTAS_PER_SM programs on ``sms`` SMs; never longer than L needs."""
    unit = max(FWD_BLOCK_L, BWD_BLOCK_L)
    programs = b * triton.cdiv(d, block_d(n))
    nseg = max(1, math.ceil(WAVES * CTAS_PER_SM * sms / programs))
    seg = min(SEG_MAX, max(SEG_MIN, math.ceil(L / nseg)))
    return min(triton.cdiv(seg, unit), triton.cdiv(L, unit)) * unit


def saved_state_bytes(b: int, d: int, n: int, L: int, sms: int = DEFAULT_SMS) -> int:
    """Bytes of segment start states the forward saves for the backward (besides the inputs)."""
    return 4 * b * d * n * triton.cdiv(L, segment_length(b, d, n, L, sms))


def backward_scratch_bytes(b: int, d: int, n: int, L: int, sms: int = DEFAULT_SMS) -> int:
    """Bytes the backward allocates besides the gradients themselves: the segment decays and adjoints (two buffers
    of the saved states' size), the gradient pass's scratch and the float32 dB, dC accumulators."""
    seg = segment_length(b, d, n, L, sms)
    items = b * triton.cdiv(d, block_d(n)) * triton.cdiv(L, seg)
    scratch = min(items, CTAS_PER_SM * sms) * triton.cdiv(seg, BWD_BLOCK_L) * block_d(n) * triton.next_power_of_2(n)
    return 2 * saved_state_bytes(b, d, n, L, sms) + 4 * scratch + 2 * 4 * b * n * L


def _strides(*xs: Tensor | None) -> tuple[int, ...]:
    """(batch, channel) strides of (batch, channels, L) tensors with unit time stride (0, 0 for absent ones)."""
    out: list[int] = []
    for x in xs:
        out += [0, 0] if x is None else [x.stride(0), x.stride(1)]
    return tuple(out)


def _unit(x: Tensor | None) -> Tensor | None:
    """x itself when its time stride is 1 (no copy), else a contiguous copy."""
    return x if x is None or x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


class TritonScanFn(torch.autograd.Function):
    """Selective scan with fused D / z gating, softplus and delta_bias; returns (out, last_state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, seg_len, nprog):  # type: ignore[override]
        u, delta, B, C, z = (_unit(x) for x in (u, delta, B, C, z))
        A = A.float().contiguous()
        D = None if D is None else D.float().contiguous()
        delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
        b, d, L = u.shape
        n = A.shape[1]
        sms = torch.cuda.get_device_properties(u.device).multi_processor_count if u.is_cuda else DEFAULT_SMS
        seg_len = seg_len or segment_length(b, d, n, L, sms)
        nseg = triton.cdiv(L, seg_len)
        np2 = triton.next_power_of_2(n)
        bd = block_d(n)
        f32 = torch.float32
        out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
        P = u.new_empty(b, nseg, d, n, dtype=f32)
        E = torch.empty_like(P)
        last = u.new_empty(b, d, n, dtype=f32)
        grid = (nseg, triton.cdiv(d, bd), b)
        flags = _flags(D, z, delta_bias, delta_softplus)
        strides = _strides(u, delta, B, C, z)
        common = dict(d=d, n=n, L=L, seg_len=seg_len, nseg=nseg, BLOCK_D=bd, NP=np2, BLOCK_L=FWD_BLOCK_L,
                      num_warps=WARPS, **flags)  # fmt: skip
        dummy = P  # stands for absent optional tensors (never read: their flag is off)
        args = (u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
                dummy if delta_bias is None else delta_bias, out)  # fmt: skip
        _scan_fwd_kernel[grid](*args, P, E, *strides, FINAL=False, **common)
        _segment_loop_kernel[(triton.cdiv(d * n, BLOCK_DN), b)](P, E, last, d * n, nseg, REVERSE=False,
                                                                BLOCK_DN=BLOCK_DN)  # fmt: skip
        del P  # freed before the output pass; E now holds every segment's start state
        _scan_fwd_kernel[grid](*args, E, E, *strides, FINAL=True, **common)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, E)
        ctx.cfg = (flags, seg_len, nprog, sms)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, gout, _glast):  # type: ignore[override]
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        flags, seg_len, nprog, sms = ctx.cfg
        b, d, L = u.shape
        n = A.shape[1]
        nseg = starts.shape[1]
        np2 = triton.next_power_of_2(n)
        bd = block_d(n)
        f32 = torch.float32
        gout = torch.zeros_like(u) if gout is None else _unit(gout)
        P = torch.empty_like(starts)
        Q = torch.empty_like(starts)
        ins = dict(delta_ptr=delta, A_ptr=A, C_ptr=C, z_ptr=P if z is None else z,
                   bias_ptr=P if delta_bias is None else delta_bias, gout_ptr=gout)  # fmt: skip
        s_dl, s_C, s_z, s_g = _strides(delta), _strides(C), _strides(z), _strides(gout)
        common = dict(d=d, n=n, L=L, seg_len=seg_len, nseg=nseg, BLOCK_D=bd, NP=np2, num_warps=WARPS)
        _bwd_adjoint_kernel[(nseg, triton.cdiv(d, bd), b)](
            **ins, P_ptr=P, E_ptr=Q, sdl_b=s_dl[0], sdl_d=s_dl[1], sC_b=s_C[0], sC_n=s_C[1], sz_b=s_z[0],
            sz_d=s_z[1], sg_b=s_g[0], sg_d=s_g[1], BLOCK_L=BWD_BLOCK_L, HAS_Z=flags["HAS_Z"],
            HAS_BIAS=flags["HAS_BIAS"], SOFTPLUS=flags["SOFTPLUS"], **common,
        )  # fmt: skip
        _segment_loop_kernel[(triton.cdiv(d * n, BLOCK_DN), b)](P, Q, Q, d * n, nseg, REVERSE=True,
                                                                BLOCK_DN=BLOCK_DN)  # fmt: skip
        del P
        items = b * triton.cdiv(d, bd) * nseg
        nprog = min(items, nprog or CTAS_PER_SM * sms)
        nsub_max = triton.cdiv(seg_len, BWD_BLOCK_L)
        H = u.new_empty(nprog, nsub_max, bd, np2, dtype=f32)
        du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
        ddelta = torch.empty(delta.shape, dtype=delta.dtype, device=u.device)
        dz = None if z is None else torch.empty(z.shape, dtype=z.dtype, device=u.device)
        dB32 = u.new_zeros(b, n, L, dtype=f32)
        dC32 = torch.zeros_like(dB32)
        dA = torch.zeros_like(A)
        dD = None if D is None else torch.zeros_like(D)
        dbias = None if delta_bias is None else torch.zeros_like(delta_bias)
        _bwd_grad_kernel[(nprog,)](
            u, delta, A, B, C, H if D is None else D, H if z is None else z, H if delta_bias is None else delta_bias,
            gout, starts, Q, H, du, ddelta, H if dz is None else dz, dB32, dC32, dA, H if dD is None else dD,
            H if dbias is None else dbias, *_strides(u, delta, B, C, z, gout), nsub_max=nsub_max, items=items,
            nprog=nprog, BLOCK_L=BWD_BLOCK_L, **flags, **common, **_maxnreg(),
        )  # fmt: skip
        return du, ddelta, dA, dB32.to(B.dtype), dC32.to(C.dtype), dD, dz, dbias, None, None, None


def _maxnreg() -> dict:
    """The register cap as a launch option (compiled kernels only: the interpreter takes no such option)."""
    return {} if INTERPRETED else {"maxnreg": BWD_MAXNREG}


_WARNED: set[int] = set()


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
    seg_len: int | None = None,
    nprog: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Triton selective scan; shapes as :func:`mambamil.ops.selective_scan` (checked there).

    ``seg_len`` (a multiple of 16) and ``nprog`` (persistent programs of the gradient pass) override the
    defaults (for tests). d_state above :data:`MAX_N` runs the ``chunked`` scan instead, with one warning.
    """
    if u.is_cuda == INTERPRETED:
        need = "CPU tensors (TRITON_INTERPRET=1 is set)" if INTERPRETED else "CUDA tensors"
        raise RuntimeError(f"selective_scan: backend 'triton' needs {need}")
    n = A.shape[1]
    if n > MAX_N:
        if n not in _WARNED:
            _WARNED.add(n)
            warnings.warn(f"selective_scan: backend 'triton' supports d_state <= {MAX_N}, got {n}; using 'chunked'",
                          stacklevel=3)  # fmt: skip
        from mambamil.ops.selective_scan import selective_scan_chunked

        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if seg_len is not None and seg_len % max(FWD_BLOCK_L, BWD_BLOCK_L):
        unit = max(FWD_BLOCK_L, BWD_BLOCK_L)
        raise ValueError(f"selective_scan: seg_len must be a multiple of {unit}, got {seg_len}")
    out, last = TritonScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seg_len, nprog)
    return (out, last) if return_last_state else out


def kernel_variants(b: int = 1, d: int = 1024, n: int = 16, L: int = 409_600, sms: int = DEFAULT_SMS) -> list:
    """Every kernel variant the autograd Function launches (all options on) for this shape:
    ``(name, pass, kernel, constexprs, compile options, integer arguments, (d, n, t) elements per loop iteration)``."""
    flags = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True}
    np2, bd = triton.next_power_of_2(n), block_d(n)
    seg = segment_length(b, d, n, L, sms)
    nseg = triton.cdiv(L, seg)
    ints = {"d": d, "n": n, "L": L, "seg_len": seg, "nseg": nseg}
    for x in ("u", "dl", "z", "g"):  # contiguous (b, d, L) and (b, n, L) inputs
        ints.update({f"s{x}_b": d * L, f"s{x}_d": L})
    ints.update({"sB_b": n * L, "sB_n": L, "sC_b": n * L, "sC_n": L})
    items = b * triton.cdiv(d, bd) * nseg
    nprog = min(items, CTAS_PER_SM * sms)
    bints = {**ints, "nsub_max": triton.cdiv(seg, BWD_BLOCK_L), "items": items, "nprog": nprog}
    fc = {**flags, "BLOCK_D": bd, "NP": np2, "BLOCK_L": FWD_BLOCK_L}
    bc = {**flags, "BLOCK_D": bd, "NP": np2, "BLOCK_L": BWD_BLOCK_L}
    b1 = {k: v for k, v in bc.items() if k != "HAS_D"}
    lint = {"lanes": d * n, "nseg": nseg}
    lel = BLOCK_DN * seg  # one lane of the segment loops stands for a whole segment of steps
    W = {"num_warps": WARPS}
    fe, be = FWD_BLOCK_L * bd * np2, BWD_BLOCK_L * bd * np2
    return [
        ("F1 fwd_segment_states", "fwd", _scan_fwd_kernel, {**fc, "FINAL": False}, W, ints, fe),
        ("F2 segment_loop", "fwd", _segment_loop_kernel, {"REVERSE": False, "BLOCK_DN": BLOCK_DN}, W, lint, lel),
        ("F3 fwd_output", "fwd", _scan_fwd_kernel, {**fc, "FINAL": True}, W, ints, fe),
        ("B1 bwd_segment_adjoints", "bwd", _bwd_adjoint_kernel, b1, W, ints, be),
        ("B2 segment_loop (reversed index)", "bwd", _segment_loop_kernel, {"REVERSE": True, "BLOCK_DN": BLOCK_DN}, W,
         lint, lel),
        ("B3 bwd_gradients", "bwd", _bwd_grad_kernel, bc, {**W, "maxnreg": BWD_MAXNREG}, bints, be),
    ]  # fmt: skip


def compile_variant(fn, consts: dict, options: dict, ints: dict, dtype: str = "bf16", arch: int = 90):
    """Compile ``fn`` for ``sm_<arch>`` as the JIT does at run time for these integer arguments: 16-aligned
    pointers, integers divisible by 16 marked so. Needs no GPU (Triton's bundled ptxas)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    io = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "gout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
    sig, attrs = {}, {}
    for i, a in enumerate(fn.arg_names):
        if a in consts:
            sig[a] = "constexpr"
        elif a in ints:
            sig[a] = "i32"
            if ints[a] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[a] = f"*{dtype}" if a in io else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)  # fmt: skip


def compile_kernels(arch: int = 90, dtype: str = "bf16", n: int = 16) -> dict[str, object]:
    """Compile every kernel variant the autograd Function launches (all options on, b=1, d=1024, L=409600) for
    ``sm_<arch>`` with the JIT's specialisation; returns ``{name: CompiledKernel}`` (``.asm["ptx"]``,
    ``.asm["cubin"]``). Used to check on CPU-only machines that the CUDA code path compiles."""
    return {name: compile_variant(fn, consts, options, ints, dtype, arch)
            for name, _, fn, consts, options, ints, _ in kernel_variants(n=n)}  # fmt: skip
