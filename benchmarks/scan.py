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

usage: python benchmarks/scan.py [--quick] [--lengths 1024 4096 ...]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L in {1k, 4k} only")
    ap.add_argument("--lengths", type=int, nargs="+")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], int(args.child[1]))))
        return
    lengths = args.lengths or ([1024, 4096] if args.quick else [1024, 4096, 16384, 65536])
    print(f"# selective scan, B=1 d={D} n={N}; {machine()}")
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
