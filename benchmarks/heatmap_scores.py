"""Heatmap scores: attention + gradient × input from one forward pass per model (mambamil.inference) vs two.

The baseline is what the heatmap stage did before issue 12: a forward pass under ``inference_mode`` for the
attention, then a second forward pass with gradients for gradient × input. Both run the same MambaMIL models (the
CLAM/MambaMIL shape: in_dim 1024, d_model 512, 2 SRMamba layers, rate 5) on the same bags, fp32 on CPU. Checks
that both give the same scores, then prints a Markdown table of the median of ``--repeats`` timings.

    python benchmarks/heatmap_scores.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mambamil.bags import TaskSpec
from mambamil.inference import Bag, Ensemble, Member, bag_outputs
from mambamil.models import create_model


def two_passes(models: list[torch.nn.Module], x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The pre-issue-12 heatmap scores: attention from an inference pass, gradient × input from a second pass."""
    attention, gradxinput = [], []
    for model in models:
        with torch.inference_mode():
            attention.append(model(x)["attention"].reshape(-1).numpy())
        xg = x.clone().requires_grad_(True)
        logits = model(xg)["logits"].reshape(-1)
        (grad,) = torch.autograd.grad(logits[int(logits.argmax())], xg)
        gradxinput.append((grad * xg).sum(-1).detach().numpy())
    return np.mean(attention, 0), np.mean(gradxinput, 0)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller bags, fewer repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = [500, 2000] if args.quick else [1000, 4000, 10000]
    repeats = 3 if args.quick else 5
    models = [create_model("mambamil", 1024, 2, layer="srmamba", rate=5).eval() for _ in range(2)]
    task = TaskSpec("t", "classification", classes=("a", "b"))
    members = [Member(None, m, {}, ("stored", 0), "fp32") for m in models]  # type: ignore[arg-type]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 2 models (a 2-fold ensemble), fp32 CPU\n")
    print("| instances | two passes s | one pass s | two ÷ one | max abs diff attention | max abs diff grad×input |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        x = torch.randn(n, 1024)
        bag = Bag("b", None, x, None, None)  # type: ignore[arg-type]
        ensemble = Ensemble(members, task, 1024, torch.device("cpu"))
        t_two, (att2, gxi2) = timed(lambda x=x: two_passes(models, x), repeats)
        t_one, res = timed(lambda bag=bag, ensemble=ensemble: bag_outputs(ensemble, bag, gradients=True), repeats)
        d_att = float(np.abs(res.attention - att2).max())
        d_gxi = float(np.abs(res.gradxinput - gxi2).max())
        print(f"| {n} | {t_two:.3f} | {t_one:.3f} | {t_two / t_one:.2f}× | {d_att:.1e} | {d_gxi:.1e} |")


if __name__ == "__main__":
    main()
