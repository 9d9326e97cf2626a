"""Selective-scan benchmark: chunked vs sequential reference vs the exp floor (B=1, d=1024, n=16).

Every case runs in a fresh subprocess, which reports wall time and peak RSS above the RSS it had once
the inputs existed (``ru_maxrss`` high-water mark minus that baseline), so one case's allocations do
not hide another's.

Methods
  chunked      mambamil's chunked scan (forward, and forward+backward)
  reference    mambamil's sequential loop (backend "reference"), forward; forward+backward by autograd
               only up to 4k (it stores O(b*d*n*L))
  ssm_ref      mamba-ssm's ``selective_scan_ref`` algorithm (materialises exp(delta*A) and delta*B*u,
               O(b*d*n*L)), forward, up to 16k
  exp_floor    torch.exp over b*d*n*L float32 elements, into a preallocated output, in 64M-element blocks

GPU (``--device cuda``, one process, all options on: delta_softplus, delta_bias, D, z)
  triton       mambamil's Triton kernels;  cuda  mamba-ssm's kernel (when it imports);  chunked (L <= 100k)
  fwd and fwd+bwd ms (median of CUDA-event timings after a warm-up), peak MB above the inputs
  (``torch.cuda.max_memory_allocated``), the ratios to ``cuda``, and at --err-length (16k) the max relative
  error of the output and of every gradient against the chunked scan run in float64 on the GPU.
  The triton backend is GPU-only: on CPU it runs only under Triton's interpreter (tests), so the CPU table
  has no triton row.

usage: python benchmarks/scan.py [--quick] [--lengths 1024 4096 ...] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

D, N = 1024, 16
#: device of the GPU mode; ``--smoke`` runs that code path on CPU (tiny sizes, Triton interpreted) as a dry run
DEV = "cuda"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _ssm_ref(u, delta, A, B, C, delta_softplus=True):
    """mamba-ssm's selective_scan_ref algorithm (real A, variable B/C)."""
    import torch
    import torch.nn.functional as F

    delta = F.softplus(delta) if delta_softplus else delta
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    return torch.stack(ys, dim=2)


def run_case(method: str, L: int) -> dict:
    """Child process: build inputs, run once to warm up (small L), then time the case once."""
    import torch

    from mambamil.ops import selective_scan

    torch.manual_seed(0)

    def inputs(n_len: int, grad: bool):
        u = torch.randn(1, D, n_len)
        delta = torch.randn(1, D, n_len) * 0.5
        A = -torch.exp(torch.randn(D, N) * 0.5) * 4  # decays down to ~exp(-48) with softplus(delta) ~ 3
        B, C = torch.randn(1, N, n_len), torch.randn(1, N, n_len)
        if grad:
            for t in (u, delta, A, B, C):
                t.requires_grad_()
        return u, delta, A, B, C

    def op(args, backward: bool):
        if method == "ssm_ref":
            y = _ssm_ref(*args)
        else:
            backend = "reference" if method.startswith("reference") else "chunked"
            y = selective_scan(*args, delta_softplus=True, backend=backend)
        if backward:
            y.backward(torch.ones_like(y))
        return y

    backward = method.endswith("+bwd")
    if method == "exp_floor":
        total = N * D * L
        block = min(total, 1 << 26)
        x = torch.empty(block).uniform_(-10, 0)
        out = torch.empty_like(x)
        torch.exp(x, out=out)
        base = _rss_bytes()
        t0 = time.perf_counter()
        done = 0
        while done < total:
            m = min(block, total - done)
            torch.exp(x[:m], out=out[:m])
            done += m
        dt = time.perf_counter() - t0
    else:
        with torch.set_grad_enabled(backward):
            op(inputs(256, backward), backward)  # warm-up
            args = inputs(L, backward)
            base = _rss_bytes()
            t0 = time.perf_counter()
            op(args, backward)
            dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "L": L, "time_s": dt, "peak_mb": max(0, peak - base) / 2**20}


