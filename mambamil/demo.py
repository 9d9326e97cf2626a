"""The embedded demo cohort: synthetic H&E-like whole-slide images with a known lesion ground truth.

Each slide is a pyramidal, tiled, JPEG-compressed TIFF (OpenSlide opens it as generic-tiff) with its µm/px in
the TIFF resolution tags. Tissue is procedural: irregular outlines with holes on white glass, fibrous pink
stroma and purple nuclei-like dots. Positive ("tumor") slides carry one lesion whose nuclei are denser, larger and
darker, covering a small fraction of the tissue; survival times shorten with that lesion burden.

Outputs in ``OUT_DIR``::

    slides/<slide_id>.tiff        the slides
    lesions/<slide_id>.geojson    lesion ground truth (level-0 px polygons; empty for negative slides)
    slides.csv                    slide sheet (slide_id, path, case_id)
    labels.csv                    label sheet (case_id, slide_id, label, time, event)
    truth.csv                     per-slide lesion burden (lesion area / tissue area) and tissue area
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from tqdm import tqdm

from mambamil.fileio import atomic_output, write_json
from mambamil.geometry import mask_to_feature_collection

DEMO_MPP = 0.5
PYRAMID_DOWNSAMPLES = (1, 4, 16)
TILE = 256
CLASSES = ("normal", "tumor")

_GLASS = np.array([243, 241, 245], np.float32)
_STROMA = np.array([232, 168, 200], np.float32)
_STROMA_DARK = np.array([205, 120, 165], np.float32)
_HEMATOXYLIN = np.array([88, 52, 140], np.float32)
_HEMATOXYLIN_DARK = np.array([50, 25, 100], np.float32)


@dataclass(frozen=True)
class DemoSlideSpec:
    """What the generator needs to draw one slide."""

    slide_id: str
    case_id: str
    positive: bool
    width: int
    height: int
    seed: int


def slide_ids(n_slides: int) -> list[str]:
    """The slide ids of a demo cohort of ``n_slides`` (known before it is generated)."""
    return [f"demo_{i:03d}" for i in range(n_slides)]


def slide_path(out_dir: str | Path, slide_id: str) -> Path:
    return Path(out_dir) / "slides" / f"{slide_id}.tiff"


def lesion_path(out_dir: str | Path, slide_id: str) -> Path:
    return Path(out_dir) / "lesions" / f"{slide_id}.geojson"


def cohort_specs(n_slides: int, seed: int = 0, size: tuple[int, int] = (4608, 3584)) -> list[DemoSlideSpec]:
    """Slide specifications: half the cases positive; the first few cases have two slides."""
    rng = np.random.default_rng(seed)
    ids = slide_ids(n_slides)
    n_cases = n_slides - n_slides // 6
    case_of = list(range(n_cases)) + list(range(n_slides - n_cases))  # first cases get a second slide
    positive_cases = set(rng.permutation(n_cases)[: n_cases // 2].tolist())
    specs = []
    for i, sid in enumerate(ids):
        case = case_of[i]
        jitter = rng.uniform(0.85, 1.1, size=2)
        specs.append(
            DemoSlideSpec(
                slide_id=sid,
                case_id=f"case_{case:03d}",
                positive=case in positive_cases,
                width=int(size[0] * jitter[0]) // 16 * 16,
                height=int(size[1] * jitter[1]) // 16 * 16,
                seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    return specs


# -- procedural image ---------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return (field - field.mean()) / (field.std() + 1e-6)


def _tissue_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Irregular tissue fragments with holes, as a bool mask at 1/16 scale."""
    sh, sw = h // 16, w // 16
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    body = np.zeros((sh, sw), np.float32)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.3, 0.7) * sh, rng.uniform(0.25, 0.75) * sw
        ry, rx = rng.uniform(0.22, 0.38) * sh, rng.uniform(0.2, 0.33) * sw
        body = np.maximum(body, 1 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2)
    body += 0.35 * _smooth_noise(rng, (sh, sw), sigma=6)
    tissue = body > 0.15
    holes = (_smooth_noise(rng, (sh, sw), sigma=2.5) > 2.0) & (body > 0.5)
    tissue &= ~holes
    tissue[:2], tissue[-2:], tissue[:, :2], tissue[:, -2:] = False, False, False, False
    return tissue


