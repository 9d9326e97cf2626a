"""Features-stage throughput: mambamil's data path vs the CLAM recipe, in the same run, same slide, same
coordinates, same encoder instance (``resnet50_trunc``; random weights cost the same as ImageNet ones).

The CLAM recipe is a faithful re-implementation of CLAM's ``extract_features_fp.py`` (CLAM is not installed):
per patch ``read_region(coord, patch_level, (patch_size, patch_size))`` → PIL RGB → torchvision
``Resize(224)``, ``ToTensor``, ``Normalize(ImageNet)`` → DataLoader (``--clam-workers``, CLAM uses 8; batch
``--clam-batch``, CLAM uses 256), fp32, model on the device. Its resize (PIL bilinear, antialiased) is the
``resnet50_trunc`` preset's since issue 27, so its features differ from ours by uint8 rounding only; the
"previous path" column compares with the per-patch path of before (``Slide.read_region`` + cv2 area resize +
``Encoder.preprocess``) on the first ``--check`` patches, which now differs by that resize.

Cases: ``large`` (one slide, 50 % overlap: the real slide by default, or ``--large-size W H`` for a demo
slide, e.g. 17216 12912 as in the issue), ``encoder only`` (the model on normalised batches already on the
device: the ceiling), and ``many`` (``--n-small`` small demo slides: one process for all vs one
``mambamil features`` process per slide, i.e. what a per-slide workflow job pays). ``--profile`` adds the
per-stage table of our path. Prints Markdown tables.

    python benchmarks/features.py [--device cpu|cuda] [--batch-size 64] [--num-workers N] [--quick]

``--presets uni_v1 uni_v2 virchow2`` instead measures encoder presets (random weights at full size: the same
compute as the released ones): patches/s of the model alone on device-resident batches (bf16 autocast, SDPA,
channels-last, ``--compile``) and end to end (``extract_slide`` on the slide, same model instance), and their
ratio (the issue asks ≥ 90 % on a GPU for the ViT-L/H presets).

``--stain`` instead measures what stain normalisation costs: patches/s of ``extract_slide`` on the same slide,
coordinates and encoder without it (today's path) and with torchstain's Macenko and Reinhard, one column each,
and their ratio to today's.
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset

from mambamil import demo
from mambamil.device import encoder_autocast, resolve_encoder_precision
from mambamil.features.datapath import default_num_workers
from mambamil.features.encoders import Encoder, create_encoder
from mambamil.features.extract import FeatureSettings, extract_slide
from mambamil.features.many_slides import SlideJob, extract_slides
from mambamil.h5layout import read_coords, read_features, write_coords
from mambamil.slide import open_slide
from mambamil.tiling import TilingSettings, tile_slide

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "CMU-1-Small-Region.svs"


# -- the CLAM recipe ------------------------------------------------------------------------------------------
class ClamBag(Dataset):
    """CLAM's Whole_Slide_Bag_FP: one read_region per patch at the coords file's patch_level and patch_size."""

    def __init__(self, slide_path: Path, coords_path: Path, mean, std) -> None:
        from torchvision import transforms

        cf = read_coords(coords_path)
        self.slide_path, self.coords = str(slide_path), cf.coords
        self.level, self.size = int(cf.meta.patch_level), cf.patch_size
        self.tf = transforms.Compose([transforms.Resize(224), transforms.ToTensor(), transforms.Normalize(mean, std)])
        self._wsi = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray]:
        import openslide

        if self._wsi is None:
            self._wsi = openslide.OpenSlide(self.slide_path)
        img = self._wsi.read_region(tuple(int(v) for v in self.coords[i]), self.level, (self.size, self.size))
        return self.tf(img.convert("RGB")), self.coords[i]


def clam_recipe(slide: Path, coords: Path, enc: Encoder, device: torch.device, workers: int, batch: int) -> np.ndarray:
    """CLAM's loop: the same weights in a plain (contiguous, fp32) copy of the model, as CLAM builds it."""
    model = copy.deepcopy(enc.model).to(device=device, memory_format=torch.contiguous_format)
    loader = DataLoader(
        ClamBag(slide, coords, enc.spec.mean, enc.spec.std),
        batch_size=batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    out = []
    with torch.inference_mode():
        for x, _ in loader:
            out.append(model(x.to(device, non_blocking=True)).cpu().numpy())
    return np.concatenate(out)


def old_path(slide: Path, coords: Path, enc: Encoder, device: torch.device, n: int, batch: int) -> np.ndarray:
    """mambamil's previous per-patch path (read_region + cv2 resize in one piece, preprocess on the device)."""
    cf = read_coords(coords)
    h, w = enc.spec.input_size
    out = []
    with open_slide(slide, mpp=cf.meta.slide_mpp) as s, torch.inference_mode():
        size0 = cf.patch_size * cf.target_mpp / s.mpp
        for i in range(0, min(n, len(cf.coords)), batch):
            imgs = [s.read_region(float(x), float(y), (size0, size0), (w, h)) for x, y in cf.coords[i : i + batch]]
            x = enc.preprocess(torch.from_numpy(np.stack(imgs)).to(device))
            out.append(enc.model(x).float().cpu().numpy())
    return np.concatenate(out)[:n]


def encoder_only(enc: Encoder, device: torch.device, batch: int, precision: str, seconds: float = 5.0) -> float:
    """Patches/s of the model alone on normalised batches already on the device, with our autocast."""
    x = torch.randn(batch, 3, *enc.spec.input_size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), encoder_autocast(device, resolve_encoder_precision(precision, device)):
        enc.model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while n < 2 * batch or time.perf_counter() - t0 < seconds:
            enc.model(x)
            n += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slide", type=Path, default=REAL, help="large-slide case (default: CMU-1-Small-Region)")
    ap.add_argument("--large-size", type=int, nargs=2, metavar=("W", "H"), help="demo slide of this size instead")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=None, help="default: the cores we may use - 1")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--clam-workers", type=int, default=8)
    ap.add_argument("--clam-batch", type=int, default=256)
    ap.add_argument("--check", type=int, default=64, help="patches compared with the previous path")
    ap.add_argument("--n-small", type=int, default=10)
    ap.add_argument("--small-size", type=int, nargs=2, default=(1536, 1152), metavar=("W", "H"))
    ap.add_argument("--quick", action="store_true", help="skip the many-slides case")
    ap.add_argument("--profile", action="store_true", help="also print our per-stage table")
    ap.add_argument("--presets", nargs="+", help="measure these encoder presets instead (encoder alone, end to end)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the preset encoders (CUDA only)")
    ap.add_argument("--seconds", type=float, default=5.0, help="encoder-alone timing per preset")
    ap.add_argument("--stain", action="store_true", help="measure stain normalisation's cost instead")
    args = ap.parse_args()
    if args.presets:
        presets_table(args)
        return
    if args.stain:
        stain_table(args)
        return
    device = torch.device(args.device)
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    enc = create_encoder("resnet50_trunc", "random")
    enc.model.to(device=device, memory_format=torch.channels_last)
    settings = FeatureSettings.from_config(
        {
            "encoder": "resnet50_trunc",
            "weights": "random",
            "batch_size": args.batch_size,
            "num_workers": workers,
            "device": args.device,
            "precision": args.precision,
        }
    )
    rows, profile = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = args.slide
        if args.large_size:
            demo.generate_cohort(tmp / "large", 2, 0, tuple(args.large_size), progress=False)
            slide = demo.slide_path(tmp / "large", demo.slide_ids(2)[0])
        coords = tile_slide(slide, tmp / "tiles", TilingSettings.from_config(overlap=0.5)).outputs["coords"]
        n = len(read_coords(coords).coords)
        rate_enc = encoder_only(enc, device, args.batch_size, args.precision)
        clam, t_clam = _timed(lambda: clam_recipe(slide, coords, enc, device, args.clam_workers, args.clam_batch))
        res, t_ours = _timed(
            lambda: extract_slide(
                slide, coords, tmp / "f.h5", settings, progress=False, force=True, encoder=enc, profile=args.profile
            )
        )
        profile = res.profile
        ours = read_features(tmp / "f.h5").features
        old = old_path(slide, coords, enc, device, args.check, args.batch_size)
        rows.append(("large: CLAM recipe", n, t_clam, n / t_clam, 1.0, "—"))
        rows.append(("large: mambamil", n, t_ours, n / t_ours, t_clam / t_ours, f"{_rel(ours[: len(old)], old):.1e}"))
        rows.append(("encoder only (ceiling)", n, n / rate_enc, rate_enc, t_clam * rate_enc / n, "—"))
        rel_clam = _rel(ours, clam)
        many = None if args.quick else many_slides(tmp, args, settings, enc)

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used"
    print(
        f"machine: {model}, {psutil.cpu_count()} cores ({default_num_workers(0)} usable), {gpu}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}; "
        f"slide {slide.name}, 50 % overlap; device {args.device}, ours batch {args.batch_size} with {workers} "
        f"reader(s), CLAM batch {args.clam_batch} with {args.clam_workers} workers, fp32 unless --precision"
    )
    print("| case | patches | s | patches/s | ÷ CLAM recipe | max rel. diff vs previous path |")
    print("|---|---|---|---|---|---|")
    for name, k, t, r, ratio, d in rows:
        print(f"| {name} | {k} | {t:.2f} | {r:.1f} | {ratio:.2f}× | {d} |")
    print(f"\nmax rel. diff ours vs CLAM recipe (both antialiased bilinear; uint8 rounding): {rel_clam:.1e}")
    if profile is not None:
        print("\nour per-stage profile (large slide):\n" + profile.table())
    if many is not None:
        print("\n" + many)


