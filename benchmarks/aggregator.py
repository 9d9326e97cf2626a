"""MambaMIL aggregator benchmark: inference and one training step on bags of 1k-100k 1024-d instances.

Model: create_model("mambamil", 1024, 2, layer=srmamba, rate=10, n_layers=2) (d_model 512, d_inner 1024),
chunked scan on CPU. Modes: infer (inference_mode), train (one step, plain autograd: ~170 MB per 1k
instances, so by default only up to 10k), train-ckpt (one step with grad_checkpointing=True).
Every case runs in a fresh subprocess that reports wall time and peak RSS above
the RSS it had once the model and the bag existed. Training step = forward + cross-entropy backward +
AdamW step. ABMIL is timed alongside as the cheap baseline.

GPU (``--device cuda``, one process): MambaMIL inference and training step (plain autograd, bf16 autocast as
in training) at 10k and 100k instances (inference also 400k) with each scan backend usable there (triton,
cuda = mamba-ssm's kernel, chunked), ABMIL in the same run as the baseline; median ms after a warm-up on the
same bag and peak MB above model + bag (``torch.cuda.max_memory_allocated``), ratios to the ``cuda`` backend.

usage: python benchmarks/aggregator.py [--quick] [--sizes 1000 10000 ...] [--train-max 50000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from scan import _rss_bytes, machine, timed  # type: ignore[import-not-found]

IN_DIM = 1024


def run_case(model_name: str, mode: str, n: int) -> dict:
    import torch
    import torch.nn.functional as F

    from mambamil.models import create_model

    torch.manual_seed(0)
    kwargs = {"layer": "srmamba", "rate": 10, "n_layers": 2} if model_name == "mambamil" else {}
    if mode == "train-ckpt":
        kwargs["grad_checkpointing"] = True
    model = create_model(model_name, IN_DIM, 2, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode != "infer" else None
    model.train(mode != "infer")

    def step(x):
        if mode == "infer":
            with torch.inference_mode():
                return model(x)["logits"]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x)["logits"], torch.tensor([1]))
        loss.backward()
        opt.step()
        return loss

    step(torch.randn(256, IN_DIM))  # warm-up (allocates the optimizer state too)
    x = torch.randn(n, IN_DIM)
    base = _rss_bytes()
    t0 = time.perf_counter()
    step(x)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": model_name, "mode": mode, "n": n, "time_s": dt, "peak_mb": max(0, peak - base) / 2**20}


#: device of the GPU mode; ``--smoke`` runs that code path on CPU (tiny sizes, Triton interpreted) as a dry run
DEV = "cuda"
#: training-step precision of the GPU mode: fp32, the MIL stages' default (``training.precision``), or bf16
PRECISION = "fp32"


def gpu_case(model_name: str, backend: str | None, mode: str, n: int, reps: int, in_dim: int = IN_DIM, **kw) -> dict:
    """One GPU case in this process: warm-up on the same bag, then the median of ``reps`` timed steps."""

    import torch
    import torch.nn.functional as F

    from mambamil.models import create_model

    cuda = DEV == "cuda"
    torch.manual_seed(0)
    kwargs = {"layer": "srmamba", "rate": 10, "n_layers": 2, "scan_backend": backend} if backend else {}
    model = create_model(model_name, in_dim, 2, **kwargs, **(kw if backend else {})).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
    model.train(mode == "train")
    x = torch.randn(n, in_dim, device=DEV)
    y = torch.tensor([1], device=DEV)

    def step():
        if mode == "infer":
            with torch.inference_mode():
                return model(x)["logits"]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=cuda and PRECISION == "bf16"):
            loss = F.cross_entropy(model(x)["logits"].float(), y)
        loss.backward()
        opt.step()
        return loss

    return timed(step, reps, cuda)


def main_cuda(sizes: list[int], infer_only: list[int], chunked_max: int, in_dim: int = IN_DIM, **kw) -> None:
    """GPU table (see the module docstring)."""
    import torch

    from mambamil.ops import available_backends

    have = available_backends()
    backends = [b for b in ("triton", "cuda", "chunked") if b in have]
    where = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (smoke run: Triton interpreted, times meaningless)"
    print(f"# MambaMIL (srmamba, rate 10, 2 layers, {in_dim}-d input) on {where}; {machine()}")
    print(f"# scan backends here: {', '.join(have)} (cuda = mamba-ssm's kernel); training steps in {PRECISION}")
    cases = []
    for n in sorted(set(sizes) | set(infer_only)):
        for mode in ("infer", "train"):
            if mode == "train" and n not in sizes:
                continue
            cases += [("mambamil", b, mode, n) for b in backends if b != "chunked" or n <= chunked_max]
            cases.append(("abmil", None, mode, n))
    rows = {}
    for model_name, backend, mode, n in cases:
        reps = 1 if backend == "chunked" or DEV != "cuda" else 5
        try:
            r = gpu_case(model_name, backend, mode, n, reps, in_dim, **kw)
        except Exception as e:  # report and go on (e.g. out of memory for one backend)
            r = {"error": f"{type(e).__name__}: {e}"[:200]}
        if DEV == "cuda":
            torch.cuda.empty_cache()
        rows[(model_name, backend, mode, n)] = r
        tail = r.get("error") or f"{r['ms']:.1f} ms  peak +{r['peak_mb']:.0f} MB"
        print(f"N={n:>7} {model_name:<9} {backend or '':<8} {mode:<6} {tail}", flush=True)
    print()
    print("| model | scan backend | mode | instances | ms | peak MB above inputs | time / cuda | peak / cuda |")
    print("|---|---|---|---|---|---|---|---|")
    for (model_name, backend, mode, n), r in rows.items():
        k = rows.get(("mambamil", "cuda", mode, n))
        if "error" in r:
            print(f"| {model_name} | {backend or '–'} | {mode} | {n} | error: {r['error']} | | | |")
            continue
        ok = k is not None and "error" not in k
        rt = f"{r['ms'] / k['ms']:.2f}x" if ok else "–"
        rp = f"{r['peak_mb'] / k['peak_mb']:.2f}x" if ok and k["peak_mb"] > 0 else "–"
        print(f"| {model_name} | {backend or '–'} | {mode} | {n} | {r['ms']:.1f} | {r['peak_mb']:.0f} | {rt} | {rp} |")


def spawn(model_name: str, mode: str, n: int, timeout: float = 1200) -> dict:
    cmd = [sys.executable, __file__, "--child", model_name, mode, str(n)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": model_name, "mode": mode, "n": n, "error": f"timeout {timeout}s"}
    if res.returncode != 0:
        return {"model": model_name, "mode": mode, "n": n, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="bags of 1k and 10k only")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--train-max", type=int, default=10_000, help="largest bag for the plain training step")
    ap.add_argument("--ckpt-max", type=int, default=100_000, help="largest bag for the grad-checkpointed training step")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--chunked-max", type=int, default=100_000, help="cuda: largest bag run with the chunked scan")
    ap.add_argument("--smoke", action="store_true", help="dry run of --device cuda on CPU (needs TRITON_INTERPRET=1)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="cuda: training-step precision")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], args.child[1], int(args.child[2]))))
        return
    global DEV, PRECISION
    PRECISION = args.precision
    if args.smoke:
        DEV = "cpu"
        main_cuda([20], [40], 20, in_dim=8, d_model=8)
        return
    if args.device == "cuda":
        main_cuda(args.sizes or [10_000, 100_000], [400_000], args.chunked_max)
        return
    sizes = args.sizes or ([1000, 10_000] if args.quick else [1000, 10_000, 50_000, 100_000])
    print(f"# MambaMIL (srmamba, rate 10, 2 layers, 1024-d input); {machine()}")
    rows = []
    for n in sizes:
        for model_name in ("mambamil", "abmil"):
            for mode in ("infer", "train", "train-ckpt"):
                if mode == "train" and n > args.train_max:
                    continue
                if mode == "train-ckpt" and (model_name != "mambamil" or n > args.ckpt_max):
                    continue
                r = spawn(model_name, mode, n)
                rows.append(r)
                tail = r.get("error") or f"{r['time_s']:.2f} s  peak +{r['peak_mb']:.0f} MB"
                print(f"N={n:>7} {model_name:<9} {mode:<6} {tail}", flush=True)
    print()
    print("| model | mode | instances | time s | peak RSS above inputs MB | MB per 1k instances |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['mode']} | {r['n']} | error: {r['error']} | | |")
        else:
            per_k = r["peak_mb"] / (r["n"] / 1000)
            print(f"| {r['model']} | {r['mode']} | {r['n']} | {r['time_s']:.2f} | {r['peak_mb']:.0f} | {per_k:.1f} |")


if __name__ == "__main__":
    main()
