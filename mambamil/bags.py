"""Bags of a cohort, shared by training and inference: task specs, label sheet + feature files → samples (slides
or patients) with labels, and the bag dataset that loads a sample's ordered, concatenated features."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mambamil.errors import InputFileError, MambamilError
from mambamil.models.common import InstanceCoords
from mambamil.order import read_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task from the config's ``tasks`` section."""

    name: str
    kind: str  # "classification" | "survival"
    classes: tuple[str, ...] = ()
    label_column: str = "label"
    n_bins: int = 4

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else self.n_bins

    @classmethod
    def from_config(cls, name: str, section: dict[str, Any]) -> TaskSpec:
        return cls(
            name=name,
            kind=section["type"],
            classes=tuple(section.get("classes", ())),
            label_column=section.get("label_column", "label"),
            n_bins=int(section.get("n_bins", 4)),
        )


@dataclass
class Sample:
    """A training/evaluation unit: one slide, or one patient (the concatenation of its slides' sequences)."""

    sample_id: str
    case_id: str
    slide_ids: list[str]
    label: int = -1  # class index, or survival time bin
    time: float = float("nan")
    event: int = 0


def survival_bin_edges(times: np.ndarray, events: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bin edges of time over patients with an observed event; the outer edges are widened to cover all
    times (as in MCAT/MambaMIL's ``qcut`` on uncensored patients)."""
    times = np.asarray(times, dtype=float)
    observed = times[np.asarray(events) == 1]
    if len(observed) < n_bins:
        raise MambamilError(f"survival: only {len(observed)} observed events for {n_bins} time bins")
    edges = np.quantile(observed, np.linspace(0, 1, n_bins + 1))
    edges[0] = min(times.min(), edges[0]) - 1e-6
    edges[-1] = max(times.max(), edges[-1]) + 1e-6
    return edges


def assign_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index in [0, n_bins) for each time."""
    return np.clip(np.searchsorted(edges, np.asarray(times, dtype=float), side="right") - 1, 0, len(edges) - 2)


def build_samples(
    labels: pd.DataFrame,
    feature_files: dict[str, Path],
    task: TaskSpec,
    level: str = "patient",
    on_missing: str = "error",
) -> tuple[list[Sample], dict[str, Any]]:
    """Join the label sheet with the available feature files.

    ``on_missing`` = "error" stops on label rows without features (and features without labels) naming the ids;
    "warn" logs them and skips. Returns the samples and metadata (label map or survival bin edges).
    """
    labelled = set(labels["slide_id"])
    no_features = sorted(labelled - set(feature_files))
    no_label = sorted(set(feature_files) - labelled)
    for ids, what in ((no_features, "label rows whose slides have no features"), (no_label, "features with no label")):
        if ids:
            msg = f"{what}: {ids[:10]}{' …' if len(ids) > 10 else ''} ({len(ids)})"
            if on_missing == "error":
                raise MambamilError(f"task '{task.name}': {msg}; set training.on_missing: warn to skip them")
            log.warning("task '%s': skipping %s", task.name, msg)
    # reset_index: the label sheet is indexed by slide_id too, which makes groupby("slide_id") ambiguous.
    df = labels[labels["slide_id"].isin(feature_files)].reset_index(drop=True)

    meta: dict[str, Any] = {"task": task.name, "kind": task.kind, "level": level}
    if task.kind == "classification":
        if task.label_column not in df.columns:
            raise MambamilError(f"task '{task.name}': label sheet has no column '{task.label_column}'")
        df = df[df[task.label_column].notna()]
        unknown = sorted(set(df[task.label_column].astype(str)) - set(task.classes))
        if unknown:
            bad = df.loc[~df[task.label_column].astype(str).isin(task.classes), "slide_id"].tolist()
            raise MambamilError(
                f"task '{task.name}': classes {unknown} are not in the config's classes {list(task.classes)} "
                f"(slides {bad[:10]})"
            )
        class_index = {c: i for i, c in enumerate(task.classes)}
        df["target"] = df[task.label_column].astype(str).map(class_index)
        meta["label_map"] = class_index
    else:
        if "time" not in df.columns or "event" not in df.columns:
            raise MambamilError(f"task '{task.name}': label sheet needs 'time' and 'event' (or 'censorship')")
        df = df[df["time"].notna()]
        per_case = df.groupby("case_id")[["time", "event"]].first()
        edges = survival_bin_edges(per_case["time"].to_numpy(), per_case["event"].to_numpy(), task.n_bins)
        df["target"] = assign_bins(df["time"].to_numpy(), edges)
        meta["bin_edges"] = edges.tolist()

    if level == "patient":
        inconsistent = df.groupby("case_id")["target"].nunique()
        inconsistent = inconsistent[inconsistent > 1].index.tolist()
        if inconsistent:
            raise MambamilError(f"task '{task.name}': patients with conflicting labels across slides: {inconsistent}")
    samples = []
    groups = df.groupby("case_id", sort=True) if level == "patient" else df.groupby("slide_id", sort=True)
    for key, rows in groups:
        first = rows.iloc[0]
        samples.append(
            Sample(
                sample_id=str(key),
                case_id=str(first["case_id"]),
                slide_ids=sorted(rows["slide_id"].astype(str)),
                label=int(first["target"]),
                time=float(first["time"]) if "time" in rows else float("nan"),
                event=int(first["event"]) if "event" in rows and pd.notna(first["event"]) else 0,
            )
        )
    if not samples:
        raise MambamilError(f"task '{task.name}': no labelled slides with features")
    return samples, meta


class BagDataset(torch.utils.data.Dataset):
    """Loads each sample's bag: its slides' features in sequence order, concatenated (patient level)."""

    def __init__(
        self,
        samples: list[Sample],
        feature_files: dict[str, Path],
        order_files: dict[str, Path | np.ndarray] | None = None,
        cache: bool = True,
    ) -> None:
        self.samples = samples
        self.feature_files = feature_files
        self.order_files = order_files or {}
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, InstanceCoords]] = {}
        self._coords_meta: dict[str, Any] = {}  # each slide's CoordsAttrs, filled by load

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        """Features (N, D) float32, coords (N, 2) and the slide id of each instance."""
        from mambamil.h5layout import read_bag

        sample = self.samples[index]
        feats, coords, owners = [], [], []
        for sid in sample.slide_ids:
            bag = read_bag(self.feature_files[sid])
            self._coords_meta[sid] = bag.coords_meta
            f = np.asarray(bag.features, dtype=np.float32)
            # Bags without coordinates (CLAM .pt files alone) keep their stored order.
            c = np.asarray(bag.coords) if bag.coords is not None else np.full((len(f), 2), -1, np.int64)
            if sid in self.order_files:
                order = self.order_files[sid]
                perm = order if isinstance(order, np.ndarray) else read_order(order, len(f))
                f, c = f[perm], c[perm]
            feats.append(f)
            coords.append(c)
            owners += [sid] * len(f)
        dims = {f.shape[1] for f in feats}
        if len(dims) > 1:
            raise InputFileError(self.feature_files[sample.slide_ids[0]], f"slides of {sample.sample_id} differ in dim")
        return torch.from_numpy(np.concatenate(feats)), np.concatenate(coords), owners

    def _item(self, index: int) -> tuple[torch.Tensor, InstanceCoords]:
        if self.cache and index in self._cache:
            return self._cache[index]
        x, coords, owners = self.load(index)
        item = (x, InstanceCoords(coords, owners, {sid: self._coords_meta[sid] for sid in dict.fromkeys(owners)}))
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Sample]:
        return self._item(index)[0], self.samples[index]

    def coords(self, index: int) -> InstanceCoords:
        """Where the instances of sample ``index`` lie (in the bag's order), for models with ``needs_coords``."""
        return self._item(index)[1]

    @property
    def in_dim(self) -> int:
        return int(self[0][0].shape[1])


def configure_coords(model: torch.nn.Module, dataset: BagDataset) -> None:
    """Give a model that reads coordinates (``needs_coords``, no ``grid_step`` yet) the patch stride of the
    dataset's slides, kept in its config (and so in its checkpoint); slides of different strides are an error."""
    from mambamil.models.mambamil2d import target_stride

    if not getattr(model, "needs_coords", False) or model.config.get("grid_step") is not None:
        return
    strides = set()
    for i in range(len(dataset)):
        coords = dataset.coords(i)
        strides |= {target_stride(m) for m in coords.meta.values()} - {None}
    if len(strides) > 1:
        raise MambamilError(f"{model.config['name']}: the slides have different patch strides {sorted(strides)} px")
    if strides:
        model.set_grid_step(strides.pop())
