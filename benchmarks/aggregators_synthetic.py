"""When does structure matter? Synthetic benchmarks for every aggregator in the model registry.

(a) **MIL algorithmic unit tests** of Raff & Holt, "Reproducibility in Multiple Instance Learning: A Case For
    Algorithmic Unit Tests", NeurIPS 2023, with torchmil's generators of its Algorithms 1–3
    (``SCStandardMILDataset``, ``MCStandardMILDataset``, ``FalseFrequencyMILDataset``). Each trains on one
    distribution and tests on a shifted one that only a model holding the intended concept survives:

    * ``single_concept`` — the standard MIL assumption: training negatives carry a "poison" instance
      (N(−10, 0.1)) that positives never carry; at test time the poison moves into the positive bags. A model that
      learned "positive = poison absent" (negative evidence, forbidden by the standard assumption) drops below 0.5.
    * ``multi_concept`` — the threshold concept: positive iff both concepts (N(2, 0.1), N(3, 0.1)) are present,
      negatives carry one of them; poisoned like ``single_concept``.
    * ``false_frequency`` — positive iff both concepts are present; training negatives carry one instance of
      concept 0, test negatives 35–45 of them: a model that counts concept-like instances fails.

    Verdict from the test AUC's 95 % bootstrap interval: ``pass`` (low > 0.5), ``FAIL`` (high < 0.5), else
    ``undecided`` — once the in-distribution validation AUC's interval is above 0.5 (else ``not fitted``: a model
    that did not learn the training concept is not tested by the shift).

(b) **A spatial task** on the demo cohort's tissue geometry (the tissue outlines of :mod:`mambamil.demo`, drawn
    on the patch grid, one cell = one patch): every bag has k lesion-type patches (features N(μ, I)) among
    stroma (N(0, I)), k and the features drawn before — and independently of — the label. Positive: the k lesion
    patches form one 4-connected cluster (k ≥ ``MIN_CLUSTER``); negative: the same k patches in clusters of 1–3.
    The two classes have the same per-instance marginal and even the same distribution of the bag as a multiset
    of features, so any permutation-invariant aggregator is at chance by construction: only an aggregator that
    sees geometry (through the scan order, or the 2D scan) can solve it.

(c) **Order ablation** on the feature-level analogue of the demo cohort (tissue and lesion masks of
    :mod:`mambamil.demo` on the patch grid; positive = lesion present, lesion patches weakly shifted) and on the
    spatial task: raster, snake, Hilbert and random (:func:`mambamil.order.order_permutation`, the order stage's
    function) and the 2D scan, each with its AUC bootstrap interval and the evaluation's paired comparison
    (:func:`mambamil.evaluation.compare.compare_models`, same resampled patients for both).

Small models (hidden 64), one thread, seeds fixed; ``--quick`` is a smoke run of every code path.

usage: python benchmarks/aggregators_synthetic.py [--quick] [--parts a b c] [--models abmil mambamil ...]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from mambamil.columns import probability_column
from mambamil.demo import _lesion_mask, _tissue_mask
from mambamil.evaluation.compare import compare_models
from mambamil.evaluation.evaluate import metrics_with_intervals
from mambamil.evaluation.frame import EvaluationSettings
from mambamil.fileio import atomic_output
from mambamil.models import create_model, list_models
from mambamil.models.common import InstanceCoords, call_model
from mambamil.order import METHODS, order_permutation
from mambamil.train.engine import seed_everything

CLASSES = ["negative", "positive"]
DIM = 16
#: level-0 pixels per grid step of the synthetic bags (any positive value; the orders divide it out)
PATCH = 256
#: patch grid (rows, cols) of the spatial bags: the demo's tissue outline drawn at one cell per patch
GRID = (20, 26)
#: lesion-type patch feature: mean μ on the first ``SIGNAL_DIMS`` dimensions (spatial task: clearly visible)
SIGNAL_DIMS = 4
LESION_MEAN = 2.0
#: the demo analogue's lesion patches: a weak shift, so one patch is ambiguous and the model must pool
DEMO_LESION_MEAN = 0.5
#: spatial task: positives hold one 4-connected lesion cluster of k ≥ MIN_CLUSTER patches; negatives the same k
#: patches in clusters of at most MAX_SMALL
MIN_CLUSTER, MAX_LESION, MAX_SMALL = 8, 14, 3
#: the 2D scan's pseudo-order in the ablation (every 1D order comes from mambamil.order)
ORDER_2D = "2d"

#: small configurations of the registry's models (CPU minutes); a model not listed gets its defaults
SMALL: dict[str, dict] = {
    "abmil": {"hidden": 64, "attn_dim": 32},
    "mean": {"hidden": 64},
    "max": {"hidden": 64},
    "transmil": {"dim": 64, "heads": 4},
    "mambamil": {"d_model": 64, "n_layers": 2, "rate": 10},
    "mambamil_2d": {"d_model": 64, "n_layers": 2},
}
#: MambaMIL's layer variants, benchmarked as extra rows of (a)
VARIANTS: dict[str, tuple[str, dict]] = {
    "mambamil[bimamba]": ("mambamil", {"layer": "bimamba"}),
    "mambamil[mamba]": ("mambamil", {"layer": "mamba"}),
}


@dataclass
class Bag:
    """One synthetic bag: features (N, D) float32, level-0 coordinates (N, 2) on a ``PATCH`` grid, the label and
    each instance's type (generator-specific: Raff & Holt's instance labels, 1 = lesion for the grid tasks)."""

    features: np.ndarray
    coords: np.ndarray
    label: int
    kind: np.ndarray
    seed: int


# -- (a) Raff & Holt's algorithmic unit tests (torchmil's generators) -----------------------------------------------
def _raff_holt_datasets() -> dict[str, tuple[str, Callable, dict]]:
    from torchmil.datasets import FalseFrequencyMILDataset, MCStandardMILDataset, SCStandardMILDataset

    return {
        "single_concept": ("standard MIL assumption (Alg. 1)", SCStandardMILDataset, {"B": 20}),
        "multi_concept": ("threshold: both concepts (Alg. 2)", MCStandardMILDataset, {}),
        "false_frequency": ("false frequency (Alg. 3)", FalseFrequencyMILDataset, {}),
    }


RAFF_HOLT_TESTS = ("single_concept", "multi_concept", "false_frequency")
#: torchmil's instance label of the poison instance (Algorithms 1 and 2)
POISON = -1


def square_coords(n: int, rng: np.random.Generator) -> np.ndarray:
    """Level-0 coordinates of ``n`` instances on the first n cells of a near-square grid, in random places (what
    the 2D model reads for bags without a geometry of their own)."""
    side = int(np.ceil(np.sqrt(n)))
    cells = rng.permutation(n)
    return np.stack([cells % side, cells // side], axis=1).astype(np.int64) * PATCH


def raff_holt_bags(test: str, n_bags: int, train: bool, seed: int, dim: int = DIM) -> list[Bag]:
    """Bags of one of Raff & Holt's tests from torchmil's generator (``train`` selects the training or the shifted
    test distribution), instances shuffled within each bag (torchmil stacks poison, positives, negatives in that
    order, which a sequence model could read).

    torchmil seeds NumPy but draws with torch, so the torch generator is seeded here (and restored afterwards)."""
    _, dataset, kwargs = _raff_holt_datasets()[test]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data = dataset(D=dim, num_bags=n_bags, train=train, seed=seed, **kwargs)
        raw = [data[i] for i in range(len(data))]
    rng = np.random.default_rng(seed)
    bags = []
    for i, b in enumerate(raw):
        x, kind = b["X"].numpy().astype(np.float32), b["y_inst"].numpy().astype(np.int64)
        perm = rng.permutation(len(x))
        bags.append(Bag(x[perm], square_coords(len(x), rng), int(b["Y"]), kind[perm], seed * 100_003 + i))
    return bags


# -- (b) the spatial task and (c)'s demo analogue on the demo's tissue geometry ----------------------------------
def tissue_grid(rng: np.random.Generator, grid: tuple[int, int] = GRID) -> np.ndarray:
    """A demo slide's tissue outline (irregular fragments with holes) at one cell per patch: (rows, cols) bool."""
    rows, cols = grid
    return _tissue_mask(rng, 16 * rows, 16 * cols)  # the demo draws its mask at 1/16 of the pixel size


