"""2D selective scan: the reference against a hand-worked 3x3 grid; chunked against the float64 reference (values
and every gradient) on grids with holes, one row, one column, a single cell; grid building and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mambamil.ops.scan2d import (
    GridError,
    ScanGrid,
    patch_grid,
    selective_scan_2d,
    selective_scan_2d_chunked,
    selective_scan_2d_reference,
)

FULL_3x3 = [(c, r) for r in range(3) for c in range(3)]
HOLE_3x3 = [p for p in FULL_3x3 if p != (1, 1)]


def hand_inputs(positions):
    """d = n = 1, every decay 1/2 (delta 1, A = -ln 2), B = C = u = 1: the states are sums of powers of 1/2."""
    N = len(positions)
    one = torch.ones(1, 1, N, dtype=torch.float64)
    A = torch.full((1, 1), -math.log(2.0), dtype=torch.float64)
    return ScanGrid.from_positions(np.array(positions)), (one, one.clone(), A, one[:, :1].clone(), one[:, :1].clone())


# g (horizontal) = 1, 1.5, 1.75 along every full row; h (vertical) = 0.5 * h_above + g.
HAND = {
    ("full", "pad"): [[1, 1.5, 1.75], [1.5, 2.25, 2.625], [1.75, 2.625, 3.0625]],
    # pad cell at the centre: raw delta 0 and no bias -> decay exp(0) = 1, no input; it carries g = 1 to the right
    # (0.5 * 1 + 1 = 1.5) and h = 1.5 + 1 = 2.5 down (0.5 * 2.5 + 1.5 = 2.75)
    ("hole", "pad"): [[1, 1.5, 1.75], [1.5, None, 2.375], [1.75, 2.75, 2.9375]],
    # skipped centre: (1,2) follows (1,0) directly; (2,1) follows (0,1) directly (0.5 * 1.5 + 1.5 = 2.25)
    ("hole", "skip"): [[1, 1.5, 1.75], [1.5, None, 2.375], [1.75, 2.25, 2.9375]],
}


@pytest.mark.parametrize("key", list(HAND))
def test_reference_matches_hand_worked_3x3(key):
    positions = FULL_3x3 if key[0] == "full" else HOLE_3x3
    grid, (u, delta, A, B, C) = hand_inputs(positions)
    y = selective_scan_2d_reference(u, delta, A, B, C, grid, background=key[1])[0, 0]
    want = [HAND[key][r][c] for c, r in positions]
    assert y.tolist() == pytest.approx(want, abs=1e-12)


def test_full_grid_pad_and_skip_agree():
    """Without background cells both options are one and the same scan."""
    rng = np.random.default_rng(1)
    grid = ScanGrid.from_positions(np.array([(c, r) for r in range(3) for c in range(4)]))
    inp = inputs(2, 3, 2, len(grid), rng)
    a = selective_scan_2d_reference(*inp[:5], grid, *inp[5:], True, "pad")
    b = selective_scan_2d_reference(*inp[:5], grid, *inp[5:], True, "skip")
    torch.testing.assert_close(a, b)


def inputs(b, d, n, N, rng):
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=g, dtype=torch.float64) * scale

    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 2 - 0.2
    # u, delta, A, B, C, D, z, delta_bias
    return [r(b, d, N), r(b, d, N, scale=0.7), A, r(b, n, N), r(b, n, N), r(d), r(b, d, N), r(d, scale=0.5)]


def _holes(rng):
    return [(c, r) for r in range(5) for c in range(6) if rng.random() < 0.6 or (c, r) == (0, 0)]


GRIDS = {
    "holes": _holes,
    "one-row": lambda rng: [(c, 0) for c in range(7) if c != 3],
    "one-column": lambda rng: [(0, r) for r in range(6) if r != 2],
    "single-cell": lambda rng: [(4, 9)],
}


@pytest.mark.parametrize("background", ["pad", "skip"])
@pytest.mark.parametrize("shape", list(GRIDS))
@pytest.mark.parametrize("block", [None, 1])
def test_chunked_matches_reference_values_and_gradients(shape, background, block):
    """float32 chunked vs float64 reference, every input's gradient, rows cut into blocks of one row or one block;
    the instances are stored in a shuffled order (the scan places them by their cells)."""
    rng = np.random.default_rng(hash((shape, background)) % 1000)
    positions = np.array(GRIDS[shape](rng))
    positions = positions[rng.permutation(len(positions))]
    grid = ScanGrid.from_positions(positions)
    ref_in = [t.requires_grad_(True) for t in inputs(2, 4, 3, len(grid), rng)]
    ref = selective_scan_2d_reference(*ref_in[:5], grid, *ref_in[5:], True, background)
    weight = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * weight).sum(), ref_in)
    xs = [t.detach().float().requires_grad_(True) for t in ref_in]
    out = selective_scan_2d_chunked(*xs[:5], grid, *xs[5:], True, background, block=block)
    grads = torch.autograd.grad((out * weight.float()).sum(), xs)
    names = ["y", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    for name, got, want in zip(names, [out, *grads], [ref, *ref_grads], strict=True):
        scale = want.abs().max().clamp_min(1e-6)
        assert ((got.double() - want).abs().max() / scale).item() < 2e-5, name


def test_pad_and_skip_differ_on_holes():
    """Pad cells carry state from the left of a hole to the cells below it; skipping does not."""
    grid, (u, delta, A, B, C) = hand_inputs(HOLE_3x3)
    pad = selective_scan_2d_chunked(u, delta, A, B, C, grid, background="pad")
    skip = selective_scan_2d_chunked(u, delta, A, B, C, grid, background="skip")
    assert not torch.allclose(pad, skip)


def test_dispatch_and_no_grad_path():
    rng = np.random.default_rng(3)
    grid = ScanGrid.from_positions(np.array(_holes(rng)))
    inp = [t.float() for t in inputs(1, 3, 2, len(grid), rng)]
    with torch.no_grad():
        a = selective_scan_2d(*inp[:5], grid, *inp[5:], True, backend="auto")
    b = selective_scan_2d(*inp[:5], grid, *inp[5:], True, backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown backend"):
        selective_scan_2d(*inp[:5], grid, backend="cuda2d")


def test_patch_grid_from_level0_coords():
    coords = np.array([[1000, 512], [1256, 512], [1768, 768]])
    grid = patch_grid(coords, 256.0, "s1")
    assert (grid.cols.tolist(), grid.rows.tolist(), grid.height, grid.width) == ([0, 1, 3], [0, 0, 1], 2, 4)


def test_off_grid_coordinates_name_slide_and_step():
    coords = np.array([[0, 0], [256, 0], [384, 256]])  # a 128 px shift: mixed patch sizes
    with pytest.raises(GridError, match=r"^slide-7: patch \(384, 256\) is 128 px off the patch grid of step 256 px"):
        patch_grid(coords, 256.0, "slide-7")


def test_overlapping_tiling_is_refused():
    with pytest.raises(GridError, match="slide-8: 1 instances share a grid cell"):
        ScanGrid.from_positions(np.array([[0, 0], [1, 0], [1, 0]]), "slide-8")


def test_grid_over_limit_names_the_limit():
    with pytest.raises(GridError, match=r"slide-9: the patch grid is 2 x 1001 = 2002 cells, over the limit of 2000"):
        ScanGrid.from_positions(np.array([[0, 0], [1000, 1]]), "slide-9", max_cells=2000)


def test_chunked_memory_is_bounded_on_a_300x300_grid():
    """A 300 x 300 grid at d = 1024, n = 16 would need H*W*d*n*4 B = 5.9 GB of states at once; the chunked scan's
    forward holds the column states (W*d*n) and one block (default 2**23 elements) instead."""
    from mambamil.ops import scan2d

    grid = ScanGrid.from_positions(np.array([(c, r) for r in range(300) for c in range(300)]))
    plan = scan2d._plan(grid, "pad", 1024 * 16, scan2d.DEFAULT_BLOCK)
    biggest = max(idx.numel() for idx, _, _ in plan.blocks) * 1024 * 16
    assert biggest <= scan2d.DEFAULT_BLOCK
    assert sum(idx.numel() for idx, _, _ in plan.blocks) == 300 * 300