def spawn(method: str, L: int, timeout: float = 900) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(L)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"method": method, "L": L, "error": f"timeout {timeout}s"}
    if res.returncode != 0:
        return {"method": method, "L": L, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        pass
    return (
        f"{platform.machine()} '{model}', {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )


def cuda_inputs(L: int, dtype=None, grad: bool = False, seed: int = 0) -> dict:
    """Scan inputs on the GPU (B=1, d=1024, n=16), distributions as in :func:`run_case`, all options."""
    import torch

    g = torch.Generator(device=DEV).manual_seed(seed)

    def r(*s, scale=1.0):
        return torch.randn(*s, device=DEV, generator=g) * scale

    inp = {
        "u": r(1, D, L), "delta": r(1, D, L, scale=0.5), "A": -torch.exp(r(D, N, scale=0.5)) * 4,
        "B": r(1, N, L), "C": r(1, N, L), "D": r(D), "z": r(1, D, L),
        "delta_bias": torch.rand(D, device=DEV, generator=g) * 0.5,
    }  # fmt: skip
    if dtype is not None:
        inp = {k: v.to(dtype) for k, v in inp.items()}
    return {k: v.requires_grad_(grad) for k, v in inp.items()}


def _scan(inp: dict, backend: str):
    from mambamil.ops import selective_scan

    return selective_scan(**inp, delta_softplus=True, backend=backend)


def cuda_time(backend: str, L: int, backward: bool, reps: int) -> dict:
    """Median ms of ``reps`` runs after one warm-up (compiles), and peak MB above the inputs."""
    import torch

    cuda = DEV == "cuda"
    inp = cuda_inputs(L, grad=backward)
    gy = torch.randn(1, D, L, device=DEV) if backward else None

    def once():
        y = _scan(inp, backend)
        if backward:
            torch.autograd.grad(y, list(inp.values()), gy)

    with torch.set_grad_enabled(backward):
        return timed(once, reps, cuda)


def timed(fn, reps: int, cuda: bool) -> dict:
    """Run ``fn`` once (warm-up: compiles, allocator), then ``reps`` times: median ms and peak MB above what was
    allocated before the timed runs (CUDA only; NaN on CPU). Shared with benchmarks/aggregator.py."""
    import statistics

    import torch

    fn()
    base = 0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
    return {"ms": statistics.median(times), "peak_mb": peak}


def cuda_errors(backends: list[str], L: int) -> dict:
    """Max relative error of the output and of the gradients of every input against float64 (chunked)."""
    import torch

    from mambamil.ops import selective_scan_chunked

    def rel(x, ref):
        return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()

    base = cuda_inputs(L, seed=1)
    f64 = {k: v.double().requires_grad_() for k, v in base.items()}
    gy = torch.randn(1, D, L, device=DEV, dtype=torch.float64)
    y64 = selective_scan_chunked(**f64, delta_softplus=True)
    g64 = torch.autograd.grad(y64, list(f64.values()), gy)
    ref = (y64.detach(), *g64)
    del f64, y64, g64
    out = {}
    for backend in backends:
        inp = {k: v.clone().requires_grad_() for k, v in base.items()}
        y = _scan(inp, backend)
        grads = torch.autograd.grad(y, list(inp.values()), gy.float())
        out[backend] = {
            "fwd": rel(y.detach(), ref[0]),
            "grad": max(rel(g, r) for g, r in zip(grads, ref[1:], strict=True)),
        }
        del inp, y, grads
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return out


def main_cuda(lengths: list[int], err_length: int, chunked_max: int) -> None:
    """GPU table: triton vs mamba-ssm's kernel vs chunked (see the module docstring)."""
    import torch

    from mambamil.ops import available_backends

    have = available_backends()
    backends = [b for b in ("triton", "cuda", "chunked") if b in have]
    where = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (smoke run: Triton interpreted, times meaningless)"
    print(f"# selective scan on {where}, B=1 d={D} n={N}, all options, fp32; {machine()}")
    print(f"# backends here: {', '.join(have)} (cuda = mamba-ssm's kernel)")
    res: dict = {}
    for L in lengths:
        for backend in backends:
            if backend == "chunked" and chunked_max < L:
                continue
            reps = (3 if backend == "chunked" else 10) if DEV == "cuda" else 1
            for bwd in (False, True):
                try:
                    r = cuda_time(backend, L, bwd, reps)
                except Exception as e:  # report and go on: one failing backend must not hide the others
                    r = {"error": f"{type(e).__name__}: {e}"[:200]}
                    if DEV == "cuda":
                        torch.cuda.empty_cache()
                res[(L, backend, bwd)] = r
                tail = r.get("error") or f"{r['ms']:.2f} ms  peak +{r['peak_mb']:.0f} MB"
                print(f"L={L:>7} {backend:<8} {'fwd+bwd' if bwd else 'fwd':<8} {tail}", flush=True)
    errs = cuda_errors(backends, err_length)

    def cell(L, backend, bwd, key="ms"):
        r = res.get((L, backend, bwd))
        return "–" if r is None else ("error" if "error" in r else f"{r[key]:.2f}" if key == "ms" else f"{r[key]:.0f}")

    def ratio(L, backend, bwd, key="ms"):
        r, k = res.get((L, backend, bwd)), res.get((L, "cuda", bwd))
        if not r or not k or "error" in r or "error" in k:
            return "–"
        return f"{r[key] / k[key]:.2f}x"

    print()
    print("| L | backend | fwd ms | fwd+bwd ms | fwd peak MB | fwd+bwd peak MB | fwd / cuda | fwd+bwd / cuda "
          "| fwd+bwd peak / cuda |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for L in lengths:
        for b in backends:
            if (L, b, False) in res:
                print(f"| {L} | {b} | {cell(L, b, False)} | {cell(L, b, True)} | {cell(L, b, False, 'peak_mb')} | "
                      f"{cell(L, b, True, 'peak_mb')} | {ratio(L, b, False)} | {ratio(L, b, True)} | "
                      f"{ratio(L, b, True, 'peak_mb')} |")  # fmt: skip
    print()
    print(f"| backend | max rel. error fwd (L={err_length}) | max rel. error gradients | vs float64 chunked |")
    print("|---|---|---|---|")
    for b, e in errs.items():
        print(f"| {b} | {e['fwd']:.1e} | {e['grad']:.1e} | targets 1e-5 / 1e-4 |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L in {1k, 4k} only")
    ap.add_argument("--lengths", type=int, nargs="+")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--err-length", type=int, default=16384, help="cuda: L of the float64 accuracy check")
    ap.add_argument("--chunked-max", type=int, default=102400, help="cuda: longest L timed with chunked")
    ap.add_argument("--smoke", action="store_true", help="dry run of --device cuda on CPU (needs TRITON_INTERPRET=1)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], int(args.child[1]))))
        return
    if args.smoke:
        global D, DEV
        D, DEV = 16, "cpu"
        main_cuda(args.lengths or [40, 100], 70, 64)
        return
    if args.device == "cuda":
        main_cuda(args.lengths or [16384, 102400, 409600], args.err_length, args.chunked_max)
        return
    lengths = args.lengths or ([1024, 4096] if args.quick else [1024, 4096, 16384, 65536])
    print(f"# selective scan, B=1 d={D} n={N}; {machine()}")
    print("# triton: GPU-only (on CPU it runs only under Triton's interpreter, for tests); see --device cuda")
    rows = []
    for L in lengths:
        methods = ["exp_floor", "chunked", "chunked+bwd", "reference"]
        if L <= 4096:
            methods.append("reference+bwd")
        if L <= 16384:
            methods.append("ssm_ref")
        res = {m: spawn(m, L) for m in methods}
        rows.append((L, res))
        for m, r in res.items():
            tail = r.get("error") or f"{r['time_s']:.3f} s  peak +{r['peak_mb']:.0f} MB"
            print(f"L={L:>6} {m:<14} {tail}", flush=True)

    def t(r):
        return r["time_s"] if r and "time_s" in r else float("nan")

    print()
    print(
        "| L | chunked fwd s | chunked fwd+bwd s | fwd+bwd peak MB | reference fwd s | ssm_ref fwd s "
        "| exp floor s | ref / chunked | ssm_ref / chunked | chunked / exp floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for L, res in rows:
        c, cb, ref, sref, fl = (res.get(k) for k in ("chunked", "chunked+bwd", "reference", "ssm_ref", "exp_floor"))
        sref_t = t(sref)
        print(
            f"| {L} | {t(c):.3f} | {t(cb):.3f} | {cb.get('peak_mb', float('nan')):.0f} | {t(ref):.3f} | "
            f"{sref_t:.3f} | {t(fl):.3f} | {t(ref) / t(c):.1f}x | {sref_t / t(c):.1f}x | {t(c) / t(fl):.1f}x |"
        )
    print()
    print("| L | method | time s | peak RSS above inputs MB |")
    print("|---|---|---|---|")
    for L, res in rows:
        for m, r in res.items():
            if "error" in r:
                print(f"| {L} | {m} | error: {r['error']} | |")
            else:
                print(f"| {L} | {m} | {r['time_s']:.3f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