def patch_features(rng: np.random.Generator, n: int, n_lesion: int, mean: float, dim: int = DIM) -> np.ndarray:
    """``n_lesion`` lesion-type rows (mean ``mean`` on the first SIGNAL_DIMS dims) then stroma rows, N(·, I)."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[:n_lesion, :SIGNAL_DIMS] += mean
    return x


def grow_cluster(rng: np.random.Generator, allowed: np.ndarray, size: int) -> np.ndarray | None:
    """A random 4-connected cluster of ``size`` cells inside ``allowed`` (grown from a random cell by adding a
    random 4-neighbour of the cluster), or None when the cells around the start run out."""
    cells = np.argwhere(allowed)
    if len(cells) == 0:
        return None
    start = tuple(cells[rng.integers(len(cells))])
    cluster = {start}
    rows, cols = allowed.shape
    while len(cluster) < size:
        frontier = sorted(
            {
                (r + dr, c + dc)
                for r, c in cluster
                for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= r + dr < rows and 0 <= c + dc < cols and allowed[r + dr, c + dc]
            }
            - cluster
        )
        if not frontier:
            return None
        cluster.add(frontier[rng.integers(len(frontier))])
    mask = np.zeros_like(allowed)
    mask[tuple(np.array(sorted(cluster)).T)] = True
    return mask


def small_cluster_sizes(rng: np.random.Generator, k: int, max_size: int = MAX_SMALL) -> list[int]:
    """Sizes 1..max_size adding up to k."""
    sizes: list[int] = []
    while sum(sizes) < k:
        sizes.append(int(min(rng.integers(1, max_size + 1), k - sum(sizes))))
    return sizes


def lesion_layout(rng: np.random.Generator, tissue: np.ndarray, k: int, positive: bool) -> np.ndarray | None:
    """Where the k lesion patches lie: one 4-connected cluster (positive) or clusters of 1..MAX_SMALL cells none of
    which touch another, diagonals included (negative); None when the tissue has no room."""
    if positive:
        return grow_cluster(rng, tissue, k)
    lesion = np.zeros_like(tissue)
    for size in small_cluster_sizes(rng, k):
        free = tissue & ~ndimage.binary_dilation(lesion, structure=np.ones((3, 3), bool))
        cluster = grow_cluster(rng, free, size)
        if cluster is None:
            return None
        lesion |= cluster
    return lesion


def largest_cluster(lesion: np.ndarray) -> int:
    """Size of the largest 4-connected component of a grid mask (0 when empty)."""
    labels, n = ndimage.label(lesion)
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def _grid_bag(tissue: np.ndarray, lesion: np.ndarray, x: np.ndarray, label: int, seed: int) -> Bag:
    """Features ``x`` (lesion rows first) placed on the tissue cells: lesion rows on the lesion cells."""
    cells = np.argwhere(tissue)  # row-major
    is_lesion = lesion[cells[:, 0], cells[:, 1]]
    n_lesion = int(is_lesion.sum())
    slot = np.empty(len(cells), np.int64)
    slot[is_lesion] = np.arange(n_lesion)
    slot[~is_lesion] = np.arange(n_lesion, len(cells))
    coords = cells[:, ::-1].astype(np.int64) * PATCH  # (x, y) = (col, row) · step
    return Bag(x[slot], coords, label, is_lesion.astype(np.int64), seed)


def spatial_bag(seed: int, positive: bool) -> Bag:
    """One bag of the spatial task. The tissue, k, and the features come from ``seed`` alone, before the label is
    looked at; only the layout of the lesion patches depends on it (its own generator), so a seed gives the same
    multiset of features for both labels."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        tissue = tissue_grid(rng)
        k = int(rng.integers(MIN_CLUSTER, MAX_LESION + 1))
        x = patch_features(rng, int(tissue.sum()), k, LESION_MEAN)
        lesion = lesion_layout(np.random.default_rng([seed, 1]), tissue, k, positive)
        if lesion is not None:
            return _grid_bag(tissue, lesion, x, int(positive), seed)
    raise RuntimeError(f"spatial bag {seed}: no room for the lesion in 100 tissue draws")


