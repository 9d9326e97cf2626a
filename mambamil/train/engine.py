"""The training loop for one (task, model, fold): one bag per step with gradient accumulation, early stopping on
the validation set, the best checkpoint saved, then predictions on the fold's held-out test patients."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mambamil import __version__
from mambamil.bags import BagDataset, Sample, TaskSpec, configure_coords, fold_survival_targets
from mambamil.config import settings_from_config
from mambamil.device import mil_autocast, resolve_device
from mambamil.errors import FaultError, MambamilError
from mambamil.evaluation.metrics import c_index, classification_metrics
from mambamil.evaluation.plots import loss_curves
from mambamil.evaluation.survival import add_survival_times
from mambamil.fileio import atomic_output, write_json
from mambamil.h5layout import check_one_encoder
from mambamil.inference import Standardized, load_trained, predict_dataset, unwrap
from mambamil.models import call_model, create_model, save_checkpoint
from mambamil.ops import selfcheck
from mambamil.paths import fold_outputs
from mambamil.train.losses import nll_survival_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """The ``training`` section of the config (defaults live in the schema)."""

    epochs: int
    min_epochs: int
    patience: int
    lr: float
    weight_decay: float
    grad_accum: int
    seed: int
    class_weights: str
    sampler: str
    alpha_surv: float
    device: str
    level: str
    on_missing: str
    folds: int
    val_fraction: float
    order: str
    standardize_features: bool
    precision: str
    monitor: str
    scan_selfcheck: bool

    @classmethod
    def from_config(cls, section: dict[str, Any] | None = None, **overrides: Any) -> TrainSettings:
        """Settings from a (validated) ``training`` config section, then non-None keyword overrides."""
        return settings_from_config(cls, "training", section, **overrides)


def seed_everything(seed: int) -> None:
    """Seeds for Python, NumPy and torch; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def feature_scaler(dataset: BagDataset) -> dict[str, list[float]]:
    """Per-dimension mean and std over every instance of ``dataset`` (float64 accumulation)."""
    total, total_sq, n = 0.0, 0.0, 0
    for i in range(len(dataset)):
        x = dataset[i][0].double()
        total, total_sq, n = total + x.sum(0), total_sq + (x * x).sum(0), n + x.shape[0]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp(min=0).sqrt()
    return {"mean": mean.float().tolist(), "std": std.float().tolist()}


class Objective:
    """Task-specific loss and per-sample outputs."""

    def __init__(self, task: TaskSpec, settings: TrainSettings, train_samples: list[Sample]) -> None:
        self.task = task
        self.alpha = settings.alpha_surv
        self.weight = None
        if task.kind == "classification" and settings.class_weights == "balanced":
            counts = np.bincount([s.label for s in train_samples], minlength=task.n_outputs).astype(float)
            self.weight = torch.tensor(
                len(train_samples) / (task.n_outputs * np.maximum(counts, 1)), dtype=torch.float32
            )

    def loss(self, out: dict[str, torch.Tensor], sample: Sample) -> torch.Tensor:
        device = out["logits"].device
        y = torch.tensor([sample.label], device=device)
        if self.task.kind == "classification":
            loss = F.cross_entropy(out["logits"].float(), y)
            # One bag per step: weight=... with mean reduction would divide the class weight out again.
            return loss * self.weight.to(device)[y[0]] if self.weight is not None else loss
        event = torch.tensor([sample.event], device=device)
        return nll_survival_loss(out["hazards"].float(), out["S"].float(), y, event, self.alpha)


def _validation(model, dataset, objective, device, task, precision: str = "fp32") -> tuple[float, float]:
    """Mean validation loss and the task metric (AUC or c-index) on ``dataset``."""
    model.eval()
    losses, risks, probs = [], [], []
    with torch.inference_mode():
        for i in range(len(dataset)):
            x, sample = dataset[i]
            with mil_autocast(device, precision):
                out = call_model(model, x.to(device), dataset.coords(i))
            losses.append(float(objective.loss(out, sample)))
            if task.kind == "survival":
                risks.append(float(out["risk"].reshape(-1)[0]))
            else:
                probs.append(F.softmax(out["logits"].float(), dim=1)[0].cpu().numpy())
    samples = dataset.samples
    if task.kind == "survival":
        metric = c_index(np.array([s.time for s in samples]), np.array([s.event for s in samples]), np.array(risks))
    else:
        metric = classification_metrics(np.array([s.label for s in samples]), np.array(probs), list(task.classes))[
            "auc"
        ]
    return float(np.mean(losses)), metric