def _lesion_mask(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """An irregular blob inside the tissue covering roughly 6–18 % of it (1/16 scale)."""
    sh, sw = tissue.shape
    dist = cv2.distanceTransform(tissue.astype(np.uint8), cv2.DIST_L2, 5)
    candidates = np.argwhere(dist > max(3.0, 0.5 * dist.max()))
    cy, cx = candidates[rng.integers(len(candidates))]
    target = rng.uniform(0.06, 0.18) * tissue.sum()
    radius = math.sqrt(target / math.pi)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    shape = 1 - ((yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.7, 1.3)) ** 2) / radius**2
    shape += 0.3 * _smooth_noise(rng, (sh, sw), sigma=2)
    return (shape > 0) & tissue


def _nuclei(
    rng: np.random.Generator, region: np.ndarray, density: float, radius: tuple[float, float], h: int, w: int
) -> np.ndarray:
    """Nucleus centres drawn as filled ellipses onto a float map at full resolution."""
    canvas = np.zeros((h, w), np.float32)
    n = rng.poisson(density * region.sum() * 256)  # region is at 1/16 scale: 256 px per cell
    cells = np.argwhere(region)
    if n == 0 or len(cells) == 0:
        return canvas
    pick = cells[rng.integers(len(cells), size=n)]
    ys = (pick[:, 0] * 16 + rng.uniform(0, 16, n)).astype(int)
    xs = (pick[:, 1] * 16 + rng.uniform(0, 16, n)).astype(int)
    r_major = rng.uniform(*radius, n)
    r_minor = r_major * rng.uniform(0.55, 0.95, n)
    angles = rng.uniform(0, 180, n)
    shades = rng.uniform(0.7, 1.0, n)
    for x, y, a, b, ang, s in zip(xs, ys, r_major, r_minor, angles, shades, strict=True):
        cv2.ellipse(canvas, (int(x), int(y)), (round(a), round(b)), float(ang), 0, 360, float(s), -1, cv2.LINE_AA)
    return canvas