def demo_bag(seed: int, positive: bool) -> Bag:
    """One bag of the demo analogue: the demo's tissue outline and, for positives, the demo's lesion (an irregular
    blob covering ~6–18 % of the tissue, :func:`mambamil.demo._lesion_mask`) with weakly shifted features."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        tissue = tissue_grid(rng)
        try:
            lesion = _lesion_mask(rng, tissue) if positive else np.zeros_like(tissue)
        except ValueError:  # the outline is too thin for the demo's lesion centre: draw another
            continue
        x = patch_features(rng, int(tissue.sum()), int(lesion.sum()), DEMO_LESION_MEAN)
        return _grid_bag(tissue, lesion, x, int(positive), seed)
    raise RuntimeError(f"demo bag {seed}: no tissue thick enough for a lesion in 100 draws")


GRID_TASKS: dict[str, Callable[[int, bool], Bag]] = {"demo": demo_bag, "spatial": spatial_bag}


def grid_bags(task: str, n_bags: int, seed: int) -> list[Bag]:
    """``n_bags`` bags of a grid task, half of each class (labels alternate), each from its own seed."""
    make = GRID_TASKS[task]
    return [make(seed * 100_003 + i, bool(i % 2)) for i in range(n_bags)]


# -- training and evaluation -----------------------------------------------------------------------------------------
def takes_coords(model: torch.nn.Module) -> bool:
    """Whether the model reads the patch coordinates (``needs_coords``: the 2D family)."""
    return bool(getattr(model, "needs_coords", False))


def sequence(bag: Bag, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bag as the model reads it: features and coordinates in ``order`` (a :data:`mambamil.order.METHODS`
    entry, seeded by the bag for ``random``; the 2D scan reads the raster order and the coordinates)."""
    method = "raster" if order == ORDER_2D else order
    perm = order_permutation(bag.coords, method, step=PATCH, seed=bag.seed % 2**32)
    return torch.from_numpy(bag.features[perm]), torch.from_numpy(bag.coords[perm])


