"""Triton scan cases run under Triton's interpreter on CPU; run as a script, prints one JSON line.

``TRITON_INTERPRET=1`` must be set before Triton is imported (it decides at decoration time whether the
kernels are interpreted), so tests/test_triton_scan.py runs this file in a subprocess and keeps the rest of
the suite (and the compiled kernels on a GPU machine) unaffected.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_scan import call, make_inputs, rel_err

from mambamil.ops import triton_scan
from mambamil.ops.selective_scan import (
    available_backends,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)

ALL = {"D": True, "z": True, "delta_bias": True, "softplus": True}
# name: (b, d, n, L, opts, seg_len, nprog, dtype, strong). Segments of 16-48 steps (forward sub-chunks of 16,
# backward ones of 4), so that short sequences cross sub-chunk, segment and channel-block boundaries; nprog < the
# work items, so that the persistent gradient programs take several items each; L a multiple of nothing used.
CASES = {
    "L1-plain": (1, 8, 4, 1, {}, 16, 1, torch.float32, False),
    "L37-all-n16": (1, 12, 16, 37, ALL, 16, 3, torch.float32, False),
    "L41-D-softplus-n3": (2, 8, 3, 41, {"D": True, "softplus": True}, 32, 2, torch.float32, False),
    "L40-z-bias-n5": (1, 20, 5, 40, {"z": True, "delta_bias": True}, 16, 4, torch.float32, False),
    "L107-all-seg48": (1, 4, 4, 107, ALL, 48, 2, torch.float32, False),
    "L70-strong": (1, 4, 16, 70, {"D": True, "z": True}, 32, 2, torch.float32, True),
    "L29-n1": (1, 6, 1, 29, ALL, 16, 2, torch.float32, False),
    "L30-bf16": (1, 8, 4, 30, ALL, 16, 2, torch.bfloat16, False),
}


def run_case(b, d, n, L, opts, seg_len, nprog, dtype, strong) -> dict:
    """Forward, last state and every gradient of the Triton scan vs the float64 reference."""
    inp = make_inputs(b, d, n, L, seed=L + d, strong=strong)
    inp = {k: v.to(dtype).double() if k not in ("A", "D", "delta_bias") else v for k, v in inp.items()}
    names = ["u", "delta", "A", "B", "C"] + [k for k in ("D", "z", "delta_bias") if opts.get(k)]
    f64 = {k: v.clone().requires_grad_() for k, v in inp.items()}
    low = {k: v.to(torch.float32 if k in ("A", "D", "delta_bias") else dtype) for k, v in inp.items()}
    low = {k: v.requires_grad_() for k, v in low.items()}
    ref, ref_last = call(selective_scan_reference, f64, opts, return_last_state=True)
    out, last = call(triton_scan.selective_scan_triton, low, opts, return_last_state=True, seg_len=seg_len,
                     nprog=nprog)  # fmt: skip
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = g.to(dtype)  # the reference gets the same rounded upstream gradient
    grads = torch.autograd.grad(out, [low[k] for k in names], g)
    grads_ref = torch.autograd.grad(ref, [f64[k] for k in names], g.double())
    return {
        "dtype": str(out.dtype),
        "last_dtype": str(last.dtype),
        "grad_dtypes": {k: str(x.dtype) for k, x in zip(names, grads, strict=True)},
        "fwd": rel_err(out, ref),
        "last": rel_err(last, ref_last),
        "grads": {k: rel_err(x, r) for k, x, r in zip(names, grads, grads_ref, strict=True)},
    }


def strided() -> dict:
    """u, delta, z slices of one (b, 3d, L) tensor and B, C of one (b, 2n, L) tensor (unit time stride, other
    strides not contiguous ones) against the same values made contiguous; the saved u is the caller's storage."""
    b, d, n, L = 2, 8, 4, 21
    inp = make_inputs(b, d, n, L, seed=5, dtype=torch.float32)
    udz = torch.cat([inp["u"], inp["delta"], inp["z"]], 1)
    bc = torch.cat([inp["B"], inp["C"]], 1)
    views = {**inp, "u": udz[:, :d], "delta": udz[:, d : 2 * d], "z": udz[:, 2 * d :], "B": bc[:, :n], "C": bc[:, n:]}
    views = {k: v.detach().requires_grad_() if v.is_leaf else v for k, v in views.items()}
    udz.requires_grad_()
    bc.requires_grad_()
    views.update(u=udz[:, :d], delta=udz[:, d : 2 * d], z=udz[:, 2 * d :], B=bc[:, :n], C=bc[:, n:])
    dense = {k: v.detach().contiguous().requires_grad_() for k, v in views.items()}
    ptrs = []

    def pack(t):
        ptrs.append(t.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out_v = call(triton_scan.selective_scan_triton, views, ALL, seg_len=16, nprog=2)
    out_d = call(triton_scan.selective_scan_triton, dense, ALL, seg_len=16, nprog=2)
    g = torch.randn(out_v.shape, generator=torch.Generator().manual_seed(2))
    gv = torch.autograd.grad(out_v, [udz, bc], g)
    gd = torch.autograd.grad(out_d, [dense[k] for k in ("u", "delta", "z", "B", "C")], g)
    return {
        "non_contiguous": not views["u"].is_contiguous() and not views["B"].is_contiguous(),
        "fwd": rel_err(out_v, out_d),
        "grad": max(rel_err(gv[0], torch.cat(gd[:3], 1)), rel_err(gv[1], torch.cat(gd[3:], 1))),
        "u_not_copied": views["u"].data_ptr() in ptrs and views["B"].data_ptr() in ptrs,
    }


def n_sweep() -> dict:
    """d_state 1, 4, 16 run the kernels; 32 and 64 fall back to chunked with one warning per value."""
    res = {}
    for n in (1, 4, 16, 32, 64):
        inp = {k: v.float() for k, v in make_inputs(1, 4, n, 20, seed=n).items()}
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = [call(triton_scan.selective_scan_triton, inp, ALL, seg_len=16, nprog=1) for _ in range(2)]
        ref = call(selective_scan_reference, {k: v.double() for k, v in inp.items()}, ALL)
        chunked = call(selective_scan_chunked, inp, ALL)
        res[n] = {
            "warnings": [str(x.message) for x in w],
            "err": rel_err(out[0], ref),
            "equals_chunked": torch.equal(out[1], chunked),
        }
    return res


def dispatch() -> dict:
    """Under the interpreter triton is listed, but ``auto`` still picks chunked for CPU tensors."""
    inp = {k: v.float() for k, v in make_inputs(1, 4, 2, 10).items()}
    base = {k: inp[k] for k in ("u", "delta", "A", "B", "C")}
    auto = selective_scan(**base)
    return {
        "backends": available_backends(),
        "auto_is_chunked": torch.equal(auto, selective_scan(**base, backend="chunked")),
        "triton_vs_chunked": rel_err(selective_scan(**base, backend="triton"), auto),
    }


def saved_sizes(b: int = 1, d: int = 4, n: int = 16, L: int = 64, seg_len: int = 16) -> dict:
    """Numel of every tensor the autograd Function saves for backward (hooked), against b*d*L."""
    inp = {k: v.float().requires_grad_() for k, v in make_inputs(b, d, n, L).items()}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call(triton_scan.selective_scan_triton, inp, ALL, seg_len=seg_len)
    return {"saved": saved, "bdl": b * d * L, "bnl": b * n * L, "starts": b * d * n * -(-L // seg_len)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    res, cpu = {}, {}
    for name, fn in [*((k, lambda c=c: run_case(*c)) for k, c in CASES.items()), ("dispatch", dispatch),
                     ("memory", saved_sizes), ("strided", strided), ("n_sweep", n_sweep)]:  # fmt: skip
        t0 = time.process_time()
        res[name] = fn()
        cpu[name] = round(time.process_time() - t0, 2)
    res["cpu_seconds"] = cpu
    print(json.dumps(res))