def render_slide(spec: DemoSlideSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one slide: (RGB uint8 level-0 image, tissue mask and lesion mask at 1/16 scale)."""
    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    tissue = _tissue_mask(rng, h, w)
    lesion = _lesion_mask(rng, tissue) if spec.positive else np.zeros_like(tissue)

    up = lambda m: cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    tissue_f = up(tissue)
    lesion_f = np.clip(up(lesion), 0, 1)

    # Fibrous stroma: elongated noise along a random direction, at 1/4 scale.
    qh, qw = h // 4, w // 4
    length = 21
    kernel = np.zeros((length, length), np.float32)
    ang = rng.uniform(0, math.pi)
    for t in np.linspace(-1, 1, 4 * length):
        kernel[round(length // 2 + t * 10 * math.sin(ang)), round(length // 2 + t * 10 * math.cos(ang))] = 1
    kernel /= kernel.sum()
    fibres = cv2.filter2D(rng.standard_normal((qh, qw)).astype(np.float32), -1, kernel)
    fibres = cv2.resize(fibres / (fibres.std() + 1e-6), (w, h), interpolation=cv2.INTER_LINEAR)
    fibres = 0.5 + 0.5 * np.tanh(0.8 * fibres + 0.3 * cv2.resize(_smooth_noise(rng, (qh, qw), 12), (w, h)))

    stroma_region = tissue & ~lesion
    nuc = _nuclei(rng, stroma_region, density=1 / 3000, radius=(4.5, 7.0), h=h, w=w) * 0.75
    if spec.positive:
        nuc = np.maximum(nuc, _nuclei(rng, lesion, density=1 / 420, radius=(6.5, 10.0), h=h, w=w))
    nuc = cv2.GaussianBlur(nuc, (0, 0), 1.0)
    nuc *= 0.85 + 0.15 * rng.random((h, w), dtype=np.float32)

    stroma = _STROMA[None, None] * (1 - fibres[..., None]) + _STROMA_DARK[None, None] * fibres[..., None]
    hema = _HEMATOXYLIN[None, None] * (1 - lesion_f[..., None]) + _HEMATOXYLIN_DARK[None, None] * lesion_f[..., None]
    nuc = np.clip(nuc, 0, 1)[..., None]
    tissue_rgb = stroma * (1 - nuc) + hema * nuc
    t = tissue_f[..., None]
    rgb = _GLASS[None, None] * (1 - t) + tissue_rgb * t
    rgb += rng.normal(0, 3.0, size=(h, w, 1)).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8), tissue, lesion


def write_pyramidal_tiff(path: str | Path, rgb: np.ndarray, mpp: float, quality: int = 90) -> None:
    """Write a tiled, JPEG-compressed pyramidal TIFF with µm/px in its resolution tags (atomic)."""
    pixels_per_cm = 1e4 / mpp
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        for i, ds in enumerate(PYRAMID_DOWNSAMPLES):
            level = (
                rgb
                if ds == 1
                else cv2.resize(rgb, (rgb.shape[1] // ds, rgb.shape[0] // ds), interpolation=cv2.INTER_AREA)
            )
            tif.write(
                level,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(pixels_per_cm / ds, pixels_per_cm / ds),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )


def survival_from_burden(rng: np.random.Generator, burden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponential event times whose hazard grows with lesion burden; uniform censoring."""
    hazard = 0.015 * np.exp(14.0 * burden)
    event_time = rng.exponential(1.0 / hazard)
    censor_time = rng.uniform(24, 150, size=len(burden))
    time = np.minimum(event_time, censor_time)
    event = (event_time <= censor_time).astype(int)
    return np.round(time, 2), event


def generate_cohort(
    out_dir: str | Path,
    n_slides: int = 24,
    seed: int = 0,
    size: tuple[int, int] = (4608, 3584),
    progress: bool = True,
) -> pd.DataFrame:
    """Write the demo cohort into ``out_dir`` and return its truth table. Deterministic for a seed."""
    out_dir = Path(out_dir)
    specs = cohort_specs(n_slides, seed, size)
    rows = []
    for spec in tqdm(specs, desc="demo slides", unit="slide", disable=not progress):
        rgb, tissue, lesion = render_slide(spec)
        write_pyramidal_tiff(slide_path(out_dir, spec.slide_id), rgb, DEMO_MPP)
        write_json(lesion_path(out_dir, spec.slide_id), mask_to_feature_collection(lesion, 16.0, "Lesion"))
        rows.append(
            {
                "slide_id": spec.slide_id,
                "case_id": spec.case_id,
                "label": CLASSES[int(spec.positive)],
                "lesion_burden": float(lesion.sum() / max(tissue.sum(), 1)),
                "tissue_area_mm2": float(tissue.sum() * (16 * DEMO_MPP) ** 2 / 1e6),
            }
        )
    truth = pd.DataFrame(rows)
    # Survival at case level: a case's burden is the mean over its slides.
    cases = truth.groupby("case_id", sort=True)["lesion_burden"].mean()
    time, event = survival_from_burden(np.random.default_rng(seed + 1), cases.to_numpy())
    surv = pd.DataFrame({"case_id": cases.index, "time": time, "event": event})
    labels = truth[["case_id", "slide_id", "label"]].merge(surv, on="case_id")

    slides = truth[["slide_id", "case_id"]].copy()
    slides.insert(1, "path", [f"slides/{s}.tiff" for s in slides["slide_id"]])
    for name, df in (("truth.csv", truth), ("labels.csv", labels), ("slides.csv", slides)):
        with atomic_output(out_dir / name) as tmp:
            df.to_csv(tmp, index=False)
    return truth