def forward(model: torch.nn.Module, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Logits through the project's one place that hands coordinates to the models that need them (each synthetic
    bag is one slide without tile attributes: the grid step comes from the coordinate spacing)."""
    return call_model(model, x, InstanceCoords.of_slide(coords.numpy(), "synthetic"))["logits"]


def build(name: str, seed: int) -> torch.nn.Module:
    """A small model of the registry (``SMALL``) or a MambaMIL variant (``VARIANTS``)."""
    registry_name, extra = VARIANTS.get(name, (name, {}))
    seed_everything(seed)
    return create_model(registry_name, DIM, len(CLASSES), **SMALL.get(registry_name, {}), **extra)


def fit(model: torch.nn.Module, bags: list[Bag], order: str, epochs: int, seed: int, lr: float = 5e-4) -> None:
    """Adam, one bag per step, cross-entropy, bags shuffled every epoch (seeded)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    data = [(*sequence(b, order), torch.tensor([b.label])) for b in bags]
    model.train()
    for _ in range(epochs):
        for i in rng.permutation(len(data)):
            x, coords, y = data[i]
            loss = F.cross_entropy(forward(model, x, coords), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.inference_mode()
def predictions(model: torch.nn.Module, bags: list[Bag], order: str) -> pd.DataFrame:
    """The evaluation's prediction frame: one row per bag (each bag its own patient)."""
    model.eval()
    probs = np.stack([F.softmax(forward(model, *sequence(b, order)), dim=1)[0].numpy() for b in bags])
    frame = pd.DataFrame({"sample_id": [f"bag{b.seed}" for b in bags], "target": [b.label for b in bags]})
    frame["case_id"] = frame["sample_id"]
    for k, c in enumerate(CLASSES):
        frame[probability_column(c)] = probs[:, k].astype(float)
    return frame


SETTINGS = EvaluationSettings.from_config({})


def auc_interval(preds: pd.DataFrame) -> dict[str, float]:
    """AUC with its patient-level bootstrap interval (the evaluation stage's, default settings)."""
    m = metrics_with_intervals(preds, "classification", CLASSES, SETTINGS)["metrics"]["auc"]
    return {"auc": m["estimate"], "low": m["ci_low"], "high": m["ci_high"]}


def fmt(r: dict[str, float]) -> str:
    return f"{r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def verdict(val: dict[str, float], test: dict[str, float]) -> str:
    """``not fitted`` when the validation AUC's interval reaches 0.5 (the test then says nothing), else ``pass``
    (test interval above 0.5), ``FAIL`` (below) or ``undecided``."""
    if not val["low"] > 0.5:
        return "not fitted"
    return "pass" if test["low"] > 0.5 else "FAIL" if test["high"] < 0.5 else "undecided"


def available(models: list[str] | None) -> list[str]:
    """Every model in the registry (and MambaMIL's variants), or the requested ones."""
    names = [*list_models(), *VARIANTS]
    if models:
        unknown = sorted(set(models) - set(names))
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; available: {', '.join(names)}")
        return models
    return names


@functools.cache
def order_sensitive(name: str) -> bool:
    """Whether a model reads the sequence order (the Mamba family and TransMIL's positional conv) — judged on a
    probe: the output changes when the instances are permuted."""
    model = build(name, 0).eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((49, DIM)).astype(np.float32))
    coords = torch.from_numpy(square_coords(49, rng))
    perm = torch.from_numpy(rng.permutation(49))
    with torch.inference_mode():
        return not torch.allclose(forward(model, x, coords), forward(model, x[perm], coords[perm]), atol=1e-5)


