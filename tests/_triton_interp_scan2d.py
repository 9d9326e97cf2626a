"""2D scan cases run by the Triton backend under Triton's interpreter on CPU; run as a script, prints one JSON line
{case: {name: relative error vs the float64 reference}} (see tests/test_triton_scan2d.py)."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_scan2d import GRIDS, inputs

from mambamil.ops.scan2d import ScanGrid, selective_scan_2d

NAMES = ["y", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def run(shape: str, background: str) -> dict[str, float]:
    rng = np.random.default_rng(7)
    positions = np.array(GRIDS[shape](rng))
    grid = ScanGrid.from_positions(positions[rng.permutation(len(positions))])
    ref_in = [t.requires_grad_(True) for t in inputs(2, 5, 3, len(grid), rng)]
    ref = selective_scan_2d(*ref_in[:5], grid, *ref_in[5:], True, background, backend="reference")
    weight = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * weight).sum(), ref_in)
    xs = [t.detach().float().requires_grad_(True) for t in ref_in]
    out = selective_scan_2d(*xs[:5], grid, *xs[5:], True, background, backend="triton")
    grads = torch.autograd.grad((out * weight.float()).sum(), xs)
    return {
        name: ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
        for name, got, want in zip(NAMES, [out, *grads], [ref, *ref_grads], strict=True)
    }


if __name__ == "__main__":
    print(json.dumps({f"{s}-{bg}": run(s, bg) for s in GRIDS for bg in ("pad", "skip")}))
