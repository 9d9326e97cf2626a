"""MambaMIL aggregator benchmark: inference and one training step on bags of 1k-100k 1024-d instances.

Model: create_model("mambamil", 1024, 2, layer=srmamba, rate=10, n_layers=2) (d_model 512, d_inner 1024),
chunked scan on CPU. Modes: infer (inference_mode), train (one step, plain autograd: ~170 MB per 1k
instances, so by default only up to 10k), train-ckpt (one step with grad_checkpointing=True).
Every case runs in a fresh subprocess that reports wall time and peak RSS above
the RSS it had once the model and the bag existed. Training step = forward + cross-entropy backward +
AdamW step. ABMIL is timed alongside as the cheap baseline.

usage: python benchmarks/aggregator.py [--quick] [--sizes 1000 10000 ...] [--train-max 50000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from scan import _rss_bytes, machine  # type: ignore[import-not-found]

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
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], args.child[1], int(args.child[2]))))
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