# -- the three parts (test predictions cached under --out, so a later run adds rows without retraining) -----------
class Runs:
    """Trains, predicts and caches: one CSV of predictions per (task, model, order) and run settings."""

    def __init__(self, out: Path | None, sizes: dict, seed: int) -> None:
        self.out, self.sizes, self.seed = out, sizes, seed
        self.tag = f"s{seed}-" + "-".join(str(v) for v in sizes.values())

    def run(self, task: str, name: str, order: str, train: list[Bag], evals: dict[str, list[Bag]], epochs: int):
        """({split: prediction frame}, seconds) of ``name`` trained on ``train`` in ``order``."""
        path = self.out / self.tag / f"{task}__{name}__{order}.csv" if self.out else None
        if path is not None and path.exists():
            cached = pd.read_csv(path, dtype={"sample_id": str, "case_id": str})
            frames = {str(split): f.drop(columns=["split", "seconds"]) for split, f in cached.groupby("split")}
            return frames, float(cached["seconds"].iloc[0])
        t0 = time.perf_counter()
        model = build(name, self.seed)
        fit(model, train, order, epochs, self.seed)
        frames = {split: predictions(model, bags, order) for split, bags in evals.items()}
        seconds = time.perf_counter() - t0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            both = pd.concat([f.assign(split=split) for split, f in frames.items()], ignore_index=True)
            with atomic_output(path) as tmp:
                both.assign(seconds=seconds).to_csv(tmp, index=False)
        return frames, seconds


def part_a(runs: Runs, models: list[str]) -> None:
    tests, sizes, seed = _raff_holt_datasets(), runs.sizes, runs.seed
    print("\n## (a) Raff & Holt's MIL algorithmic unit tests (torchmil generators)\n")
    print(
        f"{sizes['a_train']} training bags, {sizes['a_val']} validation bags (training distribution), "
        f"{sizes['a_test']} test bags (shifted distribution); D={DIM}; {sizes['a_epochs']} epochs. "
        "AUC [95 % bootstrap interval]; verdict from the test interval (pass: > 0.5, FAIL: < 0.5) "
        "once the validation interval is above 0.5 (else: not fitted)."
    )
    print("\n| model | test | what it checks | validation AUC | test AUC | verdict | s |")
    print("|---|---|---|---|---|---|---|")
    for test in RAFF_HOLT_TESTS:
        train = raff_holt_bags(test, sizes["a_train"], True, seed)
        evals = {
            "val": raff_holt_bags(test, sizes["a_val"], True, seed + 1),
            "test": raff_holt_bags(test, sizes["a_test"], False, seed + 2),
        }
        for name in models:
            order = ORDER_2D if reads(name) == "2D grid" else "raster"
            frames, seconds = runs.run(test, name, order, train, evals, sizes["a_epochs"])
            rv, rt = auc_interval(frames["val"]), auc_interval(frames["test"])
            print(
                f"| {name} | {test} | {tests[test][0]} | {fmt(rv)} | {fmt(rt)} | {verdict(rv, rt)} | {seconds:.0f} |",
                flush=True,
            )


@functools.cache
def reads(name: str) -> str:
    """What of the bag's arrangement a model reads: the 2D grid, the sequence order, or nothing (a set)."""
    return "2D grid" if takes_coords(build(name, 0)) else "sequence" if order_sensitive(name) else "no (a set)"


def part_b(runs: Runs, models: list[str], grids: dict) -> None:
    train, test = grids["spatial"]
    epochs = runs.sizes["grid_epochs"]
    print("\n## (b) Spatial task: one contiguous lesion vs the same lesion patches scattered\n")
    n = [len(b.features) for b in train + test]
    print(
        f"{len(train)} training / {len(test)} test bags, {min(n)}–{max(n)} patches each on the demo's tissue "
        f"outlines ({GRID[0]}×{GRID[1]} grid); k = {MIN_CLUSTER}–{MAX_LESION} lesion patches; same feature "
        f"multiset distribution in both classes (checked in tests/test_aggregators_synthetic.py); "
        f"{epochs} epochs; raster order (MambaMIL's) for the sequence models."
    )
    print("\n| model | reads | test AUC [95 % CI] | s |")
    print("|---|---|---|---|")
    for name in models:
        order = ORDER_2D if reads(name) == "2D grid" else "raster"
        frames, seconds = runs.run("spatial", name, order, train, {"test": test}, epochs)
        print(f"| {name} | {reads(name)} | {fmt(auc_interval(frames['test']))} | {seconds:.0f} |", flush=True)


