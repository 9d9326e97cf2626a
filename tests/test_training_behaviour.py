"""The training loop's decisions, each checked from what a run does: early stopping at min_epochs + patience,
min_epochs as warm-up, gradient accumulation as the mean over k bags, the weighted sampler's class (and survival
time-bin × event) frequencies, survival model selection on the validation c-index, and feature standardisation
fitted on the training split only. Tiny bags and models; real torch, h5py and the real ``train_fold``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mambamil.bags import Sample, TaskSpec
from mambamil.config import default_section
from mambamil.h5layout import CoordsAttrs, FeatureAttrs, read_bag, write_features
from mambamil.inference import load_trained, unwrap
from mambamil.models import create_model, load_checkpoint
from mambamil.models.common import MILModel
from mambamil.train import engine
from mambamil.train.engine import TrainSettings, train_fold

DIM = 3
SUBTYPE = TaskSpec("subtype", "classification", ("a", "b"))
SURVIVAL = TaskSpec("survival", "survival", n_bins=4)


def settings(**overrides) -> TrainSettings:
    base = {**default_section("training"), "device": "cpu", "weight_decay": 0.0}
    return TrainSettings.from_config(base, **overrides)


def write_bag(root: Path, sid: str, feats: np.ndarray) -> Path:
    path = root / f"{sid}.h5"
    coords = np.stack([np.arange(len(feats)) * 256, np.zeros(len(feats))], axis=1)
    write_features(path, feats.astype(np.float32), coords, FeatureAttrs(feature_dim=DIM), CoordsAttrs(patch_size=256))
    return path


class Cohort:
    """Samples, their feature files and a one-fold splits table, built bag by bag."""

    def __init__(self, root: Path) -> None:
        self.root, self.samples, self.files, self.rows = root, [], {}, []

    def add(self, split: str, feats: np.ndarray, label: int, time: float = float("nan"), event: int = 0) -> Sample:
        k = len(self.samples)
        sid, case = f"s{k:02d}", f"p{k:02d}"
        self.files[sid] = write_bag(self.root, sid, feats)
        sample = Sample(case, case, [sid], label=label, time=time, event=event)
        self.samples.append(sample)
        self.rows.append((case, 0, split))
        return sample

    @property
    def splits(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["case_id", "fold", "split"])

    def train(self, out: Path, task: TaskSpec, st: TrainSettings, model: str = "mean", given_bins=None, **kw) -> dict:
        """Train fold 0. ``given_bins`` (a pytest ``monkeypatch``): keep the samples' hand-set survival time bins
        instead of the fold's own (which tests/test_survival_statistics.py checks), for tests built on them."""
        kw = {"dropout": 0.0, "hidden": 4, **kw}
        if given_bins is not None:
            given_bins.setattr(engine, "fold_survival_targets", lambda samples, training, n_bins: (samples, []))
        return train_fold(task, model, kw, st, self.samples, self.splits, 0, self.files, {}, out, {}, progress=False)

    def fold_labels(self, task: TaskSpec) -> dict[str, int]:
        """Each sample's training target in fold 0 (survival: the time bin of the fold's training patients)."""
        subsets, _ = engine.fold_subsets(task, self.samples, self.splits, 0, {})
        return {s.sample_id: s.label for subset in subsets.values() for s in subset}


def bag(value: float, n: int = 4, seed: int = 0) -> np.ndarray:
    """A bag whose instances sit around ``value`` in every dimension."""
    return value + 0.1 * np.random.default_rng(seed).normal(size=(n, DIM))


def flipped_validation(root: Path) -> Cohort:
    """Training bags where +1 means class b and -1 class a; validation bags with the labels the other way round,
    so every step that fits the training set raises the validation loss."""
    c = Cohort(root)
    for i in range(4):
        c.add("train", bag(1.0 if i % 2 else -1.0, seed=i), label=i % 2)
        c.add("val", bag(1.0 if i % 2 else -1.0, seed=10 + i), label=1 - i % 2)
    c.add("test", bag(1.0), label=1)
    return c


