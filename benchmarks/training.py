"""Training cost on CPU: seconds per epoch and peak RSS for bags of 10k instances, MambaMIL vs ABMIL.

Each model trains in a fresh subprocess (so ru_maxrss is its own) on synthetic 1024-d bags, one bag per step
with Adam, exactly as ``mambamil train`` does. ABMIL is the baseline in the same run. Prints a Markdown table.

    python benchmarks/training.py [--quick] [--bags 8] [--instances 10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
from mambamil.models import create_model
name, n_bags, n_inst, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
bags = [torch.randn(n_inst, 1024) for _ in range(n_bags)]
labels = [torch.tensor([i % 2]) for i in range(n_bags)]
model = create_model(name, in_dim=1024, n_classes=2)
opt = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    model.train()
    for x, y in zip(bags, labels):
        loss = F.cross_entropy(model(x)["logits"], y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"epoch_s": min(times), "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def run(name: str, bags: int, instances: int, epochs: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(bags), str(instances), str(epochs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 bags, 1 epoch")
    ap.add_argument("--bags", type=int, default=8)
    ap.add_argument("--instances", type=int, default=10_000)
    args = ap.parse_args()
    bags, epochs = (2, 1) if args.quick else (args.bags, 2)
    rows = {name: run(name, bags, args.instances, epochs) for name in ("abmil", "mambamil")}
    print(f"{bags} bags × {args.instances} instances × 1024-d per epoch; best of {epochs} epochs; CPU")
    print("| model | params | s / epoch | s / bag | peak RSS MB | ΔRSS during training MB | time vs ABMIL |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['params']:,} | {r['epoch_s']:.2f} | {r['epoch_s'] / bags:.3f} | {r['peak_mb']:.0f} | "
            f"{r['delta_mb']:.0f} | {r['epoch_s'] / rows['abmil']['epoch_s']:.1f}× |"
        )


if __name__ == "__main__":
    main()
