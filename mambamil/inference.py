"""Inference in one place: trained models in, slide predictions, attention and gradient × input out.

``predict``, ``heatmap`` and the training engine's test predictions (which ``evaluate`` reads) all go through
this module, so a slide gets the same scores whichever path draws it:

- :func:`load_ensemble` loads project checkpoints (and original MambaMIL state dicts given their metadata),
  wraps them in the feature standardisation stored with them, and checks that they agree;
- :func:`sequence_order` recomputes each model's trained sequence order with the order stage's own function,
  from the order method and seed stored in its checkpoint (an explicit override warns);
- :func:`load_bag` is the one place inference reads a bag;
- :func:`bag_outputs` runs one forward pass per model, in the precision the model was trained in, and returns
  the ensemble's slide prediction, attention and (optionally) gradient × input from that same pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mambamil.bags import BagDataset, TaskSpec
from mambamil.device import mil_autocast, resolve_device
from mambamil.errors import InputFileError, MambamilError
from mambamil.fileio import atomic_output
from mambamil.h5layout import describe_encoder, encoder_difference, encoder_identity
from mambamil.models import InstanceCoords, call_model, load_checkpoint
from mambamil.order import METHODS, STORED, slide_order

if TYPE_CHECKING:
    from mambamil.h5layout import CoordsAttrs

log = logging.getLogger(__name__)

#: Orders an inference path may be told to use: the order stage's methods, or the bag as stored.
ORDER_CHOICES = (*METHODS, STORED)


class Standardized(torch.nn.Module):
    """A MIL model behind per-dimension standardisation of its instance features, with the mean and std of the
    training instances (stored in the checkpoint as ``feature_scaler``, so prediction applies the same)."""

    def __init__(self, model: torch.nn.Module, mean: Any, std: Any) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))
        self.in_dim, self.n_classes, self.task = model.in_dim, model.n_classes, model.task
        self.needs_coords = getattr(model, "needs_coords", False)

    def forward(self, x: torch.Tensor, **kw: Any) -> dict[str, torch.Tensor]:
        return self.model((x - self.mean) / self.std, **kw)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The MIL model inside a :class:`Standardized` wrapper (or the model itself)."""
    return model.model if isinstance(model, Standardized) else model


