"""Selective scan: chunked vs a float64 sequential reference, gradients, dispatch, memory, CUDA."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mambamil.ops import available_backends, selective_scan, selective_scan_chunked, selective_scan_reference

HAS_CUDA = torch.cuda.is_available()
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None


def make_inputs(b, d, n, L, *, seed=0, dtype=torch.float64, strong=False, device="cpu"):
    """Random scan inputs; ``strong`` gives real-Mamba extremes (delta up to ~3, A down to -16)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    delta = torch.rand(b, d, L, generator=g, dtype=torch.float64) * 2.0  # positive, as after softplus
    if strong:
        delta = torch.rand(b, d, L, generator=g, dtype=torch.float64) * 3.0  # raw deltas, no softplus
        A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 15.0 - 1.0
    else:
        A = -torch.exp(r(d, n))
    out = {
        "u": r(b, d, L),
        "delta": delta,
        "A": A,
        "B": r(b, n, L),
        "C": r(b, n, L),
        "D": r(d),
        "z": r(b, d, L),
        "delta_bias": torch.rand(d, generator=g, dtype=torch.float64) * 0.5,
    }
    return {k: v.to(dtype=dtype, device=device) for k, v in out.items()}


def rel_err(x, ref):
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def call(fn, inp, opts, **kw):
    args = {k: inp[k] for k in ("u", "delta", "A", "B", "C")}
    for k in ("D", "z", "delta_bias"):
        if opts.get(k):
            args[k] = inp[k]
    return fn(**args, delta_softplus=opts.get("softplus", False), **kw)


OPTS = [
    {},
    {"D": True, "z": True, "delta_bias": True, "softplus": True},
    {"D": True, "softplus": True},
    {"z": True, "delta_bias": True},
]
# (L, chunk_size, slab): L < T, L = 1, L not a multiple of T, several segments with a partial last one
SIZES = [(1, None, None), (5, None, None), (16, 16, None), (37, 8, None), (200, 16, 4 * 6 * 3), (129, 7, 1)]


@pytest.mark.parametrize("opts", OPTS, ids=lambda o: "+".join(sorted(o)) or "plain")
@pytest.mark.parametrize("L,chunk,slab", SIZES)
def test_chunked_forward_matches_float64_reference(L, chunk, slab, opts):
    inp = make_inputs(2, 6, 3, L, seed=L)
    ref, ref_last = call(selective_scan_reference, inp, opts, return_last_state=True)
    f32 = {k: v.float() for k, v in inp.items()}
    out, last = call(selective_scan_chunked, f32, opts, return_last_state=True, chunk_size=chunk, slab=slab)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(last, ref_last) <= 1e-5


@pytest.mark.parametrize("L", [1, 64, 1000])
def test_chunked_strong_decays(L):
    """Delta up to 3 and A down to -16 (decays down to exp(-48)): still float32-exact, no NaN."""
    inp = make_inputs(1, 8, 16, L, seed=1, strong=True)
    opts = {"D": True, "z": True}
    ref = call(selective_scan_reference, inp, opts)
    out = call(selective_scan_chunked, {k: v.float() for k, v in inp.items()}, opts)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5


def test_long_sequence_accuracy():
    """L = 3000 with slow decays (long memory) in float32 against float64."""
    inp = make_inputs(1, 16, 4, 3000, seed=2)
    inp["delta"] = inp["delta"] * 0.01
    inp["A"] = inp["A"] * 0.1
    ref = call(selective_scan_reference, inp, {"D": True})
    out = call(selective_scan_chunked, {k: v.float() for k, v in inp.items()}, {"D": True})
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("opts", [OPTS[0], OPTS[1]], ids=["plain", "all"])
@pytest.mark.parametrize("L,chunk,slab", [(1, None, None), (13, 4, None), (50, 4, 3 * 5 * 3)])
def test_chunked_gradients_match_reference(L, chunk, slab, opts):
    """Gradients of every input, float64, vs autograd through the sequential loop."""
    inp = make_inputs(2, 5, 3, L, seed=10 + L)
    a = {k: v.clone().requires_grad_() for k, v in inp.items()}
    b = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y = call(selective_scan_chunked, a, opts, chunk_size=chunk, slab=slab)
    y_ref = call(selective_scan_reference, b, opts)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C"] + [k for k in ("D", "z", "delta_bias") if opts.get(k)]
    grads = torch.autograd.grad(y, [a[k] for k in names], g)
    grads_ref = torch.autograd.grad(y_ref, [b[k] for k in names], g)
    for name, gr, gf in zip(names, grads, grads_ref, strict=True):
        assert rel_err(gr, gf) <= 1e-9, name