# -- early stopping ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("min_epochs", "patience"), [(3, 2), (1, 3)])
def test_rising_validation_loss_stops_at_min_epochs_plus_patience(tmp_path: Path, min_epochs, patience) -> None:
    cohort = flipped_validation(tmp_path / "f")
    st = settings(epochs=20, min_epochs=min_epochs, patience=patience, lr=0.05)
    summary = cohort.train(tmp_path / "m", SUBTYPE, st)
    log = pd.read_csv(tmp_path / "m" / "log.csv")
    assert (np.diff(log["val_loss"]) > 0).all(), "precondition: the validation loss rises every epoch"
    # The first epoch that counts (min_epochs - 1) is the best; patience more epochs without improvement stop it.
    assert summary["epochs_run"] == min_epochs + patience == len(log)
    assert summary["best_epoch"] == min_epochs - 1
    assert log["is_best"].tolist() == [e == min_epochs - 1 for e in range(len(log))]
    _, extra = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert extra["epoch"] == min_epochs - 1  # the checkpoint saved is that epoch's model


def test_min_epochs_run_even_when_the_first_epoch_is_the_best(tmp_path: Path) -> None:
    """An epoch before min_epochs is never selected nor starts the patience count."""
    cohort = flipped_validation(tmp_path / "f")
    st = settings(epochs=6, min_epochs=6, patience=1, lr=0.05)
    summary = cohort.train(tmp_path / "m", SUBTYPE, st)
    assert summary["epochs_run"] == 6 and summary["best_epoch"] == 5


# -- gradient accumulation --------------------------------------------------------------------------------------
class RecordingAdam(torch.optim.Adam):
    """torch's Adam, recording the parameters and their gradients at every step."""

    steps: ClassVar[list[tuple[list[torch.Tensor], list[torch.Tensor]]]] = []

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        RecordingAdam.steps.append(([p.detach().clone() for p in params], [p.grad.clone() for p in params]))
        return super().step(closure)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("task", [SUBTYPE, TaskSpec("survival", "survival", n_bins=2)])
def test_accumulation_over_k_bags_is_the_gradient_of_their_mean(tmp_path: Path, monkeypatch, task, k) -> None:
    rng = np.random.default_rng(0)
    cohort = Cohort(tmp_path / "f")
    n_train = 4
    by_size = {}  # training bags have distinct sizes, which identify them in the forward log
    for i in range(n_train):
        by_size[3 + i] = cohort.add("train", rng.normal(size=(3 + i, DIM)), label=i % 2, time=10.0 + i, event=i % 2)
    cohort.add("val", rng.normal(size=(4, DIM)), label=0, time=3.0, event=1)
    cohort.add("val", rng.normal(size=(4, DIM)), label=1, time=12.0, event=1)
    cohort.add("test", rng.normal(size=(4, DIM)), label=1, time=5.0, event=1)
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    RecordingAdam.steps = []
    sizes: list[int] = []

    def log_training_bags(module, args) -> None:
        if isinstance(module, MILModel) and module.training:
            sizes.append(int(args[0].shape[0]))

    alpha = 0.3
    st = settings(epochs=2, min_epochs=1, patience=5, grad_accum=k, alpha_surv=alpha)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(log_training_bags)
    try:
        cohort.train(tmp_path / "m", task, st)
    finally:
        handle.remove()
    labels = cohort.fold_labels(task)  # survival: the fold's own time bins
    assert len(sizes) == 2 * n_train and len(RecordingAdam.steps) == 2 * n_train // k  # one step per k bags

    for step, (params, grads) in enumerate(RecordingAdam.steps):
        model = create_model("mean", in_dim=DIM, n_classes=task.n_outputs, task=task.kind, dropout=0.0, hidden=4)
        with torch.no_grad():
            for p, v in zip(model.parameters(), params, strict=True):
                p.copy_(v)
        losses = []
        for size in sizes[step * k : (step + 1) * k]:  # the k bags drawn since the previous step
            s = by_size[size]
            out = model(torch.as_tensor(read_bag(cohort.files[s.slide_ids[0]]).features))
            if task is SUBTYPE:
                losses.append(F.cross_entropy(out["logits"], torch.tensor([s.label])))
            else:
                losses.append(hand_nll(out["hazards"][0], out["S"][0], labels[s.sample_id], s.event, alpha))
        expected = torch.autograd.grad(torch.stack(losses).mean(), list(model.parameters()))
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


