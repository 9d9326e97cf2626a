"""``mambamil splits``, ``train`` and ``train-final`` (workflow/rules/train.smk)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mambamil.cli.options import Subparsers, add_cohort_args, add_order_dir, add_out, task_settings, verb
from mambamil.errors import InputFileError, MambamilError

if TYPE_CHECKING:
    from mambamil.bags import Cohort

log = logging.getLogger("mambamil")


def add_splits(sub: Subparsers) -> None:
    p = verb(
        sub,
        "splits",
        run_splits,
        help="write patient-level stratified k-fold splits for one task",
        description="Patient-level k-fold splits, stratified by class (subtyping) or by event and time bin "
        "(survival). Each fold tests patients no other fold tests and carves validation from its training "
        "patients. Seeded; every model reuses the file.",
    )
    add_cohort_args(p)
    add_out(p, "output CSV (case_id, fold, split)")
    p.set_defaults(order_dir=None)


def _cohort(args: argparse.Namespace, spec: dict):
    """The task and cohort of a splits/train call (:func:`mambamil.bags.load_cohort`)."""
    from mambamil.bags import load_cohort

    return load_cohort(args.labels, args.features_dir, spec, args.order_dir, args.qc)


def run_splits(args: argparse.Namespace) -> int:
    from mambamil.train.splits import make_splits, write_splits

    spec = task_settings(args)
    cohort = _cohort(args, spec)
    task, t = cohort.task, spec["training"]
    splits = make_splits(cohort.samples, task, t["folds"], t["val_fraction"], t["seed"])
    write_splits(args.out, splits)
    log.info("%s: %d patients in %d folds → %s", task.name, splits["case_id"].nunique(), t["folds"], args.out)
    return 0


def add_train(sub: Subparsers) -> None:
    p = verb(
        sub,
        "train",
        run_train,
        help="train one model on one fold and predict its held-out test patients",
        description="Train an aggregator from the model registry (mambamil, abmil, transmil, mean, max) on one "
        "fold: Adam, one bag per step with gradient accumulation, early stopping on the validation set (loss "
        "for subtyping, c-index for survival). Writes checkpoint.pt (with config, label map and feature "
        "metadata), log.csv, curves.png, test_predictions.csv and summary.json into --out.",
    )
    add_cohort_args(p)
    p.add_argument("--splits", type=Path, required=True, help="splits CSV from 'mambamil splits'")
    p.add_argument("--fold", type=int, required=True, help="fold index")
    add_order_dir(p)
    add_out(p, "output folder of this fold")


def _model(spec: dict) -> tuple[str, dict]:
    """(registry name, options) of the spec's model."""
    model = dict(spec["model"])
    return model.pop("model"), model


def _train_order(spec: dict) -> dict:
    """The order method and order-stage seed behind --order-dir, stored in the checkpoint for inference."""
    return {"method": spec["training"]["order"], "seed": int(spec.get("order_seed", 0))}


def _train(args: argparse.Namespace, train, fold_args: Callable[[Cohort], tuple]) -> tuple[Cohort, str, dict]:
    """Run ``train`` (:func:`train_fold` or :func:`train_final`) on the call's cohort; ``fold_args`` gives the
    arguments between the samples and the feature files (the splits and fold, or the folds' summaries)."""
    from mambamil.train.engine import TrainSettings

    spec = task_settings(args)
    c = _cohort(args, spec)
    middle = fold_args(c)
    name, model = _model(spec)
    settings = TrainSettings.from_config(spec["training"])
    summary = train(c.task, name, model, settings, c.samples, *middle, c.features, c.orders, args.out, c.meta,
                    progress=not args.quiet, order=_train_order(spec) if c.orders else None)  # fmt: skip
    return c, name, summary


def run_train(args: argparse.Namespace) -> int:
    from mambamil.train.engine import train_fold
    from mambamil.train.splits import check_splits, read_splits

    def splits_and_fold(c: Cohort) -> tuple:
        splits = read_splits(args.splits)
        if args.fold not in set(splits["fold"]):
            raise MambamilError(f"{args.splits}: no fold {args.fold}")
        check_splits(splits, c.samples, c.task)
        return splits, args.fold

    c, name, summary = _train(args, train_fold, splits_and_fold)
    print(f"{c.task.name}/{name}/fold {args.fold}: best epoch {summary['best_epoch']} → {args.out}")
    return 0


def add_train_final(sub: Subparsers) -> None:
    p = verb(
        sub,
        "train-final",
        run_train_final,
        help="train one model on every development patient for the epoch count cross-validation chose",
        description="Train one model (no validation set, no early stopping) on all labelled patients for the "
        "median over folds of the selected epoch (from each fold's summary.json). Writes checkpoint.pt, log.csv "
        "and summary.json (the epoch count and the folds' epochs) into --out. For external validation.",
    )
    add_cohort_args(p)
    p.add_argument("--fold-summaries", type=Path, nargs="+", required=True, help="summary.json of every CV fold")
    add_order_dir(p)
    add_out(p, "output folder of the final model")


def run_train_final(args: argparse.Namespace) -> int:
    from mambamil.train.engine import train_final

    def fold_summaries(c: Cohort) -> tuple:
        summaries = []
        for path in args.fold_summaries:
            if not path.exists():
                raise InputFileError(path, "fold summary not found (train the folds first)")
            summaries.append(json.loads(path.read_text()))
        return (summaries,)

    c, name, summary = _train(args, train_final, fold_summaries)
    print(f"{c.task.name}/{name}/final: {summary['epochs']} epochs (folds chose {summary['fold_epochs']}) → {args.out}")
    return 0