def test_chunked_gradients_float32_strong():
    inp = make_inputs(1, 8, 16, 300, seed=4, strong=True)
    f32 = {k: v.float().requires_grad_() for k, v in inp.items()}
    f64 = {k: v.clone().requires_grad_() for k, v in inp.items()}
    opts = {"D": True, "z": True}
    g = torch.randn(1, 8, 300, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C"]
    gr = torch.autograd.grad(call(selective_scan_chunked, f32, opts), [f32[k] for k in names], g.float())
    gf = torch.autograd.grad(call(selective_scan_reference, f64, opts), [f64[k] for k in names], g)
    for name, x, ref in zip(names, gr, gf, strict=True):
        assert rel_err(x, ref) <= 1e-4, name


def test_gradcheck_tiny():
    inp = make_inputs(1, 3, 2, 9, seed=6)
    args = tuple(inp[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))

    def f(u, delta, A, B, C, D, z, bias):
        return selective_scan_chunked(u, delta, A, B, C, D, z, bias, True, chunk_size=2, slab=6)

    assert torch.autograd.gradcheck(f, args)


def test_return_last_state_and_dtype():
    inp = make_inputs(2, 4, 3, 21, seed=7)
    ref, ref_last = call(selective_scan_reference, inp, {"z": True}, return_last_state=True)
    half = {k: v.to(torch.bfloat16) for k, v in inp.items()}
    out, last = call(selective_scan, half, {"z": True}, return_last_state=True, backend="chunked")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32 and last.shape == (2, 4, 3)
    out32, last32 = call(selective_scan, {k: v.float() for k, v in inp.items()}, {"z": True}, return_last_state=True)
    assert rel_err(last32, ref_last) <= 1e-5
    assert rel_err(out32, ref) <= 1e-5


def test_backends_and_errors():
    assert "chunked" in available_backends() and "reference" in available_backends()
    inp = {k: v.float() for k, v in make_inputs(1, 4, 2, 10).items()}
    base = {k: inp[k] for k in ("u", "delta", "A", "B", "C")}
    auto = selective_scan(**base)
    assert torch.equal(auto, selective_scan(**base, backend="chunked"))
    assert rel_err(auto, selective_scan(**base, backend="reference")) <= 1e-5
    with pytest.raises(ValueError, match="unknown backend"):
        selective_scan(**base, backend="fast")
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**{**base, "A": inp["A"][:3]})
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**{**base, "B": inp["B"][..., :5]})
    if not (HAS_CUDA and HAS_MAMBA_SSM):
        with pytest.raises(RuntimeError, match="cuda"):
            selective_scan(**base, backend="cuda")


def test_chunked_saves_no_per_state_tensors():
    """What autograd keeps for backward is O(b*d*L) + O(b*d*n*L/(G*T)), never O(b*d*n*L)."""
    b, d, n, L = 1, 32, 16, 4096
    inp = {k: v.float().requires_grad_() for k, v in make_inputs(b, d, n, L).items()}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = call(selective_scan_chunked, inp, OPTS[1])
    assert max(saved) <= b * d * L
    assert sum(saved) <= 10 * b * d * L < b * d * n * L
    y.sum().backward()
    assert all(torch.isfinite(inp[k].grad).all() for k in ("u", "delta", "A", "B", "C"))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_chunked_on_cuda_matches_reference():
    inp = make_inputs(2, 64, 16, 3000, seed=8, device="cuda")
    opts = OPTS[1]
    ref = call(selective_scan_reference, {k: v.cpu() for k, v in inp.items()}, opts)
    f32 = {k: v.float().requires_grad_() for k, v in inp.items()}
    out = call(selective_scan_chunked, f32, opts)
    assert rel_err(out.cpu(), ref) <= 1e-5
    out.sum().backward()
    assert torch.isfinite(f32["delta"].grad).all()


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_MAMBA_SSM), reason="needs CUDA and mamba_ssm")
def test_cuda_kernel_matches_chunked():
    inp = {k: v.float() for k, v in make_inputs(2, 64, 16, 2048, seed=9, device="cuda").items()}
    opts = OPTS[1]
    a = {k: v.clone().requires_grad_() for k, v in inp.items()}
    b = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y_k = call(selective_scan, a, opts, backend="cuda")
    y_c = call(selective_scan, b, opts, backend="chunked")
    assert rel_err(y_k, y_c) <= 1e-4
    g = torch.randn_like(y_k)
    for k, gk, gc in zip(
        a, torch.autograd.grad(y_k, list(a.values()), g), torch.autograd.grad(y_c, list(b.values()), g), strict=True
    ):
        assert rel_err(gk, gc) <= 1e-3, k
