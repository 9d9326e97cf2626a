"""Heatmap rendering: time and peak RSS vs slide size and patch count, banded (mambamil) vs whole-canvas.

The baseline is the usual approach (CLAM's ``drawHeatmap`` style): allocate float score and count canvases for the
whole output, paint every patch, then colour the whole image at once. Each case runs in a fresh subprocess so
its peak RSS (ru_maxrss) is its own. Prints a Markdown table.

    python benchmarks/heatmaps.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from mambamil.heatmaps import HeatmapSettings, colour_lut, render_heatmap
w, h, n, mpp_out, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rng = np.random.default_rng(0)
coords = np.stack([rng.integers(0, w - 256, n), rng.integers(0, h - 256, n)], 1)
values = rng.random(n)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
settings = HeatmapSettings.from_config(mpp=mpp_out)
if mode == "banded":
    img = render_heatmap(coords, values, 256, (w, h), 0.25, settings)
else:
    s = 0.25 / mpp_out
    ow, oh = round(w * s), round(h * s)
    total = np.zeros((oh, ow), np.float64); count = np.zeros((oh, ow), np.float64)
    side = max(1, round(256 * s))
    for (x, y), v in zip((coords * s).astype(int), values):
        total[y:y + side, x:x + side] += v; count[y:y + side, x:x + side] += 1
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    colour = colour_lut("jet")[(mean * 255).astype(np.uint8)]
    bg = np.full((oh, ow, 3), 255, np.uint8)
    img = np.where((count > 0)[..., None], (0.5 * colour + 0.5 * bg).astype(np.uint8), bg)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"s": dt, "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024, "shape": list(img.shape)}))
"""


def run(w: int, h: int, n: int, mpp: float, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(w), str(h), str(n), str(mpp), mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cases = [(20_000, 16_000, 10_000, 2.0), (100_000, 80_000, 200_000, 8.0), (100_000, 80_000, 200_000, 2.0)]
    if not args.quick:
        cases.append((200_000, 100_000, 200_000, 4.0))  # 1 µm/px would need ~20 GB for the whole-canvas baseline
    print("slide at 0.25 µm/px; RSS deltas after building the coordinates; output = RGB at the heatmap µm/px")
    print(
        "| slide px | patches | heatmap µm/px | output px | banded s | banded ΔRSS MB | whole-canvas s "
        "| whole-canvas ΔRSS MB | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for w, h, n, mpp in cases:
        a = run(w, h, n, mpp, "banded")
        b = run(w, h, n, mpp, "canvas")
        shape = f"{a['shape'][1]}×{a['shape'][0]}"
        print(
            f"| {w}×{h} | {n} | {mpp} | {shape} | {a['s']:.2f} | {a['delta_mb']:.0f} | {b['s']:.2f} | "
            f"{b['delta_mb']:.0f} | {b['delta_mb'] / max(a['delta_mb'], 1):.1f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