def load_trained(
    path: str | Path, map_location: str = "cpu", original: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A checkpoint ready to predict, in eval mode, with its stored feature standardisation applied."""
    model, extra = load_checkpoint(path, map_location=map_location, original=original)
    scaler = extra.get("feature_scaler")
    if scaler:
        model = Standardized(model, scaler["mean"], scaler["std"])
    return model.eval(), extra


def checkpoint_order(extra: dict[str, Any]) -> tuple[str, int]:
    """The (method, seed) of the sequence a checkpoint was trained on.

    Checkpoints from before the order was stored fall back to ``settings.order`` with seed 0 (exact for every
    method but ``random``)."""
    order = extra.get("order")
    if order:
        return str(order["method"]), int(order.get("seed", 0))
    settings = extra.get("settings") or {}
    if "order" in settings:
        log.warning("checkpoint predates stored orders: assuming %s order with seed 0", settings["order"])
        return str(settings["order"]), 0
    return STORED, 0


def checkpoint_precision(extra: dict[str, Any]) -> str:
    """The precision a checkpoint was trained in (fp32 when not recorded)."""
    return str(extra.get("precision") or (extra.get("settings") or {}).get("precision") or "fp32")


@dataclass
class Member:
    """One model of an ensemble with what inference needs from its checkpoint."""

    path: Path
    model: torch.nn.Module
    extra: dict[str, Any]
    order: tuple[str, int]
    precision: str


@dataclass
class Ensemble:
    """Models that agree on task, classes and input dimension; predictions are averaged over them."""

    members: list[Member]
    task: TaskSpec
    in_dim: int
    device: torch.device
    encoder: dict[str, Any] = field(default_factory=dict)  # identity of the encoder its training bags came from

    @property
    def models(self) -> list[torch.nn.Module]:
        return [m.model for m in self.members]


def load_ensemble(
    checkpoints: list[Path],
    device: str | torch.device = "cpu",
    original: dict[str, Any] | None = None,
    order: str | None = None,
) -> Ensemble:
    """Load ``checkpoints`` (one, or every fold's) onto ``device``; ``original`` gives the metadata of original
    MambaMIL state dicts; ``order`` overrides the stored sequence order, with a warning when it differs."""
    if not checkpoints:
        raise MambamilError("no checkpoint given")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if order is not None and order not in ORDER_CHOICES:
        raise MambamilError(f"unknown order {order!r}; choose one of {', '.join(ORDER_CHOICES)}")
    members = []
    for path in map(Path, checkpoints):
        model, extra = load_trained(path, original=original)
        trained = checkpoint_order(extra)
        used = trained
        if order is not None and order != trained[0]:
            log.warning("%s: trained on %s order; overriding with --order %s", path, trained[0], order)
            used = (order, trained[1])
        members.append(Member(path, model.to(dev).eval(), extra, used, checkpoint_precision(extra)))
    first = members[0]
    encoder = encoder_identity(first.extra.get("feature_attrs"))
    for m in members[1:]:
        for key in ("task_kind", "classes", "in_dim"):
            if m.extra.get(key) != first.extra.get(key):
                raise InputFileError(m.path, f"checkpoint's {key} {m.extra.get(key)} differs from {first.path}")
        other = encoder_identity(m.extra.get("feature_attrs"))
        if encoder_difference(encoder, other):
            raise InputFileError(
                m.path, f"trained on {describe_encoder(other)} features, {first.path} on {describe_encoder(encoder)}"
            )
    extra = first.extra
    kind = extra.get("task_kind", first.model.task)
    classes = tuple(extra.get("classes") or ())
    if kind == "classification" and len(classes) != first.model.n_classes:
        raise InputFileError(first.path, f"checkpoint names {len(classes)} classes for {first.model.n_classes} outputs")
    task = TaskSpec(name=extra.get("task", "task"), kind=kind, classes=classes, n_bins=first.model.n_classes)
    return Ensemble(members, task, int(extra.get("in_dim", first.model.in_dim)), dev, encoder)


@dataclass
class Bag:
    """One slide's bag as stored: features (N, D) float32, level-0 coords (N, 2) or None, coords attributes."""

    slide_id: str
    path: Path
    features: torch.Tensor
    coords: np.ndarray | None
    coords_meta: CoordsAttrs | None
    feature_meta: dict[str, Any] | None = None  # the feature file's provenance attributes (encoder, weights, …)


def load_bag(
    path: str | Path, in_dim: int | None = None, slide_id: str | None = None, encoder: dict[str, Any] | None = None
) -> Bag:
    """Read one slide's feature file (project, CLAM or TRIDENT H5, CLAM ``.pt``) for inference; the feature
    dimension must match the models' ``in_dim`` and the bag's encoder the one they were trained on
    (``encoder``: an :func:`~mambamil.h5layout.encoder_identity`; bags or checkpoints without one pass)."""
    from mambamil.h5layout import read_bag

    path = Path(path)
    bag = read_bag(path)
    if encoder:
        own = encoder_identity(bag.feature_meta)
        diff = encoder_difference(encoder, own) if own else None
        if diff:
            raise InputFileError(
                path,
                f"features made with {describe_encoder(own)} but the checkpoint was trained on "
                f"{describe_encoder(encoder)} features ({diff}); re-extract with the checkpoint's encoder",
            )
    feats = torch.as_tensor(np.asarray(bag.features, dtype=np.float32))
    if in_dim is not None and feats.shape[1] != in_dim:
        raise InputFileError(path, f"feature dimension {feats.shape[1]} does not match the checkpoint's {in_dim}")
    coords = np.asarray(bag.coords) if bag.coords is not None else None
    meta = bag.feature_meta.to_attrs() if bag.feature_meta else None
    return Bag(slide_id or path.stem, path, feats, coords, bag.coords_meta, meta)


def sequence_order(bag: Bag, order: tuple[str, int]) -> np.ndarray:
    """The permutation a model reads ``bag`` in: its trained (method, seed), computed as the order stage does."""
    method, seed = order
    if method == STORED:
        return np.arange(len(bag.features), dtype=np.int64)
    if bag.coords is None:
        raise InputFileError(
            bag.path, f"the model reads bags in {method} order but this bag has no coordinates (use --order stored)"
        )
    return slide_order(bag.coords, bag.coords_meta, method, seed, bag.slide_id)


def bag_coords(bag: Bag, perm: np.ndarray) -> InstanceCoords:
    """Where the instances of ``bag`` read in order ``perm`` lie (coordinates of -1 when the bag has none)."""
    coords = bag.coords if bag.coords is not None else np.full((len(bag.features), 2), -1, np.int64)
    return InstanceCoords.of_slide(coords[perm], bag.slide_id, bag.coords_meta)


def _explained_target(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """What gradient × input explains: the risk (survival) or the predicted class's logit."""
    if "risk" in out:
        return out["risk"].reshape(-1)[0]
    logits = out["logits"].reshape(-1)
    return logits[int(logits.argmax())]


def forward(
    model: torch.nn.Module,
    x: torch.Tensor,
    device: torch.device,
    precision: str,
    gradients: bool = False,
    coords: InstanceCoords | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass: the output dict (float32, CPU) and, with ``gradients``, gradient × input per instance
    (towards :func:`_explained_target`) from the same pass; ``coords`` (in x's order) for models that read them."""
    model.eval()
    x = x.to(device)
    if not gradients:
        with torch.inference_mode(), mil_autocast(device, precision):
            out = call_model(model, x, coords)
        return {k: v.float().cpu() for k, v in out.items() if isinstance(v, torch.Tensor)}, None
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), mil_autocast(device, precision):
        out = call_model(model, xg, coords)
        (grad,) = torch.autograd.grad(_explained_target(out), xg)
    gxi = (grad.float() * xg.detach()).sum(dim=-1).cpu()
    return {k: v.detach().float().cpu() for k, v in out.items() if isinstance(v, torch.Tensor)}, gxi


def probability_column(name: str) -> str:
    """The prediction CSV column of one class's probability."""
    return f"prob_{name}"


def check_finite_outputs(outs: list[dict[str, torch.Tensor]], source: str) -> None:
    """Non-finite model outputs are an error naming the bag's file(s), never a prediction."""
    for k, out in enumerate(outs):
        bad = [key for key, v in out.items() if not torch.isfinite(v).all()]
        if bad:
            raise MambamilError(
                f"{source}: model {k} gave non-finite {bad} (a broken checkpoint or features out of range); "
                "no prediction written"
            )


def summarise(outs: list[dict[str, torch.Tensor]], task: TaskSpec, source: str) -> dict[str, Any]:
    """Ensemble prediction from per-model outputs: mean class probabilities and the predicted class, or the
    mean risk (survival). ``source`` (the bag's file) names the bag when an output is not finite."""
    check_finite_outputs(outs, source)
    if task.kind == "classification":
        probs = torch.stack([F.softmax(o["logits"], dim=1)[0] for o in outs]).mean(0).numpy()
        row: dict[str, Any] = {probability_column(c): float(probs[k]) for k, c in enumerate(task.classes)}
        row["predicted"] = task.classes[int(probs.argmax())]
        return row
    row = {"risk": float(torch.stack([o["risk"].reshape(-1)[0] for o in outs]).mean())}
    if all("S" in o for o in outs):  # the survival curve: surv_k = P(surviving past the end of time bin k)
        surv = torch.stack([o["S"].float().reshape(-1) for o in outs]).mean(0).numpy()
        row.update({f"surv_{k + 1}": float(v) for k, v in enumerate(surv)})
    return row


@dataclass
class BagResult:
    """An ensemble's prediction of one bag and per-instance scores in the bag's stored instance order."""

    prediction: dict[str, Any]
    attention: np.ndarray | None
    gradxinput: np.ndarray | None


def bag_outputs(ensemble: Ensemble, bag: Bag, gradients: bool = False) -> BagResult:
    """Prediction, attention (and gradient × input) of ``bag``, averaged over the ensemble: one forward pass per
    model, on the sequence that model was trained on; scores are mapped back to the stored instance order."""
    outs, attention, gradxinput = [], [], []
    for member in ensemble.members:
        perm = sequence_order(bag, member.order)
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        out, gxi = forward(member.model, bag.features[torch.as_tensor(perm)], ensemble.device, member.precision,
                           gradients, bag_coords(bag, perm))  # fmt: skip
        outs.append(out)
        if "attention" in out:
            attention.append(out["attention"].reshape(-1).numpy()[inverse])
        if gxi is not None:
            gradxinput.append(gxi.reshape(-1).numpy()[inverse])
    return BagResult(
        summarise(outs, ensemble.task, str(bag.path)),
        np.mean(attention, axis=0) if attention else None,
        np.mean(gradxinput, axis=0) if gradxinput else None,
    )


def predict_dataset(
    models: list[torch.nn.Module], dataset: BagDataset, device: torch.device, task: TaskSpec, precision: str = "fp32"
) -> pd.DataFrame:
    """Per-sample predictions of bags loaded (and ordered) by ``dataset``, averaged over ``models``: what the
    training engine writes as ``test_predictions.csv``."""
    rows = []
    for i in range(len(dataset)):
        x, sample = dataset[i]
        outs = [forward(m, x, device, precision, coords=dataset.coords(i))[0] for m in models]
        row: dict[str, Any] = {
            "sample_id": sample.sample_id,
            "case_id": sample.case_id,
            "slide_ids": ";".join(sample.slide_ids),
            "n_instances": int(x.shape[0]),
            "target": sample.label,
            **summarise(outs, task, ", ".join(str(dataset.feature_files.get(s, s)) for s in sample.slide_ids)),
        }
        if task.kind == "classification":
            row["label"] = task.classes[sample.label] if sample.label >= 0 else ""
            row["predicted"] = row.pop("predicted")
        else:
            row["time"], row["event"] = sample.time, sample.event
        rows.append(row)
    return pd.DataFrame(rows)


#: Patch-grid attributes that must match the checkpoint's training features (where both record them). The encoder
#: itself (name, recipe, preprocessing, weights) is checked once, in :func:`load_bag` (``h5layout.encoder_identity``).
RESOLUTION_KEYS = ("target_mpp", "patch_size")


def check_features_match(bag: Bag, ensemble: Ensemble) -> None:
    """Refuse a bag tiled differently from the features the models were trained on (another µm/px or patch size):
    its predictions would be meaningless, not merely worse."""
    if bag.coords_meta is None and not bag.feature_meta:
        return
    attrs = {**(bag.coords_meta.to_attrs() if bag.coords_meta else {}), **(bag.feature_meta or {})}
    trained = ensemble.members[0].extra.get("feature_attrs") or {}
    for key in RESOLUTION_KEYS:
        mine, theirs = attrs.get(key), trained.get(key)
        if mine is None or theirs is None:
            continue
        if isinstance(theirs, float) or isinstance(mine, float):
            same = np.isclose(float(mine), float(theirs))
        else:
            same = str(mine) == str(theirs)
        if not same:
            raise InputFileError(
                bag.path,
                f"features have {key} {mine!r} but the model was trained on {theirs!r} (re-embed the "
                "slides with the development cohort's features settings)",
            )


def pooled_outputs(ensemble: Ensemble, bags: list[Bag]) -> dict[str, Any]:
    """The ensemble's prediction of one sample made of ``bags`` (one slide, or a patient's slides): per model,
    each slide's bag in that model's trained sequence order, concatenated in slide-id order (as training's
    :class:`BagDataset` builds a patient's bag), one forward pass; probabilities or risks averaged over models."""
    bags = sorted(bags, key=lambda b: b.slide_id)
    outs = []
    for member in ensemble.members:
        perms = [sequence_order(bag, member.order) for bag in bags]
        x = torch.cat([bag.features[torch.as_tensor(perm)] for bag, perm in zip(bags, perms, strict=True)])
        coords = InstanceCoords.concat([bag_coords(bag, perm) for bag, perm in zip(bags, perms, strict=True)])
        outs.append(forward(member.model, x, ensemble.device, member.precision, coords=coords)[0])
    return summarise(outs, ensemble.task, ", ".join(str(b.path) for b in bags))


def trained_level(ensemble: Ensemble) -> str:
    """The sample level (slide or patient) the ensemble's models were trained at (patient when not recorded)."""
    return str((ensemble.members[0].extra.get("settings") or {}).get("level", "patient"))


def predict_cohort(
    ensemble: Ensemble, features: list[Path], cases: dict[str, str] | None = None, level: str | None = None
) -> pd.DataFrame:
    """Predictions (probabilities or risk) of ``ensemble`` for the bags in ``features``.

    ``cases`` maps slide ids (the feature files' stems) to patients; at ``level`` patient (default: the level the
    checkpoints were trained at, when ``cases`` is given) one row per patient from the concatenation of its
    slides' sequences, as in training; otherwise one row per file. Feature files that are QC stubs are skipped
    with a warning."""
    from mambamil.qc import read_stub

    trained = trained_level(ensemble)
    if level is None:
        level = trained if cases is not None else "slide"
    elif level != trained:
        log.warning("the checkpoints were trained at %s level; predicting at %s level as asked", trained, level)
    if level == "patient" and cases is None:
        raise MambamilError("patient-level prediction needs a slide sheet with case_id (--slides)")
    groups: dict[str, list[Path]] = {}
    samples: list[tuple[str, list[Path]]] = []
    for path in map(Path, features):
        if (stub := read_stub(path)) is not None:
            log.warning("slide %s EXCLUDED by QC (%s: %s); not predicted", path.stem, stub.stage, stub.cause)
            continue
        if cases is not None and path.stem not in cases:
            raise InputFileError(path, f"slide {path.stem} is not in the slide sheet (no case_id)")
        if level == "patient":
            groups.setdefault(cases[path.stem], []).append(path)
        else:
            samples.append((path.stem, [path]))
    samples += sorted(groups.items())
    rows = []
    for key, paths in samples:
        bags = [load_bag(p, ensemble.in_dim, p.stem, encoder=ensemble.encoder) for p in paths]
        for bag in bags:
            check_features_match(bag, ensemble)
        ids = sorted(b.slide_id for b in bags)
        case = cases[ids[0]] if cases is not None and level == "slide" else key
        rows.append({"sample_id": key, "case_id": case, "slide_ids": ";".join(ids),
                     "n_instances": sum(len(b.features) for b in bags), **pooled_outputs(ensemble, bags)})  # fmt: skip
    task = ensemble.task
    outputs = [*map(probability_column, task.classes), "predicted"] if task.kind == "classification" else ["risk"]
    return pd.DataFrame(rows, columns=["sample_id", "case_id", "slide_ids", "n_instances", *outputs])


def predict_slides(
    features: list[Path],
    checkpoints: list[Path],
    out: Path,
    order: str | None = None,
    device: str = "auto",
    original: dict[str, Any] | None = None,
    cases: dict[str, str] | None = None,
    level: str | None = None,
) -> pd.DataFrame:
    """:func:`predict_cohort` with the ensemble of ``checkpoints``; writes ``out`` CSV."""
    df = predict_cohort(load_ensemble(checkpoints, device, original, order), features, cases, level)
    with atomic_output(out) as tmp:
        df.to_csv(tmp, index=False)
    return df
