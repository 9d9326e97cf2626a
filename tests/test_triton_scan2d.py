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
    if not HAS_TRITON:
        pytest.skip("needs triton")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    res = subprocess.run(
        [sys.executable, str(HERE / "_triton_interp_scan2d.py")], capture_output=True, text=True, env=env, check=False
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


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