def presets_table(args: argparse.Namespace) -> None:
    """Encoder alone vs end to end, per preset, on one slide (``--large-size`` demo slide or ``--slide``)."""
    from mambamil.features.encoders import fast_model

    device = torch.device(args.device)
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = args.slide
        if args.large_size:
            demo.generate_cohort(tmp / "large", 2, 0, tuple(args.large_size), progress=False)
            slide = demo.slide_path(tmp / "large", demo.slide_ids(2)[0])
        coords = tile_slide(slide, tmp / "tiles", TilingSettings.from_config()).outputs["coords"]
        n = len(read_coords(coords).coords)
        for name in args.presets:
            t0 = time.perf_counter()
            enc = create_encoder(name, "random")
            t_build = time.perf_counter() - t0
            enc.model = fast_model(enc, device, args.compile)
            alone = encoder_only(enc, device, args.batch_size, args.precision, args.seconds)
            settings = FeatureSettings.from_config(
                {
                    "encoder": name,
                    "weights": "random",
                    "batch_size": args.batch_size,
                    "num_workers": workers,
                    "device": args.device,
                    "precision": args.precision,
                }
            )
            extract_slide(slide, coords, tmp / f"{name}_warm.h5", settings, progress=False, force=True, encoder=enc)
            res = extract_slide(slide, coords, tmp / f"{name}.h5", settings, progress=False, force=True, encoder=enc)
            rows.append((name, enc.dim, enc.spec.input_size[0], t_build, alone, res.patches_per_s))
            del enc
            if device.type == "cuda":
                torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), slide {slide.name} ({n} patches), "
        f"batch {args.batch_size}, {workers} reader(s), precision {args.precision}, compile {args.compile}"
    )
    print("| preset | dim | input px | build s | encoder alone patches/s | end to end patches/s | end to end ÷ alone |")
    print("|---|---|---|---|---|---|---|")
    for name, dim, size, t_build, alone, e2e in rows:
        print(f"| {name} | {dim} | {size} | {t_build:.1f} | {alone:.1f} | {e2e:.1f} | {100 * e2e / alone:.0f} % |")


