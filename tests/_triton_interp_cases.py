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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_scan import call, make_inputs, rel_err

from mambamil.ops import triton_scan
from mambamil.ops.selective_scan import available_backends, selective_scan, selective_scan_reference

ALL = {"D": True, "z": True, "delta_bias": True, "softplus": True}
# name: (b, d, n, L, opts, block_d, block_l, block_c, dtype, strong)
CASES = {
    "L1-plain": (1, 8, 4, 1, {}, 8, 16, 32, torch.float32, False),
    "L37-all-n16": (2, 6, 16, 37, ALL, 4, 16, 32, torch.float32, False),
    "L100-D-softplus": (2, 8, 3, 100, {"D": True, "softplus": True}, 16, 16, 32, torch.float32, False),
    "L70-z-bias-chunkblocks": (1, 8, 5, 70, {"z": True, "delta_bias": True}, 8, 8, 4, torch.float32, False),
    "L300-all": (1, 4, 4, 300, ALL, 4, 64, 32, torch.float32, False),
    "L130-strong": (1, 4, 16, 130, {"D": True, "z": True}, 4, 32, 32, torch.float32, True),
    "L50-bf16": (1, 8, 4, 50, ALL, 8, 16, 32, torch.bfloat16, False),
}


def run_case(b, d, n, L, opts, block_d, block_l, block_c, dtype, strong) -> dict:
    """Forward, last state and every gradient of the Triton scan vs the float64 reference."""
    inp = make_inputs(b, d, n, L, seed=L + d, strong=strong)
    inp = {k: v.to(dtype).double() if k not in ("A", "D", "delta_bias") else v for k, v in inp.items()}
    names = ["u", "delta", "A", "B", "C"] + [k for k in ("D", "z", "delta_bias") if opts.get(k)]
    f64 = {k: v.clone().requires_grad_() for k, v in inp.items()}
    low = {k: v.to(torch.float32 if k in ("A", "D", "delta_bias") else dtype) for k, v in inp.items()}
    low = {k: v.requires_grad_() for k, v in low.items()}
    ref, ref_last = call(selective_scan_reference, f64, opts, return_last_state=True)
    triton_scan.BLOCK_C = block_c
    out, last = call(triton_scan.selective_scan_triton, low, opts, return_last_state=True, block_d=block_d,
                     block_l=block_l)  # fmt: skip
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


def saved_sizes(b: int = 1, d: int = 4, n: int = 16, L: int = 256, block_l: int = 64) -> dict:
    """Numel of every tensor the autograd Function saves for backward (hooked), against b*d*L."""
    inp = {k: v.float().requires_grad_() for k, v in make_inputs(b, d, n, L).items()}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call(triton_scan.selective_scan_triton, inp, ALL, block_d=4, block_l=block_l)
    return {"saved": saved, "bdl": b * d * L, "bnl": b * n * L, "starts": b * d * n * -(-L // block_l)}


if __name__ == "__main__":
    torch.set_num_threads(1)
    res = {name: run_case(*case) for name, case in CASES.items()}
    res["dispatch"] = dispatch()
    res["memory"] = saved_sizes()
    print(json.dumps(res))
