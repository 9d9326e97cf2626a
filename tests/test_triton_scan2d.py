"""Triton 2D scan: the interpreter on CPU (in a subprocess, as tests/test_triton_scan.py does) against the float64
reference, values and every gradient, on grids with holes, one row, one column and a single cell."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def interp() -> dict:
    """Every case's relative errors (one child process, ~1 min of CPU: the tests using it are marked slow)."""
    if not HAS_TRITON:
        pytest.skip("needs triton")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    res = subprocess.run(
        [sys.executable, str(HERE / "_triton_interp_scan2d.py")], capture_output=True, text=True, env=env, check=False
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("background", ["pad", "skip"])
@pytest.mark.parametrize("shape", ["holes", "one-row", "one-column", "single-cell"])
def test_interpreter_matches_float64_reference(interp, shape, background):
    errs = interp[f"{shape}-{background}"]
    assert set(errs) == {"y", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"}
    for name, err in errs.items():
        assert err < 2e-5, (name, err)


def test_cell_stream_marks_row_starts():
    import torch

    from mambamil.ops.triton_scan2d import cell_stream

    idx = torch.tensor([[4, 5, 9], [6, 9, 9], [7, 8, 3]])
    cols = [torch.tensor([0, 2]), torch.tensor([1]), torch.tensor([0, 1, 2])]
    cells, col, start = cell_stream(idx, cols)
    assert cells.tolist() == [4, 5, 6, 7, 8, 3] and col.tolist() == [0, 2, 1, 0, 1, 2]
    assert start.tolist() == [1, 0, 1, 1, 0, 0]


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_forward_kernel_compiles_for_sm90_without_spills():
    """The CUDA code path compiles on a CPU-only machine (Triton's bundled ptxas), as benchmarks/triton_compile.py
    reports; one exp per (channel, state, cell)."""
    from mambamil.ops.triton_scan2d import compile_kernel

    kernel, _, _ = compile_kernel(90)
    ptx = kernel.asm["ptx"]
    assert ".target sm_90" in ptx and "ex2.approx" in ptx
    assert ".local" not in ptx  # no local-memory (stack) arrays in the kernel


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("background", ["pad", "skip"])
def test_cuda_triton_matches_float64_reference(background):
    import numpy as np
    import torch
    from test_scan2d import GRIDS, inputs

    from mambamil.ops.scan2d import ScanGrid, selective_scan_2d

    rng = np.random.default_rng(5)
    grid = ScanGrid.from_positions(np.array(GRIDS["holes"](rng)))
    ref_in = [t.cuda().requires_grad_(True) for t in inputs(2, 40, 16, len(grid), rng)]
    ref = selective_scan_2d(*ref_in[:5], grid, *ref_in[5:], True, background, backend="reference")
    ref_grads = torch.autograd.grad(ref.sum(), ref_in)
    xs = [t.detach().float().requires_grad_(True) for t in ref_in]
    out = selective_scan_2d(*xs[:5], grid, *xs[5:], True, background, backend="auto")
    grads = torch.autograd.grad(out.sum(), xs)
    for got, want in zip([out, *grads], [ref, *ref_grads], strict=True):
        assert ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-6)).item() < 2e-5