def part_c(runs: Runs, models: list[str], grids: dict) -> None:
    sequence_models = [m for m in models if reads(m) == "sequence"]
    models_2d = [m for m in models if reads(m) == "2D grid"]
    reference = [m for m in ("abmil",) if m in models]
    print("\n## (c) Order ablation: raster, snake, Hilbert, random (mambamil.order) and the 2D scan\n")
    if not models_2d:
        print("No 2D model in the registry: no 2D row.")
    for task, (train, test) in grids.items():
        print(f"\n### {task}: {len(train)} training / {len(test)} test bags, {runs.sizes['grid_epochs']} epochs\n")
        print("| model | order | test AUC [95 % CI] | s |")
        print("|---|---|---|---|")
        todo = [(m, o) for m in sequence_models for o in METHODS] + [(m, ORDER_2D) for m in models_2d]
        todo += [(m, "raster") for m in reference]  # the order-free reference
        preds: dict[str, pd.DataFrame] = {}
        for name, order in todo:
            frames, seconds = runs.run(task, name, order, train, {"test": test}, runs.sizes["grid_epochs"])
            preds[f"{name}:{order}"] = frames["test"]
            print(f"| {name} | {order} | {fmt(auc_interval(frames['test']))} | {seconds:.0f} |", flush=True)
        # pairs: the orders of one sequence model, and each of them against the 2D models and the reference
        others = [k for k in preds if k.split(":")[0] in models_2d + reference]
        seen: set[tuple[str, str]] = set()
        rows = []
        for m in sequence_models or [None]:
            group = {k: v for k, v in preds.items() if (m and k.startswith(f"{m}:")) or k in others}
            for row in compare_models(group, "classification", CLASSES, task, SETTINGS).itertuples():
                if (row.model_a, row.model_b) not in seen:
                    seen.add((row.model_a, row.model_b))
                    rows.append(row)
        if rows:
            print(f"\nPaired comparisons ({rows[0].method}):\n")
            print("| A | B | AUC A − B [95 % CI] | p |")
            print("|---|---|---|---|")
            for row in rows:
                print(
                    f"| {row.model_a} | {row.model_b} | {row.difference:+.3f} [{row.ci_low:+.3f}, "
                    f"{row.ci_high:+.3f}] | {row.p_value:.3f} |"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few bags, one epoch")
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    ap.add_argument("--models", nargs="+", help="registry names or variants (default: all)")
    ap.add_argument("--tasks", nargs="+", default=list(GRID_TASKS), choices=list(GRID_TASKS), help="grid tasks of (c)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "out" / "aggregators_synthetic",
        help="cache of test predictions per (task, model, order)",
    )
    ap.add_argument("--no-cache", action="store_true", help="retrain everything, write no cache")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = (
        {"a_train": 40, "a_val": 20, "a_test": 40, "a_epochs": 1, "grid_train": 24, "grid_test": 24, "grid_epochs": 1}
        if args.quick
        else {"a_train": 100, "a_val": 60, "a_test": 100, "a_epochs": 4, "grid_train": 80, "grid_test": 100,
              "grid_epochs": 6}
    )  # fmt: skip
    models = available(args.models)
    from scan import machine  # type: ignore[import-not-found]

    print(f"# Aggregators on synthetic MIL tasks\n\n{machine()}; seed {args.seed}; models: {', '.join(models)}")
    runs = Runs(None if args.no_cache else args.out, sizes, args.seed)
    if "a" in args.parts:
        part_a(runs, models)
    grids = {}
    for task in GRID_TASKS:
        if (task == "spatial" and "b" in args.parts) or (task in args.tasks and "c" in args.parts):
            grids[task] = (
                grid_bags(task, sizes["grid_train"], args.seed + 10),
                grid_bags(task, sizes["grid_test"], args.seed + 11),
            )
    if "b" in args.parts:
        part_b(runs, [m for m in models if m not in VARIANTS], grids)
    if "c" in args.parts:
        part_c(runs, [m for m in models if m not in VARIANTS], {t: grids[t] for t in args.tasks})


if __name__ == "__main__":
    main()