def hand_nll(hazards: torch.Tensor, surv: torch.Tensor, y: int, event: int, alpha: float) -> torch.Tensor:
    """The discrete-time NLL of one patient written out: an event in bin y contributes −log S(y−1) − log h(y),
    a censoring in bin y contributes −log S(y), weighted by (1 − alpha)."""
    before = surv[y - 1] if y > 0 else torch.ones(())
    if event:
        return -torch.log(before) - torch.log(hazards[y])
    return -(1 - alpha) * torch.log(surv[y])


# -- the weighted sampler ---------------------------------------------------------------------------------------
class DrawLog:
    """Records the bags every MIL model sees in training mode (a global torch forward pre-hook)."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def __call__(self, module, args) -> None:
        if isinstance(module, MILModel) and module.training:
            self.ids.append(round(float(args[0][0, 0])) - 10)


def draws(cohort: Cohort, tmp_path: Path, task: TaskSpec, sampler: str, epochs: int, given_bins=None) -> np.ndarray:
    log = DrawLog()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(log)
    try:
        st = settings(epochs=epochs, min_epochs=1, patience=epochs, sampler=sampler)
        cohort.train(tmp_path / sampler, task, st, given_bins=given_bins)
    finally:
        handle.remove()
    return np.array(log.ids)


def id_bag(k: int) -> np.ndarray:
    """A bag whose first value identifies it (k + 10) for the draw log."""
    x = np.ones((2, DIM))
    x[0, 0] = k + 10
    return x


@pytest.mark.parametrize("sampler", ["weighted", "none"])
def test_weighted_sampler_balances_classes(tmp_path: Path, sampler: str) -> None:
    cohort = Cohort(tmp_path / "f")
    labels = [0] * 6 + [1] * 2  # 3:1 imbalance
    for k, y in enumerate(labels):
        cohort.add("train", id_bag(k), label=y)
    cohort.add("val", id_bag(50), label=0)
    cohort.add("val", id_bag(51), label=1)
    cohort.add("test", id_bag(52), label=1)
    epochs = 40
    seen = draws(cohort, tmp_path, SUBTYPE, sampler, epochs)
    assert len(seen) == epochs * len(labels)
    minority = np.isin(seen, [6, 7]).mean()
    if sampler == "weighted":  # each class drawn half the time, each bag within its class equally often
        assert abs(minority - 0.5) < 0.08
        counts = np.bincount(seen, minlength=8)
        assert np.allclose(counts[:6] / counts[:6].mean(), 1, atol=0.5) and abs(counts[6] - counts[7]) < 0.3 * counts[6]
    else:  # every bag exactly once per epoch
        assert (np.bincount(seen, minlength=8) == epochs).all()


def test_weighted_sampler_balances_survival_bin_and_event_groups(tmp_path: Path, monkeypatch) -> None:
    cohort = Cohort(tmp_path / "f")
    # (time bin, event) groups of sizes 4, 2, 1, 1: each should get a quarter of the draws.
    groups = [(0, 1)] * 4 + [(1, 1)] * 2 + [(1, 0)] + [(3, 0)]
    for k, (y, e) in enumerate(groups):
        cohort.add("train", id_bag(k), label=y, time=float(y + 1), event=e)
    cohort.add("val", id_bag(50), label=0, time=0.5, event=1)
    cohort.add("val", id_bag(51), label=2, time=3.0, event=1)
    cohort.add("test", id_bag(52), label=1, time=2.0, event=1)
    seen = draws(cohort, tmp_path, SURVIVAL, "weighted", 50, given_bins=monkeypatch)
    shares = [np.isin(seen, ids).mean() for ids in ([0, 1, 2, 3], [4, 5], [6], [7])]
    np.testing.assert_allclose(shares, 0.25, atol=0.06)


# -- survival model selection -----------------------------------------------------------------------------------
def test_survival_selects_the_epoch_with_the_best_validation_c_index(tmp_path: Path, monkeypatch) -> None:
    """Training teaches 'high feature = early event'; validation patients follow that ordering in time (so the
    c-index climbs) but the opposite time bins (so the loss climbs too): loss and c-index disagree on the best."""
    cohort = Cohort(tmp_path / "f")
    for i, v in enumerate([2.0, 1.0, -1.0, -2.0, 1.5, -1.5]):
        y = 0 if v > 0 else 3
        cohort.add("train", bag(v, seed=i), label=y, time=float(y + 1), event=1)
    rng = np.random.default_rng(5)
    for i, v in enumerate([1.8, 0.6, -0.2, -0.9, -1.7]):
        x = bag(v, seed=20 + i) + rng.normal(size=DIM) * 1.5
        cohort.add("val", x, label=3 if v > 0 else 0, time=float(10 + i), event=1)
    cohort.add("test", bag(1.0), label=0, time=1.0, event=1)
    st = settings(epochs=6, min_epochs=1, patience=6, lr=0.02)
    summary = cohort.train(tmp_path / "m", SURVIVAL, st, given_bins=monkeypatch, hidden=8)  # bins set by hand
    log = pd.read_csv(tmp_path / "m" / "log.csv")
    assert summary["monitor"] == "val_c_index"
    best = max(range(len(log)), key=lambda e: (log.loc[e, "val_c_index"], -log.loc[e, "val_loss"]))
    assert int(log["val_loss"].idxmin()) != best, "precondition: the loss would pick another epoch"
    assert log["val_c_index"].nunique() > 1
    assert summary["best_epoch"] == best and load_checkpoint(tmp_path / "m" / "checkpoint.pt")[1]["epoch"] == best


# -- feature standardisation ------------------------------------------------------------------------------------
def test_standardisation_statistics_are_the_training_instances(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cohort = Cohort(tmp_path / "f")
    train_bags = []
    for i, n in enumerate([2, 7, 3, 5]):  # unequal sizes: instance statistics differ from the mean of bag means
        x = rng.normal(loc=0.1 * i, scale=0.1 * (1 + i), size=(n, DIM))  # std < 1: a clamp at 1 shows
        train_bags.append(x)
        cohort.add("train", x, label=i % 2)
    for i in range(2):
        cohort.add("val", rng.normal(loc=20, scale=9, size=(6, DIM)), label=i)
    cohort.add("test", rng.normal(loc=-30, scale=0.1, size=(40, DIM)), label=1)
    cohort.train(tmp_path / "m", SUBTYPE, settings(epochs=1, min_epochs=1, standardize_features=True))
    instances = np.concatenate(train_bags).astype(np.float32).astype(np.float64)
    model, extra = load_trained(tmp_path / "m" / "checkpoint.pt")
    np.testing.assert_allclose(extra["feature_scaler"]["mean"], instances.mean(0), rtol=1e-5)
    np.testing.assert_allclose(extra["feature_scaler"]["std"], instances.std(0), rtol=1e-5)
    np.testing.assert_allclose(model.mean.numpy(), instances.mean(0), rtol=1e-5)  # and prediction applies them
    np.testing.assert_allclose(model.std.numpy(), instances.std(0), rtol=1e-5)
    x = torch.as_tensor(rng.normal(size=(5, DIM)), dtype=torch.float32)
    scaled = torch.as_tensor((x.double().numpy() - instances.mean(0)) / instances.std(0), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["logits"], unwrap(model)(scaled)["logits"], rtol=1e-4, atol=1e-5)
