"""2D selective scan vs the 1D scan on the same bag: forward+backward time and peak memory (CPU, chunked).

The bag: N instances on a patch grid shaped like tissue (an ellipse with a ragged border and holes, about half of
its bounding box); d = 1024, n = 16 (MambaMIL's d_inner and d_state), every option of the model's scan on (D, z,
delta_bias, softplus). Methods, each case in a fresh subprocess (wall time of one forward+backward after a small
warm-up; peak RSS above the RSS once the inputs exist):

  1d          mambamil's chunked 1D scan over the N instances (any order: the cost does not depend on it)
  2d-skip     the chunked 2D scan, background cells skipped (cost follows the tissue)
  2d-pad      the chunked 2D scan, background cells as pad cells (2DMamba's default: they carry state, so the
              cost follows the bounding box of the rows from the first tissue row on)

The table gives the 2D cost per instance as a ratio to the 1D one (the target is <= 3x) and the grid's
tissue share. ``--grid 300`` adds a full 300 x 300 grid (90k cells), the 4 GB memory bound of the issue.

GPU (``--device cuda``, one process; the first table of benchmarks/gpu_check.sh): 1d (mambamil's scan, backend
auto), 2d-skip / 2d-pad with the Triton forward and 2d-skip with the chunked scan on the GPU; fwd+bwd ms (median
of 3 after a warm-up), peak MB above the inputs, and at the first size the max relative error of the triton 2D
output and gradients against the chunked 2D scan in float64 on the GPU. ``--smoke`` runs it on CPU (tiny sizes,
needs TRITON_INTERPRET=1).

usage: python benchmarks/scan2d.py [--sizes 10000 50000 100000] [--d 1024] [--threads 1] [--grid 300] [--quick]
                                  [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import _rss_bytes, machine

D, N_STATE = 1024, 16
THREADS = 1
METHODS = ("1d", "2d-skip", "2d-pad")


def tissue_positions(n: int, seed: int = 0):
    """About n (column, row) cells of a tissue-like region: a ragged ellipse with holes, ~50 % of its box."""
    import numpy as np

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n / 0.5)))  # box side for ~50 % fill
    for _ in range(60):
        yy, xx = np.mgrid[0:side, 0:side]
        r = np.hypot((xx - side / 2) / (side / 2), (yy - side / 2) / (side / 3.2))
        border = 1 + 0.08 * np.sin(np.arctan2(yy - side / 2, xx - side / 2) * 7)
        mask = (r < border) & (rng.random((side, side)) > 0.08)  # 8 % holes
        if mask.sum() >= n:
            break
        side += max(1, side // 50)
    rows, cols = np.nonzero(mask)
    keep = np.sort(rng.choice(len(rows), size=n, replace=False))
    return np.stack([cols[keep], rows[keep]], axis=1)


def run_case(method: str, n: int, grid_side: int = 0, d: int = D, threads: int = 1) -> dict:
    import numpy as np
    import torch

    global D
    D = d
    torch.set_num_threads(threads)

    from mambamil.ops.scan2d import ScanGrid, grid_cells, selective_scan_2d
    from mambamil.ops.selective_scan import selective_scan

    torch.manual_seed(0)
    full = [(c, r) for r in range(grid_side) for c in range(grid_side)]
    pos = np.array(full) if grid_side else tissue_positions(n)
    grid = ScanGrid.from_positions(pos)

    def inputs(m: int):
        u, z = torch.randn(1, D, m), torch.randn(1, D, m)
        delta = torch.randn(1, D, m) * 0.5
        A = -torch.exp(torch.randn(D, N_STATE) * 0.5) * 4
        B, C = torch.randn(1, N_STATE, m), torch.randn(1, N_STATE, m)
        Dp, bias = torch.randn(D), torch.rand(D) * 0.5
        for t in (u, z, delta, A, B, C, Dp, bias):
            t.requires_grad_()
        return u, delta, A, B, C, Dp, z, bias

    def op(args, g):
        u, delta, A, B, C, Dp, z, bias = args
        if method == "1d":
            y = selective_scan(u, delta, A, B, C, Dp, z, bias, True, backend="chunked")
        else:
            y = selective_scan_2d(u, delta, A, B, C, g, Dp, z, bias, True, method[3:], backend="chunked")
        y.backward(torch.ones_like(y))

    small = ScanGrid.from_positions(np.array([(c, r) for r in range(8) for c in range(8)]))
    op(inputs(64), small)  # warm-up
    args = inputs(len(grid))
    base = _rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    op(args, grid)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    background = "skip" if method == "2d-skip" else "pad"
    return {
        "method": method, "n": len(grid), "wall_s": dt, "time_s": cpu, "peak_mb": max(0, peak - base) / 2**20,
        "box": f"{grid.height}x{grid.width}", "tissue": len(grid) / (grid.height * grid.width),
        "cells": grid_cells(grid, background) if method != "1d" else len(grid),
    }  # fmt: skip


def spawn(method: str, n: int, grid_side: int = 0, timeout: float = 3600) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(n), str(grid_side), str(D), str(THREADS)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "error": f"timeout {timeout}s"}
    if res.returncode != 0:
        return {"method": method, "n": n, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main_cuda(sizes: list[int], device: str) -> None:
    import numpy as np
    import torch

    from mambamil.ops.scan2d import ScanGrid, selective_scan_2d
    from mambamil.ops.selective_scan import selective_scan

    cuda = device == "cuda"
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (smoke)'}, torch {torch.__version__}")
    print(f"d={D}, n={N_STATE}, batch 1, forward+backward, all scan options on\n")
    print("| N | tissue | method | fwd+bwd ms | x 1d | peak MB |")
    print("|---|---|---|---|---|---|")
    methods = {"1d": ("1d", "auto", ""), "2d-skip triton": ("2d", "triton", "skip"),
               "2d-pad triton": ("2d", "triton", "pad"), "2d-skip chunked": ("2d", "chunked", "skip")}  # fmt: skip

    def inputs(m, dtype=torch.float32, seed=0):
        g = torch.Generator().manual_seed(seed)
        t = [torch.randn(1, D, m, generator=g), torch.randn(1, D, m, generator=g) * 0.5,
             -torch.exp(torch.randn(D, N_STATE, generator=g) * 0.5) * 4, torch.randn(1, N_STATE, m, generator=g),
             torch.randn(1, N_STATE, m, generator=g), torch.randn(D, generator=g), torch.randn(1, D, m, generator=g),
             torch.rand(D, generator=g) * 0.5]  # fmt: skip
        return [x.to(device=device, dtype=dtype).requires_grad_() for x in t]

    def call(kind, backend, bg, args, grid):
        u, dl, A, B, C, Dp, z, bias = args
        if kind == "1d":
            return selective_scan(u, dl, A, B, C, Dp, z, bias, True, backend=backend)
        return selective_scan_2d(u, dl, A, B, C, grid, Dp, z, bias, True, bg, backend=backend)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for i, n in enumerate(sizes):
        grid = ScanGrid.from_positions(tissue_positions(n))
        res = {}
        for name, (kind, backend, bg) in methods.items():
            args = inputs(len(grid))
            try:
                y = call(kind, backend, bg, args, grid)  # warm-up
                y.backward(torch.ones_like(y))
                sync()
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated() if cuda else 0
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    y = call(kind, backend, bg, args, grid)
                    y.backward(torch.ones_like(y))
                    sync()
                    times.append(time.perf_counter() - t0)
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
                res[name] = (float(np.median(times)) * 1e3, peak)
            except Exception as exc:  # report and go on: the other rows still count
                res[name] = (float("nan"), float("nan"))
                print(f"| {len(grid)} | | {name} | error: {str(exc).splitlines()[0][:80]} | | |")
        for name, (ms, peak) in res.items():
            ratio = ms / res["1d"][0]
            tissue = len(grid) / (grid.height * grid.width)
            print(f"| {len(grid)} | {tissue:.0%} | {name} | {ms:.1f} | {ratio:.2f} | {peak:.0f} |", flush=True)
        if i == 0:
            for bg in ("skip", "pad"):
                ref_in = inputs(len(grid), torch.float64, seed=1)
                ref = call("2d", "chunked", bg, ref_in, grid)
                w = torch.randn_like(ref)
                ref_g = torch.autograd.grad((ref * w).sum(), ref_in)
                xs = [x.detach().float().requires_grad_() for x in ref_in]
                out = call("2d", "triton", bg, xs, grid)
                got_g = torch.autograd.grad((out * w.float()).sum(), xs)
                errs = [((g.double() - r).abs().max() / r.abs().max()).item()
                        for g, r in zip([out, *got_g], [ref, *ref_g], strict=True)]  # fmt: skip
                print(f"\nmax rel error of triton 2d-{bg} vs float64 chunked at N={len(grid)}: output {errs[0]:.1e}, "
                      f"gradients (u, delta, A, B, C, D, z, delta_bias) max {max(errs[1:]):.1e}\n")


def main() -> None:
    global D, THREADS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--grid", type=int, default=0, help="also a full grid of this side (e.g. 300), 2d-pad only")
    ap.add_argument("--quick", action="store_true", help="sizes 2000 and 5000")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--smoke", action="store_true", help="dry run of --device cuda on CPU (needs TRITON_INTERPRET=1)")
    ap.add_argument("--d", type=int, default=D, help="channels (default %(default)s; cost is linear in d)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per case (default %(default)s)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.smoke:
        D = 32
        main_cuda([60], "cpu")
        return
    if a.device == "cuda":
        main_cuda(a.sizes, "cuda")
        return
    if a.child:
        print(json.dumps(run_case(a.child[0], *map(int, a.child[1:]))))
        return
    D, THREADS = a.d, a.threads
    sizes = [2000, 5000] if a.quick else a.sizes
    print(f"machine: {machine()}; {THREADS} torch thread(s) per case")
    print(f"d={D}, n={N_STATE}, batch 1, forward+backward, all scan options on; one fresh process per case; times are "
          "the case's CPU seconds (process_time: the machine is shared), wall seconds beside them\n")
    print("| N | grid box | tissue | method | cells scanned | fwd+bwd CPU s | wall s | µs / inst. | x 1d | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        res = {m: spawn(m, n) for m in METHODS}
        for m in METHODS:
            r = res[m]
            if "error" in r:
                print(f"| {n} | | | {m} | | {r['error']} | | | | |", flush=True)
                continue
            ratio = r["time_s"] / res["1d"]["time_s"] if "time_s" in res["1d"] else float("nan")
            print(f"| {r['n']} | {r['box']} | {r['tissue']:.0%} | {m} | {r['cells']} | {r['time_s']:.1f} | "
                  f"{r['wall_s']:.1f} | {1e6 * r['time_s'] / r['n']:.0f} | {ratio:.2f} | {r['peak_mb']:.0f} |",
                  flush=True)  # fmt: skip
    if a.grid:
        n = a.grid * a.grid
        one, two = spawn("1d", n, a.grid), spawn("2d-pad", n, a.grid)
        for m, r in (("1d", one), ("2d-pad", two)):
            if "error" in r:
                print(f"| {n} | | | {m} | | {r['error']} | | | | |")
                continue
            ratio = r["time_s"] / one["time_s"] if "time_s" in one else float("nan")
            print(f"| {r['n']} | {r['box']} | {r['tissue']:.0%} | {m} | {r['cells']} | {r['time_s']:.1f} | "
                  f"{r['wall_s']:.1f} | {1e6 * r['time_s'] / r['n']:.0f} | {ratio:.2f} | {r['peak_mb']:.0f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