def stain_table(args: argparse.Namespace) -> None:
    """patches/s end to end without stain normalisation (today's path) and with Macenko / Reinhard."""
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    base = {"encoder": "resnet50_trunc", "weights": "random", "batch_size": args.batch_size, "num_workers": workers,
            "device": args.device, "precision": args.precision}  # fmt: skip
    enc = create_encoder("resnet50_trunc", "random")
    rates, fallbacks = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        coords = tile_slide(args.slide, tmp / "tiles", TilingSettings.from_config(overlap=0.5)).outputs["coords"]
        n = len(read_coords(coords).coords)
        for method in ("none", "macenko", "reinhard"):
            settings = FeatureSettings.from_config({**base, "stain_norm": method})
            out = tmp / f"{method}.h5"
            _, t = _timed(
                lambda s=settings, o=out: extract_slide(args.slide, coords, o, s, progress=False, encoder=enc)
            )
            rates[method] = n / t
            fallbacks[method] = read_features(out).feature_meta.stain_fallbacks
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "no GPU used"
    print(
        f"machine: {model}, {psutil.cpu_count()} cores ({default_num_workers(0)} usable), {gpu}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); slide {args.slide.name}, {n} patches (50 % "
        f"overlap), resnet50_trunc, batch {args.batch_size}, {workers} reader(s), device {args.device}"
    )
    print("| patches | none (today) patches/s | macenko patches/s | ÷ today | reinhard patches/s | ÷ today | "
          "tiles kept unnormalised (macenko / reinhard) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    r = rates
    print(f"| {n} | {r['none']:.1f} | {r['macenko']:.1f} | {r['macenko'] / r['none']:.2f}× | {r['reinhard']:.1f} | "
          f"{r['reinhard'] / r['none']:.2f}× | {fallbacks['macenko']} / {fallbacks['reinhard']} |")  # fmt: skip


def many_slides(tmp: Path, args: argparse.Namespace, settings: FeatureSettings, enc: Encoder) -> str:
    """``--n-small`` demo slides: one process for all of them vs one ``mambamil features`` process per slide."""
    n_slides = max(2, args.n_small)
    demo.generate_cohort(tmp / "small", n_slides, 1, tuple(args.small_size), progress=False)
    jobs = []
    for sid in demo.slide_ids(n_slides):
        path = demo.slide_path(tmp / "small", sid)
        c = tile_slide(path, tmp / "small_tiles", TilingSettings.from_config(), slide_id=sid).outputs["coords"]
        jobs.append(SlideJob(path, c, tmp / "small_out" / f"{sid}.h5", sid))
    n = sum(len(read_coords(j.coords).coords) for j in jobs)
    t0 = time.perf_counter()
    outcomes = extract_slides(jobs, settings, force=True, progress=False)
    t_one = time.perf_counter() - t0
    assert all(o.status == "done" for o in outcomes)
    common = ["--encoder", "resnet50_trunc", "--weights", "random", "--device", args.device, "--force"]
    common += ["--batch-size", str(args.batch_size), "--num-workers", str(settings.num_workers)]
    t0 = time.perf_counter()
    for j in jobs:
        cmd = [sys.executable, "-m", "mambamil", "-q", "features", str(j.slide), "--coords", str(j.coords)]
        subprocess.run([*cmd, "--out", str(tmp / "sep" / f"{j.slide_id}.h5"), *common], check=True)
    t_sep = time.perf_counter() - t0
    per_slide = (t_sep - t_one) / n_slides
    # Fixed cost of each additional slide in one process: the same slides with one patch each.
    one_patch = []
    for j in jobs:
        cf = read_coords(j.coords)
        c1 = tmp / "one_patch" / f"{j.slide_id}.h5"
        write_coords(c1, cf.coords[:1], cf.meta, np.ones(1, np.float32))
        one_patch.append(SlideJob(j.slide, c1, tmp / "one_patch_out" / f"{j.slide_id}.h5", j.slide_id))
    extract_slides(one_patch[:1], settings, force=True, progress=False)  # warm-up
    t0 = time.perf_counter()
    extract_slides(one_patch, settings, force=True, progress=False)
    fixed = (time.perf_counter() - t0) / n_slides
    return (
        f"| many small slides | slides | patches | s | patches/s |\n|---|---|---|---|---|\n"
        f"| one process (mambamil features S1 … S{n_slides}) | {n_slides} | {n} | {t_one:.2f} | {n / t_one:.1f} |\n"
        f"| one process per slide | {n_slides} | {n} | {t_sep:.2f} | {n / t_sep:.1f} |\n\n"
        f"start-up saved per slide by one process: {per_slide:.2f} s; fixed cost of each slide in one process "
        f"(same slides, one patch each): {fixed:.2f} s"
    )


if __name__ == "__main__":
    main()