def fold_subsets(
    task: TaskSpec, samples: list[Sample], splits: pd.DataFrame, fold: int, meta: dict[str, Any]
) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """The fold's ``train``/``val``/``test`` samples and its metadata. Survival targets are time bins whose edges
    come from the fold's training patients only (stored as the checkpoint's ``bin_edges``)."""
    rows = splits[splits["fold"] == fold]
    member = {split: set(rows.loc[rows["split"] == split, "case_id"]) for split in ("train", "val", "test")}
    if task.kind == "survival":
        training = [s for s in samples if s.case_id in member["train"]]
        try:
            samples, edges = fold_survival_targets(samples, training, task.n_bins)
        except MambamilError as exc:
            raise MambamilError(f"task '{task.name}' fold {fold} training patients: {exc} (lower n_bins)") from None
        meta = {**meta, "bin_edges": edges, "bin_edges_from": f"training patients of fold {fold}"}
    return {k: [s for s in samples if s.case_id in v] for k, v in member.items()}, meta


def train_fold(
    task: TaskSpec,
    model_name: str,
    model_kwargs: dict[str, Any],
    settings: TrainSettings,
    samples: list[Sample],
    splits: pd.DataFrame,
    fold: int,
    feature_files: dict[str, Path],
    order_files: dict[str, Path],
    out_dir: str | Path,
    meta: dict[str, Any],
    progress: bool = True,
    order: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one fold; writes ``checkpoint.pt``, ``log.csv``, ``curves.png``, ``test_predictions.csv``,
    ``val_predictions.csv`` (the best checkpoint on the validation patients) and ``summary.json`` into ``out_dir``.
    Returns the summary.

    ``order`` ({"method", "seed"}) is the order stage's setting behind ``order_files``, stored in the checkpoint
    so inference recomputes the same sequences; without order files bags are read as stored."""
    outputs = fold_outputs(out_dir)
    seed_everything(settings.seed * 1000 + fold)
    device = resolve_device(settings.device)
    selfcheck.set_enabled(settings.scan_selfcheck)
    subsets, meta = fold_subsets(task, samples, splits, fold, meta)
    check_one_encoder({sid: feature_files[sid] for s in samples for sid in s.slide_ids})  # one encoder per study
    data = {k: BagDataset(v, feature_files, order_files) for k, v in subsets.items()}
    in_dim = data["train"].in_dim
    model = create_model(model_name, in_dim=in_dim, n_classes=task.n_outputs, task=task.kind, **model_kwargs)
    configure_coords(model, data["train"])
    scaler = feature_scaler(data["train"]) if settings.standardize_features else None
    if scaler:
        model = Standardized(model, scaler["mean"], scaler["std"])
    model = model.to(device)
    objective = Objective(task, settings, subsets["train"])
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(settings.seed * 1000 + fold)
    use_metric_setting = settings.monitor == "metric" or (settings.monitor == "auto" and task.kind == "survival")
    metric_name = "val_c_index" if task.kind == "survival" else "val_auc"
    monitor = metric_name if use_metric_setting else "val_loss"
    best_score, best_epoch, history = (-math.inf, -math.inf), -1, []
    extra = {
        "task": task.name,
        "task_kind": task.kind,
        "classes": list(task.classes),
        "meta": meta,
        "fold": fold,
        "in_dim": in_dim,
        "settings": settings.__dict__,
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "feature_attrs": feature_attrs(feature_files[subsets["train"][0].slide_ids[0]]),
        "mambamil_version": __version__,
        "feature_scaler": scaler,
        "order": trained_order(order_files, order, settings),
        "precision": settings.precision,
    }
    n_train = len(data["train"])
    epochs = tqdm(range(settings.epochs), desc=f"{task.name}/{model_name}/fold {fold}", disable=not progress)
    for epoch in epochs:
        losses = train_epoch(model, data["train"], objective, optimiser, settings, rng, device, task)
        val_loss, val_metric = _validation(model, data["val"], objective, device, task, settings.precision)
        # monitor auto: subtyping monitors the loss; survival the c-index, ties (frequent on small validation sets,
        # where it saturates at 1.0) broken by the loss, and the loss alone when the metric is undefined.
        use_metric = use_metric_setting and not math.isnan(val_metric)
        score = (val_metric if use_metric else -math.inf, -val_loss)
        # Epochs before min_epochs are warm-up: neither selected nor counted for stopping (as CLAM's stop_epoch).
        is_best = epoch + 1 >= min(settings.min_epochs, settings.epochs) and score > best_score
        if is_best:
            best_score, best_epoch = score, epoch
            save_checkpoint(outputs["checkpoint"], unwrap(model), {**extra, "epoch": epoch, "val_loss": val_loss})
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_auc" if task.kind == "classification" else "val_c_index": val_metric,
                "is_best": is_best,
            }
        )
        epochs.set_postfix(train=f"{np.mean(losses):.3f}", val=f"{val_loss:.3f}", best=best_epoch)
        if best_epoch >= 0 and epoch - best_epoch >= settings.patience:
            log.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
    history_df = pd.DataFrame(history)
    with atomic_output(outputs["log_csv"]) as tmp:
        history_df.to_csv(tmp, index=False)
    loss_curves(history_df, outputs["curves"], monitor if monitor in history_df else "val_loss")
    best_model, _ = load_trained(outputs["checkpoint"])
    best_model = best_model.to(device)
    # Test predictions, and the validation predictions that choose the operating point of the evaluation.
    for key, split in (("predictions", "test"), ("val_predictions", "val")):
        preds = predict_dataset([best_model], data[split], device, task, settings.precision)
        preds.insert(0, "fold", fold)
        if task.kind == "survival" and "bin_edges" in meta:
            preds = add_survival_times(preds, meta["bin_edges"])
        with atomic_output(outputs[key]) as tmp:
            preds.to_csv(tmp, index=False)
    summary = {
        "task": task.name,
        "model": model_name,
        "fold": fold,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "monitor": monitor,
        "n_train": n_train,
        "n_val": len(data["val"]),
        "n_test": len(data["test"]),
    }
    write_json(outputs["summary"], summary)
    return summary


def train_epoch(
    model: torch.nn.Module,
    dataset: BagDataset,
    objective: Objective,
    optimiser: torch.optim.Optimizer,
    settings: TrainSettings,
    rng: np.random.Generator,
    device: torch.device,
    task: TaskSpec,
) -> list[float]:
    """One pass over ``dataset`` (shuffled, or drawn by the weighted sampler), one bag per step with gradient
    accumulation; returns the bags' losses."""
    model.train()
    n_train = len(dataset)
    if settings.sampler == "weighted":
        labels = sampling_groups(dataset.samples, task)
        w = 1.0 / np.bincount(labels)[labels]
        order = rng.choice(n_train, size=n_train, replace=True, p=w / w.sum())
    else:
        order = rng.permutation(n_train)
    optimiser.zero_grad(set_to_none=True)
    losses = []
    for step, idx in enumerate(order):
        x, sample = dataset[int(idx)]
        try:
            with mil_autocast(device, settings.precision):
                out = call_model(model, x.to(device), dataset.coords(int(idx)))
            loss = objective.loss(out, sample)
            (loss / settings.grad_accum).backward()
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            fault = bag_out_of_memory(exc, x, sample, device, settings.precision)
            if fault is None:
                raise
            raise fault from exc
        losses.append(loss.item())
        if (step + 1) % settings.grad_accum == 0 or step == n_train - 1:
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
    return losses


def final_epochs(fold_summaries: list[dict[str, Any]]) -> int:
    """The epoch count cross-validation chose: the median over folds of the selected epoch's count (best_epoch + 1),
    rounded half up, at least 1."""
    counts = [int(s["best_epoch"]) + 1 for s in fold_summaries]
    if not counts:
        raise MambamilError("no fold summaries: the final model's epoch count comes from cross-validation")
    return max(1, math.floor(float(np.median(counts)) + 0.5))


def train_final(
    task: TaskSpec,
    model_name: str,
    model_kwargs: dict[str, Any],
    settings: TrainSettings,
    samples: list[Sample],
    fold_summaries: list[dict[str, Any]],
    feature_files: dict[str, Path],
    order_files: dict[str, Path],
    out_dir: str | Path,
    meta: dict[str, Any],
    progress: bool = True,
    order: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One model on every development patient for :func:`final_epochs` epochs (no validation set, no early
    stopping); writes ``checkpoint.pt``, ``log.csv`` and ``summary.json`` (with the folds' epochs) into ``out_dir``."""
    outputs = fold_outputs(out_dir)
    n_epochs = final_epochs(fold_summaries)
    seed_everything(settings.seed * 1000 + 999)
    device = resolve_device(settings.device)
    selfcheck.set_enabled(settings.scan_selfcheck)
    data = BagDataset(samples, feature_files, order_files)
    model = create_model(model_name, in_dim=data.in_dim, n_classes=task.n_outputs, task=task.kind, **model_kwargs)
    configure_coords(model, data)
    scaler = feature_scaler(data) if settings.standardize_features else None
    if scaler:
        model = Standardized(model, scaler["mean"], scaler["std"])
    model = model.to(device)
    objective = Objective(task, settings, samples)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(settings.seed * 1000 + 999)
    history = []
    for epoch in tqdm(range(n_epochs), desc=f"{task.name}/{model_name}/final", disable=not progress):
        losses = train_epoch(model, data, objective, optimiser, settings, rng, device, task)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses))})
    chosen = {
        "epochs": n_epochs,
        "fold_epochs": [int(s["best_epoch"]) + 1 for s in fold_summaries],
        "rule": "median over folds of the selected epoch (best_epoch + 1), rounded half up",
    }
    extra = {
        "task": task.name,
        "task_kind": task.kind,
        "classes": list(task.classes),
        "meta": meta,
        "fold": "final",
        "in_dim": data.in_dim,
        "settings": settings.__dict__,
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "feature_attrs": feature_attrs(feature_files[samples[0].slide_ids[0]]),
        "mambamil_version": __version__,
        "feature_scaler": scaler,
        "order": trained_order(order_files, order, settings),
        "precision": settings.precision,
        "final_model": chosen,
        "epoch": n_epochs - 1,
    }
    save_checkpoint(outputs["checkpoint"], unwrap(model), extra)
    with atomic_output(outputs["log_csv"]) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    summary = {"task": task.name, "model": model_name, "fold": "final", "n_train": len(data), **chosen}
    write_json(outputs["summary"], summary)
    return summary


