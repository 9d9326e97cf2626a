"""Features-stage throughput on CPU: mambamil's batched DataLoader path vs a naive per-patch loop.

Both embed the same patches of the real slide with ``resnet50_trunc`` (random weights: no download; the cost is
the same as with ImageNet weights) using the same model instance, in this one process, so the ratio is
meaningful on a noisy machine. The naive loop is what many scripts do: open the slide, then for each patch
read it, resize it with PIL, normalise it, run the model on a batch of one. Peak RSS (this process plus its
reader processes, PSS so pages shared after fork count once) is sampled every 20 ms. Prints a Markdown table.

    python benchmarks/features.py [--quick] [--slide PATH] [--batch-size 32] [--num-workers 1]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from mambamil.features.encoders import Encoder, create_encoder
from mambamil.features.extract import FeatureSettings, extract_slide
from mambamil.h5layout import read_coords, read_features
from mambamil.slide import open_slide
from mambamil.tiling import TilingSettings, tile_slide

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "CMU-1-Small-Region.svs"


class PeakRSS:
    """Peak resident memory of this process and its children while the block runs (MiB)."""

    def __enter__(self) -> PeakRSS:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me, *me.children(recursive=True)]
                rss = sum(p.memory_full_info().pss for p in procs)  # PSS: shared pages counted once
            except psutil.Error:
                rss = 0
            self.peak = max(self.peak, rss)
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = self.peak / 2**20


def naive(slide_path: Path, coords_path: Path, enc: Encoder) -> np.ndarray:
    """Read one patch at target µm/px, PIL-resize, normalise, embed alone; repeat."""
    cf = read_coords(coords_path)
    mean = torch.tensor(enc.spec.mean).view(3, 1, 1)
    std = torch.tensor(enc.spec.std).view(3, 1, 1)
    out = []
    with open_slide(slide_path, mpp=cf.attrs["slide_mpp"]) as s, torch.no_grad():
        for x, y in cf.coords:
            patch = s.read_at_mpp(int(x), int(y), (cf.patch_size, cf.patch_size), cf.target_mpp)
            img = Image.fromarray(patch).resize(enc.spec.input_size[::-1], Image.BILINEAR)
            t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
            out.append(enc.model(((t - mean) / std)[None]).numpy()[0])
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the default grid only (no 50 % overlap grid)")
    ap.add_argument("--slide", type=Path, default=REAL, help="real slide (default: shared CMU-1-Small-Region)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=1)
    args = ap.parse_args()
    enc = create_encoder("resnet50_trunc", "random")
    settings = FeatureSettings.from_config(
        {
            "encoder": "resnet50_trunc",
            "weights": "random",
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "device": "cpu",
        }
    )
    grids = [("grid 256 px @ 0.5 µm/px", 0.0)] + ([] if args.quick else [("same, 50 % overlap", 0.5)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, overlap in grids:
            tiles = tile_slide(args.slide, tmp / f"tiles{overlap}", TilingSettings.from_config(overlap=overlap))
            coords = tiles.outputs["coords"]
            with torch.no_grad():  # warm-up: first-call allocations are not part of either path
                enc.model(torch.zeros(2, 3, 224, 224))
            with PeakRSS() as m_naive:
                t0 = time.perf_counter()
                ref = naive(args.slide, coords, enc)
                t_naive = time.perf_counter() - t0
            with PeakRSS() as m_ours:
                t0 = time.perf_counter()
                extract_slide(args.slide, coords, tmp / "f.h5", settings, progress=False, force=True, encoder=enc)
                t_ours = time.perf_counter() - t0
            ours = read_features(tmp / "f.h5").features
            diff = float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-12))
            n = tiles.n_patches
            rows.append((name, n, t_naive, t_ours, n / t_naive, n / t_ours, m_naive.mib, m_ours.mib, diff))
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    print(
        f"machine: {model}, {psutil.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), python {platform.python_version()}; slide {args.slide.name}"
    )
    print(
        f"ours = extract_slide (batch {args.batch_size}, {args.num_workers} reader process(es), inference_mode, "
        "channels-last, H5 write); naive = read → PIL resize → embed one patch at a time."
    )
    print(
        "| patches | n | naive s | ours s | naive patches/s | ours patches/s | ours ÷ naive | "
        "peak RSS naive MiB | peak RSS ours MiB | max rel. diff (other resize) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, n, tn, to, pn, po, mn, mo, d in rows:
        print(
            f"| {name} | {n} | {tn:.2f} | {to:.2f} | {pn:.1f} | {po:.1f} | {po / pn:.2f}× | {mn:.0f} | {mo:.0f} "
            f"| {d:.1e} |"
        )


if __name__ == "__main__":
    main()
