"""``mambamil splits``, ``train`` and ``train-final`` (workflow/rules/train.smk)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mambamil.cli.options import Subparsers, add_cohort_args, add_order_dir, add_out, task_settings, verb
from mambamil.errors import InputFileError, MambamilError

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


def run_train(args: argparse.Namespace) -> int:
    from mambamil.train.engine import TrainSettings, train_fold
    from mambamil.train.splits import check_splits, read_splits

    spec = task_settings(args)
    c = _cohort(args, spec)
    settings = TrainSettings.from_config(spec["training"])
    splits = read_splits(args.splits)
    if args.fold not in set(splits["fold"]):
        raise MambamilError(f"{args.splits}: no fold {args.fold}")
    check_splits(splits, c.samples, c.task)
    name, model = _model(spec)
    summary = train_fold(
        c.task,
        name,
        model,
        settings,
        c.samples,
        splits,
        args.fold,
        c.features,
        c.orders,
        args.out,
        c.meta,
        progress=not args.quiet,
        order=_train_order(spec) if c.orders else None,
    )
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
    from mambamil.train.engine import TrainSettings, train_final

    spec = task_settings(args)
    c = _cohort(args, spec)
    summaries = []
    for path in args.fold_summaries:
        if not path.exists():
            raise InputFileError(path, "fold summary not found (train the folds first)")
        summaries.append(json.loads(path.read_text()))
    name, model = _model(spec)
    summary = train_final(
        c.task,
        name,
        model,
        TrainSettings.from_config(spec["training"]),
        c.samples,
        summaries,
        c.features,
        c.orders,
        args.out,
        c.meta,
        progress=not args.quiet,
        order=_train_order(spec) if c.orders else None,
    )
    print(f"{c.task.name}/{name}/final: {summary['epochs']} epochs (folds chose {summary['fold_epochs']}) → {args.out}")
    return 0