def bag_out_of_memory(
    exc: BaseException, x: torch.Tensor, sample: Sample, device: torch.device, precision: str
) -> FaultError | None:
    """A one-line :class:`FaultError` for a bag that did not fit in memory (its size and what to change); None for
    any other error."""
    if not (isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)):
        return None
    where = "GPU" if torch.device(device).type == "cuda" else "host"
    slides = ", ".join(sample.slide_ids)
    return FaultError(
        f"patient {sample.case_id} (slides {slides})",
        f"{where} out of memory training on a bag of {x.shape[0]} instances × {x.shape[-1]} features "
        f"(precision {precision}): use training.precision bf16, fewer patches per slide (a coarser "
        f"tiling.target_mpp or a higher tiling.tissue_threshold), or a {where} with more memory",
    )


def trained_order(order_files: dict[str, Any], order: dict[str, Any] | None, settings: TrainSettings) -> dict[str, Any]:
    """The {"method", "seed"} stored in the checkpoint: "stored" without order files; else the order stage's
    setting behind them (``settings.order`` with seed 0, and a warning, when the caller did not say)."""
    if not order_files:
        return {"method": "stored", "seed": 0}
    if order is None:
        log.warning("order files without their method/seed: recording %s order with seed 0", settings.order)
        return {"method": settings.order, "seed": 0}
    return {"method": str(order["method"]), "seed": int(order.get("seed", 0))}


