"""Selective scan (Mamba's S6 recurrence) with three backends.

Semantics and shapes follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``::

    u, delta, z: (batch, d, L)      A: (d, n)      B, C: (batch, n, L)      D, delta_bias: (d,)
    delta  <- softplus(delta + delta_bias)            (each step optional)
    h_t    =  exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t            h: (batch, d, n)
    y_t    =  C_t . h_t + D * u_t,   then  y_t * silu(z_t)  when z is given

Math runs in float32 (float64 when ``u`` is float64); the output has ``u``'s dtype.

Backends
--------
``reference``  a plain sequential loop (autograd through it), for tests.
``chunked``    the project's own scan in plain PyTorch: exact up to float32 rounding (only decays in (0, 1] are
               multiplied), memory O(batch*d*L) plus a segment buffer of about 2**18 * T floats (never
               O(batch*d*n*L)), a custom backward; how (chunks, segments, the adjoint): docs/scan.md.
``cuda``       mamba-ssm's fused kernel (``selective_scan_fn``); needs ``mamba_ssm`` and CUDA tensors.
``triton``     the project's Triton kernels (``mambamil/ops/triton_scan.py``): CUDA tensors and Triton (it ships
               with torch's Linux CUDA wheels); on CPU tensors only under ``TRITON_INTERPRET=1`` (for tests).
               d_state > 16 runs ``chunked`` instead (one warning per value).

``auto`` picks ``cuda`` (mamba-ssm imports, CUDA tensors), else ``triton`` (CUDA tensors, Triton imports, and the
kernels passed their self-check on that device for that dtype, :mod:`mambamil.ops.selfcheck`), else ``chunked``;
it never picks ``triton`` for CPU tensors.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "available_backends",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
]

BACKENDS = ("auto", "cuda", "triton", "chunked", "reference")

#: channel block for the grad-free elementwise pre/post-processing (bounds temporaries)
_BLOCK = 128
#: exp arguments are clamped here: smaller decays are below float32's normal range (denormal slow paths)
_EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}
#: default chunk length (time steps per chunk) of the chunked scan
DEFAULT_CHUNK = 16
#: target number of elements of one per-step state slab (batch * G * d * n)
DEFAULT_SLAB = 1 << 18


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan():
    """Return mamba-ssm's ``selective_scan_fn`` or None when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA extension raising something else
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=1)
def _triton_scan():
    """Return the ``mambamil.ops.triton_scan`` module, or None when Triton is missing or does not import."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        from mambamil.ops import triton_scan
    except Exception:  # ImportError, or a Triton build broken in some other way
        return None
    return triton_scan


def _triton_usable(u: Tensor | None = None) -> bool:
    """Triton kernels can run here (on ``u``'s device when given); never initialises CUDA."""
    mod = _triton_scan()
    if mod is None:
        return False
    if mod.INTERPRETED:
        return u is None or not u.is_cuda
    return torch.cuda.is_available() if u is None else u.is_cuda


def available_backends() -> list[str]:
    """Backends usable in this process (``cuda`` needs mamba-ssm and a CUDA device; ``triton`` Triton and a CUDA
    device, or Triton's interpreter for CPU tensors); checks without initialising CUDA."""
    out = ["chunked", "reference"]
    cuda = torch.cuda.is_available()
    if (cuda or os.environ.get("TRITON_INTERPRET") == "1") and _triton_usable():  # no Triton import otherwise
        out.insert(0, "triton")
    if _mamba_ssm_scan() is not None and cuda:
        out.insert(0, "cuda")
    return out


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d, L), got shape {tuple(u.shape)}")
    b, d, L = u.shape
    if L < 1:
        raise ValueError("selective_scan: sequence length must be >= 1")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (d={d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, n, L):
            raise ValueError(f"selective_scan: {name} must be (batch, n, L)={(b, n, L)}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"selective_scan: {name} must be ({d},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z shape {tuple(z.shape)} != u shape {tuple(u.shape)}")


def _prep_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    if torch.is_grad_enabled() and (delta.requires_grad or (delta_bias is not None and delta_bias.requires_grad)):
        delta = delta.to(dtype)
        if delta_bias is not None:
            delta = delta + delta_bias.to(dtype)[:, None]
        return F.softplus(delta) if delta_softplus else delta
    if delta_bias is None and not delta_softplus:
        return delta.to(dtype)
    out = torch.empty(delta.shape, dtype=dtype, device=delta.device)  # one new buffer, filled by blocks
    for i in range(0, delta.shape[1], _BLOCK):
        blk = delta[:, i : i + _BLOCK].to(dtype)
        if delta_bias is not None:
            blk = blk + delta_bias[i : i + _BLOCK].to(dtype)[:, None]
        out[:, i : i + _BLOCK] = F.softplus(blk) if delta_softplus else blk
    return out


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """y + D*u, gated by silu(z); in place when no gradient is needed (y is then a fresh buffer)."""
    inplace = not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (y, u, D, z))
    if not inplace:
        if D is not None:
            y = y + u.to(dtype) * D.to(dtype)[:, None]
        return y * F.silu(z.to(dtype)) if z is not None else y
    for i in range(0, y.shape[1], _BLOCK):  # channel blocks keep the temporaries small
        sl = slice(i, i + _BLOCK)
        if D is not None:
            y[:, sl].addcmul_(u[:, sl].to(dtype), D[sl].to(dtype)[:, None])
        if z is not None:
            y[:, sl].mul_(F.silu(z[:, sl].to(dtype)))
    return y


# ----------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------
def selective_scan_reference(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential per-step loop (differentiable by autograd); memory O(batch*d*(L+n))."""
    dtype_in = u.dtype
    dt = _compute_dtype(u)
    delta = _prep_delta(delta, delta_bias, delta_softplus, dt)
    uf, Af, Bf, Cf = u.to(dt), A.to(dt), B.to(dt), C.to(dt)
    b, d, L = u.shape
    h = uf.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        dt_t = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt_t * Af) * h + (dt_t * uf[:, :, t, None]) * Bf[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, :, t]))
    y = _finish(torch.stack(ys, dim=2), u, D, z, dt).to(dtype_in)
    return (y, h) if return_last_state else y


# ----------------------------------------------------------------------------------------------
# chunked
# ----------------------------------------------------------------------------------------------
def _bt(x: Tensor, k0: int, k1: int, T: int) -> Tensor:
    """Chunks [k0, k1) of x (b, c, K*T) as a contiguous (T, b, G, c) (used for the small B, C)."""
    b, c, _ = x.shape
    return x[:, :, k0 * T : k1 * T].reshape(b, c, k1 - k0, T).permute(3, 0, 2, 1).contiguous()


def _chunks(x: Tensor, k0: int, k1: int, T: int) -> Tensor:
    """View of chunks [k0, k1) of x (b, c, K*T) as (b, c, G, T)."""
    b, c, _ = x.shape
    return x[:, :, k0 * T : k1 * T].view(b, c, k1 - k0, T)


def _unit_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _pad_to(x: Tensor, Lp: int) -> Tensor:
    return x if x.shape[-1] == Lp else F.pad(x, (0, Lp - x.shape[-1]))


def _plan(b: int, d: int, n: int, L: int, chunk: int | None, slab: int | None) -> tuple[int, int, int]:
    """Chunk length T, number of chunks K and chunks per segment G."""
    T = max(1, min(chunk or DEFAULT_CHUNK, L))
    K = math.ceil(L / T)
    G = max(1, min(K, (slab or DEFAULT_SLAB) // max(1, b * d * n)))
    return T, K, G


def _front(buf: Tensor, G: int) -> Tensor:
    """Contiguous view with G chunks on the front of a (b, d, G_max, ...) buffer."""
    shape = list(buf.shape)
    shape[2] = G
    return buf.view(-1)[: math.prod(shape)].view(shape)


def _segment_states(
    dv: Tensor,
    du: Tensor,
    Bs: Tensor,
    A: Tensor,
    carry: Tensor,
    abuf: Tensor,
    hbuf: Tensor | None = None,
    Cs: Tensor | None = None,
    yv: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """States of one segment of G chunks of T steps; state slabs are (b, d, G, n).

    dv, du: (b, d, G, T) delta and delta*u; Bs, Cs: (T, b, G, n); carry: (b, d, n) state before the
    segment. Fills abuf = exp(delta A) (b, d, G, T, n) and either hbuf[:, :, :, t] = h_t (the true
    states, same shape) or yv[..., t] = C_t . h_t (b, d, G, T). Returns (start, P, carry_out): chunk
    start states and chunk decays (b, d, G, n) and the state after the segment (b, d, n).
    """
    G, T = dv.shape[2:]
    lo = _EXP_FLOOR[dv.dtype]
    torch.mul(dv.unsqueeze(-1), A[:, None, None, :], out=abuf).clamp_(min=lo).exp_()
    # (1) chunk-local states from zero, all G chunks at once
    h = torch.mul(du[..., 0, None], Bs[0].unsqueeze(1))
    for t in range(1, T):
        h.mul_(abuf[:, :, :, t]).addcmul_(du[..., t, None], Bs[t].unsqueeze(1))
    # (2) recurrence over the chunk boundaries with P = exp(A * sum(delta)) in (0, 1]
    P = torch.mul(dv.sum(-1, keepdim=True), A.unsqueeze(1)).clamp_(min=lo).exp_()
    start = torch.empty_like(P)
    start[:, :, 0] = carry
    for g in range(G - 1):
        torch.addcmul(h[:, :, g], P[:, :, g], start[:, :, g], out=start[:, :, g + 1])
    carry_out = torch.addcmul(h[:, :, G - 1], P[:, :, G - 1], start[:, :, G - 1])
    # (3) rerun every chunk from its true start state
    if hbuf is None:
        h.copy_(start)
    for t in range(T):
        a = abuf[:, :, :, t]
        if hbuf is None:
            h.mul_(a)
        else:
            h = torch.mul(a, hbuf[:, :, :, t - 1] if t > 0 else start, out=hbuf[:, :, :, t])
        h.addcmul_(du[..., t, None], Bs[t].unsqueeze(1))
        if yv is not None:
            torch.mul(h, Cs[t].unsqueeze(1), out=a)  # a_t is used up: reuse its slot for h_t * C_t
    if yv is not None:
        torch.sum(abuf, -1, out=yv)
    return start, P, carry_out


class _ChunkedScanFn(torch.autograd.Function):
    """Core scan y_t = C_t . h_t (no D, z, bias, softplus) with a memory-lean custom backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk, slab):  # type: ignore[override]
        b, d, L = u.shape
        n = A.shape[1]
        T, K, G = _plan(b, d, n, L, chunk, slab)
        Lp = K * T
        up, dp, Bp, Cp = (_pad_to(x, Lp) for x in (u, delta, B, C))
        y = u.new_empty(b, d, Lp)
        abuf = u.new_empty(b, d, G, T, n)
        carry = u.new_zeros(b, d, n)
        seg_starts = []
        for k0 in range(0, K, G):
            k1 = min(K, k0 + G)
            dv = _chunks(dp, k0, k1, T)
            du = dv * _chunks(up, k0, k1, T)
            seg_starts.append(carry)
            _, _, carry = _segment_states(
                dv, du, _bt(Bp, k0, k1, T), A, carry, _front(abuf, k1 - k0),
                Cs=_bt(Cp, k0, k1, T), yv=_chunks(y, k0, k1, T),
            )  # fmt: skip
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(seg_starts))
        ctx.plan = (T, K, G)
        ctx.mark_non_differentiable(carry)
        return (y if Lp == L else y[:, :, :L].contiguous()), carry

    @staticmethod
    def backward(ctx, gy_full, _glast):  # type: ignore[override]
        u, delta, A, B, C, seg_starts = ctx.saved_tensors
        T, K, G = ctx.plan
        b, d, L = u.shape
        n = A.shape[1]
        Lp = K * T
        A3 = A.unsqueeze(1)
        if gy_full is None:
            gy_full = torch.zeros_like(u)
        up, dp, Bp, Cp, gyp = (_pad_to(x, Lp) for x in (u, delta, B, C, gy_full))
        du_out, ddelta_out = u.new_empty(b, d, Lp), u.new_empty(b, d, Lp)
        dB_out, dC_out = B.new_empty(b, n, Lp), C.new_empty(b, n, Lp)
        dA_acc = u.new_zeros(b, d, G, n)
        abuf = u.new_empty(b, d, G, T, n)
        hbuf = torch.empty_like(abuf)
        tmp_full = u.new_empty(b, d, G, n)
        m = u.new_zeros(b, d, n)  # a_{t+1} * lam_{t+1}: adjoint flowing into the segment's last step
        starts = list(range(0, K, G))
        for s in reversed(range(len(starts))):
            k0 = starts[s]
            k1 = min(K, k0 + G)
            Gs = k1 - k0
            ab, hb, tmp = _front(abuf, Gs), _front(hbuf, Gs), _front(tmp_full, Gs)
            dA_g = dA_acc[:, :, :Gs]
            dv, uv, gy = _chunks(dp, k0, k1, T), _chunks(up, k0, k1, T), _chunks(gyp, k0, k1, T)
            du = dv * uv
            Bs, Cs = _bt(Bp, k0, k1, T), _bt(Cp, k0, k1, T)
            start, P, _ = _segment_states(dv, du, Bs, A, seg_starts[s], ab, hbuf=hb)
            gyl = gy.unsqueeze(-1)
            dCs, dBs = u.new_empty(T, b, Gs, n), u.new_empty(T, b, Gs, n)
            lamB, ddl = torch.empty_like(du), torch.empty_like(du)
            # R1: chunk-local adjoints from zero -> a_first * lam_first per chunk
            lam = torch.zeros_like(start)
            for t in reversed(range(T)):
                lam.addcmul_(gyl[..., t, :], Cs[t].unsqueeze(1)).mul_(ab[:, :, :, t])
            # reverse recurrence over the chunk boundaries
            M = torch.empty_like(start)
            M[:, :, Gs - 1] = m
            for g in range(Gs - 1, 0, -1):
                torch.addcmul(lam[:, :, g], P[:, :, g], M[:, :, g], out=M[:, :, g - 1])
            m = torch.addcmul(lam[:, :, 0], P[:, :, 0], M[:, :, 0])
            # R2: true adjoints lam_t, reverse in time, with every gradient term of step t
            lam = M
            for t in reversed(range(T)):
                h_t = hb[:, :, :, t]
                torch.sum(torch.mul(h_t, gyl[..., t, :], out=tmp), 1, out=dCs[t])  # sum_d gy_t h_t
                lam.addcmul_(gyl[..., t, :], Cs[t].unsqueeze(1))  # lam_t
                torch.sum(torch.mul(lam, Bs[t].unsqueeze(1), out=tmp), -1, out=lamB[..., t])
                torch.sum(torch.mul(lam, du[..., t, None], out=tmp), 1, out=dBs[t])
                lam.mul_(ab[:, :, :, t])  # a_t lam_t
                W = torch.mul(lam, hb[:, :, :, t - 1] if t > 0 else start, out=tmp)  # a_t lam_t h_{t-1}
                dA_g.addcmul_(W, dv[..., t, None])
                torch.sum(W.mul_(A3), -1, out=ddl[..., t])
            ddl.addcmul_(uv, lamB)
            torch.mul(dv, lamB, out=_chunks(du_out, k0, k1, T))
            _chunks(ddelta_out, k0, k1, T).copy_(ddl)
            _chunks(dB_out, k0, k1, T).copy_(dBs.permute(1, 3, 2, 0))
            _chunks(dC_out, k0, k1, T).copy_(dCs.permute(1, 3, 2, 0))
        grads = [x if Lp == L else x[:, :, :L].contiguous() for x in (du_out, ddelta_out, dB_out, dC_out)]
        return grads[0], grads[1], dA_acc.sum((0, 2)), grads[2], grads[3], None, None


def selective_scan_chunked(
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
    chunk_size: int | None = None,
    slab: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked two-level scan (docs/scan.md); differentiable in every tensor input."""
    dtype_in = u.dtype
    dt = _compute_dtype(u)
    delta_f = _prep_delta(delta, delta_bias, delta_softplus, dt)
    y, last = _ChunkedScanFn.apply(*(_unit_stride(x.to(dt)) for x in (u, delta_f, A, B, C)), chunk_size, slab)
    y = _finish(y, u, D, z, dt).to(dtype_in)
    return (y, last) if return_last_state else y


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    fn = _mamba_ssm_scan()
    if fn is None:
        raise RuntimeError("selective_scan: backend 'cuda' needs mamba_ssm, which does not import here")
    if not u.is_cuda:
        raise RuntimeError("selective_scan: backend 'cuda' needs CUDA tensors")
    return fn(
        u.contiguous(),
        delta.contiguous(),
        A.float().contiguous(),
        B.contiguous(),
        C.contiguous(),
        None if D is None else D.float(),
        None if z is None else z.contiguous(),
        None if delta_bias is None else delta_bias.float(),
        delta_softplus,
        return_last_state,
    )


#: tests only: under Triton's interpreter, ``auto`` treats CPU tensors as it treats CUDA ones (self-check included)
_AUTO_INTERPRETED = False


def _auto_backend(u: Tensor) -> str:
    """``cuda`` (mamba-ssm, CUDA tensors), else ``triton`` (CUDA tensors, Triton usable, its self-check passed on
    this device for this dtype: :mod:`mambamil.ops.selfcheck`), else ``chunked``."""
    interpreted = _AUTO_INTERPRETED and not u.is_cuda and _triton_usable(u)
    if not (u.is_cuda or interpreted):
        return "chunked"
    if u.is_cuda and _mamba_ssm_scan() is not None:
        return "cuda"
    if not _triton_usable(u):
        return "chunked"
    from mambamil.ops.selfcheck import triton_passes

    return "triton" if triton_passes(u.device, u.dtype) else "chunked"


def _selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    mod = _triton_scan()
    if mod is None:
        raise RuntimeError("selective_scan: backend 'triton' needs Triton, which does not import here")
    return mod.selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan(
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
    backend: str = "auto",
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics; see the module docstring.

    Returns ``out`` (batch, d, L) in u's dtype, or ``(out, last_state)`` with last_state
    (batch, d, n) when ``return_last_state`` (no gradient flows through last_state).
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; choose one of {BACKENDS}")
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if backend == "auto":
        backend = _auto_backend(u)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "cuda":
        return _selective_scan_cuda(*args)
    if backend == "triton":
        return _selective_scan_triton(*args)
    if backend == "reference":
        return selective_scan_reference(*args)
    return selective_scan_chunked(*args, chunk_size=chunk_size)