def sampling_groups(samples: list[Sample], task: TaskSpec) -> np.ndarray:
    """Groups the weighted sampler balances: classes (subtyping), or time bin × event (survival, as MambaMIL's
    survival datasets do)."""
    labels = np.array([s.label for s in samples], dtype=np.int64)
    if task.kind == "classification":
        return labels
    return labels * 2 + np.array([s.event for s in samples], dtype=np.int64)


def feature_attrs(path: Path) -> dict[str, Any]:
    """JSON-safe attributes of a feature file (encoder, weights, resolution) stored with checkpoints."""
    from mambamil.h5layout import read_bag

    bag = read_bag(path)
    attrs = {
        **(bag.coords_meta.to_attrs() if bag.coords_meta else {}),
        **(bag.feature_meta.to_attrs() if bag.feature_meta else {}),
        **({"coords_from": str(bag.coords_from)} if bag.coords_from else {}),
    }
    return {k: _checkpoint_value(v) for k, v in attrs.items()}


def _checkpoint_value(value: Any) -> Any:
    """A model option as checkpoint metadata keeps it: lists as lists, scalars as they are, anything else as text
    (NaN kept; metrics.json's NaN → null conversion is :func:`mambamil.evaluation.evaluate.json_safe`)."""
    if isinstance(value, (tuple, list)):
        return list(value)
    return value if isinstance(value, (str, int, float, bool)) else str(value)
