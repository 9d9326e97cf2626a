"""The ``mambamil`` command line: one verb per pipeline stage (the Snakemake rules call these).

Errors caused by input (a bad slide, a missing file, an invalid config) print one line naming the file and
the cause, and exit 1; conditions of the environment (disk full, I/O errors, memory; :class:`FaultError`) print one
line ``failed, retry: ...`` and exit 75 (EX_TEMPFAIL), so a scheduler retries them. ``--debug`` (or
``MAMBAMIL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mambamil import __version__
from mambamil.config import add_section_options, json_object, section_from_args
from mambamil.errors import FAULT_EXIT, FaultError, InputFileError, MambamilError, fault_from

log = logging.getLogger("mambamil")

Handler = Callable[[argparse.Namespace], int | None]


# -- demo-cohort --------------------------------------------------------------------------------------------
def _add_demo_cohort(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-cohort",
        help="write the synthetic demo cohort (slides, slide sheet, label sheet, lesion ground truth)",
        description="Write a synthetic cohort of pyramidal JPEG TIFF slides with µm/px in their resolution tags, "
        "a slide sheet, a label sheet (subtyping label 'normal'/'tumor' and survival time/event) and the lesion "
        "ground truth of positive slides as GeoJSON. Deterministic for a given seed; no downloads.",
    )
    p.add_argument("out_dir", type=Path, help="folder to write the cohort into (created if missing)")
    p.add_argument("--n-slides", type=int, default=24, help="number of slides (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(4608, 3584),
        metavar=("W", "H"),
        help="nominal level-0 slide size in pixels at 0.5 µm/px, jittered per slide (default: 4608 3584)",
    )
    p.set_defaults(func=_run_demo_cohort)


def _run_demo_cohort(args: argparse.Namespace) -> int:
    from mambamil.demo import generate_cohort

    if args.n_slides < 2:
        raise MambamilError(f"--n-slides must be at least 2, got {args.n_slides}")
    truth = generate_cohort(args.out_dir, args.n_slides, args.seed, tuple(args.size), progress=not args.quiet)
    n_pos = int((truth["label"] == "tumor").sum())
    log.info("wrote %d slides (%d with a lesion) to %s", len(truth), n_pos, args.out_dir)
    return 0


# -- tile ---------------------------------------------------------------------------------------------------
def _add_tile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tile",
        help="segment tissue and write the patch grid of one or more slides",
        description="Segment the tissue of one slide and lay a patch grid at a target resolution. Writes "
        "OUT/<slide_id>.h5 (patch coordinates), OUT/<slide_id>.tissue.geojson (tissue polygons, level-0 px, "
        "QuPath-importable) and OUT/<slide_id>.preview.png. Settings come from the schema defaults, then the "
        "config's 'tiling' section (--config), then --settings, then the options given here.",
    )
    p.add_argument("slide", type=Path, nargs="*", help="slide file(s) (anything OpenSlide reads); or use --sheet")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--slide-id", nargs="+", help="id(s) used for output names (default: the file name without suffix)")
    p.add_argument(
        "--mpp", type=float, nargs="+", help="µm/px override(s) when a slide lacks or misreports its resolution"
    )
    p.add_argument("--sheet", type=Path, help="slide sheet CSV instead of SLIDE arguments (its mpp column applies)")
    p.add_argument("--shard", help="with --sheet: i/k tiles rows i, i+k, i+2k, … (0 <= i < k)")
    add_section_options(p, "tiling")
    _add_on_bad_slide(p)
    p.set_defaults(func=_run_tile)


def _run_tile(args: argparse.Namespace) -> int:
    from mambamil.batch import run_guarded
    from mambamil.paths import tile_outputs
    from mambamil.qc import QCOutcome, run_slide_stage
    from mambamil.tiling import TilingSettings, tile_slide

    settings = TilingSettings.from_config(section_from_args(args, "tiling"))
    jobs = _tile_jobs(args)
    failed = []
    for slide, slide_id, mpp in jobs:

        def work(slide: Path = slide, slide_id: str = slide_id, mpp: float | None = mpp):
            return run_slide_stage(
                "tile",
                slide_id,
                tile_outputs(args.out, slide_id).values(),
                [slide],
                args.on_bad_slide,
                lambda: tile_slide(slide, args.out, settings, slide_id, mpp),
                slide_file=slide,
            )

        if len(jobs) == 1:  # one slide: its error is the command's error (--debug shows the traceback)
            result = work()
        else:
            result, _ = run_guarded("tile", slide_id, slide, work)
        if result is None:
            failed.append(slide_id)
            continue
        if isinstance(result, QCOutcome):
            continue
        print(f"{result.slide_id}: {result.n_patches} patches ({result.tissue_area_mm2:.2f} mm² tissue) → {args.out}")
    if failed:
        raise MambamilError(f"{len(failed)} of {len(jobs)} slide(s) failed: {', '.join(failed)}")
    return 0


def _add_on_bad_slide(p: argparse.ArgumentParser) -> None:
    """The QC option of the per-slide stages (README "Bad slides and QC")."""
    p.add_argument(
        "--on-bad-slide",
        choices=["exclude", "stop"],
        default="stop",
        help="on a bad slide (unreadable, no tissue, no patches, excluded upstream): 'stop' with an error, or "
        "'exclude': write QC stubs at the outputs, print the cause and exit 0 (default: %(default)s; the "
        "workflow passes qc.on_bad_slide)",
    )


def _tile_jobs(args: argparse.Namespace) -> list[tuple[Path, str, float | None]]:
    """(slide, slide_id, mpp override) of a tile call: SLIDE arguments, or --sheet (optionally one --shard)."""
    import math

    from mambamil.batch import parse_shard, shard
    from mambamil.sheets import read_slide_sheet

    if args.sheet is not None:
        if args.slide or args.slide_id or args.mpp:
            raise MambamilError("--sheet replaces SLIDE, --slide-id and --mpp")
        rows = read_slide_sheet(args.sheet)
        jobs = [
            (Path(p), sid, None if math.isnan(m) else float(m))
            for sid, p, m in zip(rows["slide_id"], rows["path"], rows["mpp"], strict=True)
        ]
        return shard(jobs, *parse_shard(args.shard)) if args.shard else jobs
    if args.shard:
        raise MambamilError("--shard works with --sheet")
    if not args.slide:
        raise MambamilError("give SLIDE [SLIDE ...] or --sheet")
    n = len(args.slide)
    for name, values in (("--slide-id", args.slide_id), ("--mpp", args.mpp)):
        if values is not None and len(values) != n:
            raise MambamilError(f"{name} has {len(values)} value(s) for {n} slide(s): give one per slide")
    ids = args.slide_id or [s.stem for s in args.slide]
    return list(zip(args.slide, ids, args.mpp or [None] * n, strict=True))


# -- order --------------------------------------------------------------------------------------------------
def _add_order(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "order",
        help="write the instance sequence (permutation) of one slide's bag",
        description="Compute the order in which the scan reads a slide's patches: raster (row-major, as "
        "MambaMIL), snake (boustrophedon), hilbert (Hilbert curve over the patch grid) or random (a seeded "
        "control). Writes a .npy int64 permutation of the bag's instances, applied when bags load.",
    )
    p.add_argument("features", type=Path, help="feature (or coordinates) H5 of one slide")
    p.add_argument("--method", choices=["raster", "snake", "hilbert", "random"], default="hilbert")
    p.add_argument("--out", type=Path, required=True, help="output .npy file")
    add_section_options(p, "order")
    _add_on_bad_slide(p)
    p.set_defaults(func=_run_order)


def _run_order(args: argparse.Namespace) -> int:
    from mambamil.h5layout import read_bag
    from mambamil.order import slide_order, write_order
    from mambamil.qc import QCOutcome, run_slide_stage

    seed = section_from_args(args, "order")["seed"]

    def work() -> int:
        bag = read_bag(args.features)
        if bag.coords is None:
            raise MambamilError(f"{args.features}: the bag has no coordinates, so it cannot be ordered")
        perm = slide_order(bag.coords, bag.coords_meta, args.method, seed, args.features.stem)
        write_order(args.out, perm)
        return len(perm)

    n = run_slide_stage("order", args.features.stem, [args.out], [args.features], args.on_bad_slide, work)
    if isinstance(n, QCOutcome):
        return 0
    log.info("%s: %s order of %d instances → %s", args.features.stem, args.method, n, args.out)
    return 0


# -- splits / train / evaluate / predict --------------------------------------------------------------------
def _add_spec(p: argparse.ArgumentParser, what: str) -> None:
    """``--settings``: the JSON object the workflow computes for one task (``--spec``: its former name)."""
    p.add_argument("--settings", "--spec", dest="spec", type=json_object, metavar="JSON", required=True, help=what)


def _task_settings(args: argparse.Namespace) -> dict:
    """The ``--settings`` of splits/train/evaluate, its ``training`` validated over the schema defaults."""
    from mambamil.config import config_section

    return {**args.spec, "training": config_section("training", settings=args.spec.get("training"))}


def _cohort(args: argparse.Namespace, spec: dict):
    """Samples of the spec's task from the label sheet and the feature files present in --features-dir."""
    from mambamil.bags import TaskSpec, build_samples
    from mambamil.paths import order_file
    from mambamil.sheets import read_label_sheet

    task = TaskSpec.from_config(spec["task_name"], spec["task"])
    training = spec["training"]
    features = {p.stem: p for p in sorted(Path(args.features_dir).glob("*.h5"))}
    if not features:
        raise MambamilError(f"{args.features_dir}: no feature files (*.h5)")
    labels = read_label_sheet(args.labels)
    features, labels = _drop_excluded(args, features, labels)
    samples, meta = build_samples(labels, features, task, training["level"], training["on_missing"])
    orders = {}
    if args.order_dir:
        orders = {sid: order_file(args.order_dir, sid) for sid in features}
    return task, samples, meta, features, orders


def _drop_excluded(args: argparse.Namespace, features: dict, labels):
    """Leave out slides QC excluded (from --qc, else from the stubs in --features-dir), loudly."""
    from mambamil.qc import excluded_slides, read_qc_table, read_stub

    if getattr(args, "qc", None):
        excluded = excluded_slides(read_qc_table(args.qc))
    else:
        excluded = {sid: f"{o.stage}: {o.cause}" for sid, p in features.items() if (o := read_stub(p)) is not None}
    if not excluded:
        return features, labels
    for sid, why in sorted(excluded.items()):
        log.warning("slide %s EXCLUDED by QC (%s)", sid, why)
    kept = labels[~labels["slide_id"].isin(excluded)]
    lost = sorted(set(labels["case_id"].astype(str)) - set(kept["case_id"].astype(str)))
    if lost:
        log.warning("%d patient(s) EXCLUDED, no usable slide: %s", len(lost), lost[:20])
    return {sid: p for sid, p in features.items() if sid not in excluded}, kept


def _add_cohort_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", type=Path, required=True, help="label sheet CSV")
    p.add_argument("--features-dir", type=Path, required=True, help="folder of <slide_id>.h5 feature files")
    _add_spec(
        p,
        "JSON with task_name, task, training (the validated 'training' section with the task's overrides) "
        "and for train order_seed, model_name and model",
    )
    p.add_argument("--qc", type=Path, help="QC table (results/qc/slides.csv); its excluded slides are left out")


def _add_splits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "splits",
        help="write patient-level stratified k-fold splits for one task",
        description="Patient-level k-fold splits, stratified by class (subtyping) or by event and time bin "
        "(survival). Each fold tests patients no other fold tests and carves validation from its training "
        "patients. Seeded; every model reuses the file.",
    )
    _add_cohort_args(p)
    p.add_argument("--out", type=Path, required=True, help="output CSV (case_id, fold, split)")
    p.set_defaults(func=_run_splits, order_dir=None)


def _run_splits(args: argparse.Namespace) -> int:
    from mambamil.train.splits import make_splits, write_splits

    spec = _task_settings(args)
    task, samples, _, _, _ = _cohort(args, spec)
    t = spec["training"]
    splits = make_splits(samples, task, t["folds"], t["val_fraction"], t["seed"])
    write_splits(args.out, splits)
    log.info("%s: %d patients in %d folds → %s", task.name, splits["case_id"].nunique(), t["folds"], args.out)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one model on one fold and predict its held-out test patients",
        description="Train an aggregator from the model registry (mambamil, abmil, transmil, mean, max) on one "
        "fold: Adam, one bag per step with gradient accumulation, early stopping on the validation set (loss "
        "for subtyping, c-index for survival). Writes checkpoint.pt (with config, label map and feature "
        "metadata), log.csv, curves.png, test_predictions.csv and summary.json into --out.",
    )
    _add_cohort_args(p)
    p.add_argument("--splits", type=Path, required=True, help="splits CSV from 'mambamil splits'")
    p.add_argument("--fold", type=int, required=True, help="fold index")
    p.add_argument("--order-dir", type=Path, help="folder of <slide_id>.npy sequence orders (default: file order)")
    p.add_argument("--out", type=Path, required=True, help="output folder of this fold")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from mambamil.train.engine import TrainSettings, train_fold
    from mambamil.train.splits import check_splits, read_splits

    spec = _task_settings(args)
    task, samples, meta, features, orders = _cohort(args, spec)
    settings = TrainSettings.from_config(spec["training"])
    splits = read_splits(args.splits)
    if args.fold not in set(splits["fold"]):
        raise MambamilError(f"{args.splits}: no fold {args.fold}")
    check_splits(splits, samples, task)
    model = dict(spec["model"])
    name = model.pop("model")
    summary = train_fold(
        task,
        name,
        model,
        settings,
        samples,
        splits,
        args.fold,
        features,
        orders,
        args.out,
        meta,
        progress=not args.quiet,
        order=_train_order(spec) if orders else None,
    )
    print(f"{task.name}/{name}/fold {args.fold}: best epoch {summary['best_epoch']} → {args.out}")
    return 0


def _add_train_final(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-final",
        help="train one model on every development patient for the epoch count cross-validation chose",
        description="Train one model (no validation set, no early stopping) on all labelled patients for the "
        "median over folds of the selected epoch (from each fold's summary.json). Writes checkpoint.pt, log.csv "
        "and summary.json (the epoch count and the folds' epochs) into --out. For external validation.",
    )
    _add_cohort_args(p)
    p.add_argument("--fold-summaries", type=Path, nargs="+", required=True, help="summary.json of every CV fold")
    p.add_argument("--order-dir", type=Path, help="folder of <slide_id>.npy sequence orders (default: file order)")
    p.add_argument("--out", type=Path, required=True, help="output folder of the final model")
    p.set_defaults(func=_run_train_final)


def _run_train_final(args: argparse.Namespace) -> int:
    import json

    from mambamil.errors import InputFileError
    from mambamil.train.engine import TrainSettings, train_final

    spec = _task_settings(args)
    task, samples, meta, features, orders = _cohort(args, spec)
    summaries = []
    for path in args.fold_summaries:
        if not path.exists():
            raise InputFileError(path, "fold summary not found (train the folds first)")
        summaries.append(json.loads(path.read_text()))
    model = dict(spec["model"])
    name = model.pop("model")
    summary = train_final(
        task,
        name,
        model,
        TrainSettings.from_config(spec["training"]),
        samples,
        summaries,
        features,
        orders,
        args.out,
        meta,
        progress=not args.quiet,
        order=_train_order(spec) if orders else None,
    )
    print(f"{task.name}/{name}/final: {summary['epochs']} epochs (folds chose {summary['fold_epochs']}) → {args.out}")
    return 0


def _train_order(spec: dict) -> dict:
    """The order method and order-stage seed behind --order-dir, stored in the checkpoint for inference."""
    return {"method": spec["training"]["order"], "seed": int(spec.get("order_seed", 0))}


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics over the held-out test folds of one task and model",
        description="Per-fold metrics (mean ± std) and metrics of the pooled out-of-fold predictions with "
        "patient-level bootstrap intervals, on the test folds only (never the validation sets that picked the "
        "checkpoints). Subtyping: AUC, average precision, balanced accuracy, weighted F1, Brier score, expected "
        "calibration error, sensitivity/specificity at the operating point chosen on each fold's validation "
        "patients (val_predictions.csv beside each test file); ROC/PR plot with bootstrap bands and a "
        "reliability curve. Survival: Harrell's and Uno's c-index, time-dependent AUC, integrated Brier score "
        "and Kaplan–Meier curves of predicted high/low risk with a log-rank p-value. Bootstrap settings come "
        "from the 'evaluation' object of --settings (the config's evaluation section).",
    )
    p.add_argument("predictions", type=Path, nargs="+", help="test_predictions.csv of each fold")
    _add_spec(p, "JSON with task_name and task (and model_name, shown in titles; evaluation, the config section)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run_evaluate)


def _evaluation_settings(spec: dict):
    from mambamil.config import config_section
    from mambamil.evaluation.frame import EvaluationSettings

    return EvaluationSettings.from_config(config_section("evaluation", settings=spec.get("evaluation")))


def _run_evaluate(args: argparse.Namespace) -> int:
    from mambamil.bags import TaskSpec
    from mambamil.evaluation.evaluate import evaluate_folds
    from mambamil.evaluation.summary import fold_text

    spec = _task_settings(args)
    task = TaskSpec.from_config(spec["task_name"], spec["task"])
    title = f"{task.name} — {spec.get('model_name', '')}"
    settings = _evaluation_settings(spec)
    result = evaluate_folds(args.predictions, task.kind, list(task.classes), args.out, title, settings,
                            task.time_unit if task.kind == "survival" else None)  # fmt: skip
    for key, m in result["metrics"].items():
        fold = result["summary"].get(key)
        folds = f"; folds {fold_text(fold)}" if fold else ""
        why = f" ({m['reason']})" if m["reason"] else ""
        print(f"{task.name} {key}: {m['estimate']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]{why}{folds}")
    print(f"intervals: {result['interval_method']}")
    if result.get("tau") is not None:
        print(f"τ = {result['tau']:g} {task.time_unit} ({result['tau_source']}); times {result['survival_times']}")
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="paired comparison of the models of one task on the same patients",
        description="Difference in AUC (subtyping) or Harrell's c-index (survival) between every two models, "
        "on the patients both predicted, with a paired patient-bootstrap interval and p-value (the same "
        "resampled patients for both models). DeLong's test is not included: no well-kept Python library "
        "provides it.",
    )
    p.add_argument("predictions", type=Path, nargs="+", help="pooled predictions.csv of each model ('evaluate')")
    p.add_argument("--names", nargs="+", required=True, help="model name of each predictions file, in order")
    _add_spec(p, "JSON with task_name, task and evaluation (the config section)")
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from mambamil.bags import TaskSpec
    from mambamil.evaluation.compare import compare_models
    from mambamil.fileio import atomic_output

    if len(args.names) != len(args.predictions):
        raise MambamilError(f"compare: {len(args.predictions)} predictions files but {len(args.names)} --names")
    task = TaskSpec.from_config(args.spec["task_name"], args.spec["task"])
    frames = {}
    for name, path in zip(args.names, args.predictions, strict=True):
        if not path.exists():
            raise InputFileError(path, "predictions not found (run the evaluate rule for this model)")
        frames[name] = pd.read_csv(path, dtype={"sample_id": str, "case_id": str})
    table = compare_models(frames, task.kind, list(task.classes), task.name, _evaluation_settings(args.spec))
    with atomic_output(args.out) as tmp:
        table.to_csv(tmp, index=False)
    for row in table.itertuples():
        print(
            f"{task.name} {row.metric}: {row.model_a} − {row.model_b} = {row.difference:.3f} "
            f"[{row.ci_low:.3f}, {row.ci_high:.3f}], p = {row.p_value:.3g}" + (f" ({row.reason})" if row.reason else "")
        )
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write the self-contained HTML report of a results folder",
        description="One HTML file (images embedded, no network needed to open it): per task the metrics with "
        "their intervals, the model comparison, ROC/PR, calibration, Kaplan–Meier and time-dependent AUC plots, "
        "external validation cohorts, the QC exclusions, the settings and the software versions.",
    )
    p.add_argument("--results", type=Path, required=True, help="results folder of a run")
    p.add_argument("--config", type=Path, help="config.yaml whose settings the report lists")
    p.add_argument("--out", type=Path, help="output HTML (default: <results>/report.html)")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from mambamil.config import load_config
    from mambamil.paths import report_file
    from mambamil.report import write_report

    config = load_config(args.config) if args.config else None
    out = write_report(args.results, args.out or report_file(args.results), config)
    print(out)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="apply one checkpoint, or the ensemble of fold checkpoints, to new slides",
        description="Predict slides from their feature files with one or more checkpoints (probabilities or "
        "risk averaged over the ensemble). Writes a CSV with one row per slide, or, with --slides, one row per "
        "patient when the models were trained on patients (a patient's bag is the concatenation of its slides' "
        "sequences, as in training). With --labels the label sheet's labels are written beside the predictions "
        "(rows that cannot be scored are reported one per line) and --metrics-dir gets the metrics.",
    )
    p.add_argument("features", type=Path, nargs="+", help="feature H5 files, one per slide (QC stubs are skipped)")
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="checkpoint.pt file(s)")
    _add_order_override(p)
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--slides", type=Path, help="slide sheet CSV: the case_id of each slide (feature file stem)")
    p.add_argument(
        "--level",
        choices=["slide", "patient"],
        help="one row per slide or per patient (default: the checkpoints' training.level with --slides, else slide)",
    )
    p.add_argument("--labels", type=Path, help="label sheet CSV: labels written beside the predictions")
    p.add_argument("--label-column", default="label", help="classification label column (default: %(default)s)")
    p.add_argument("--metrics-dir", type=Path, help="with --labels: write metrics.json, predictions.csv, curves here")
    p.add_argument("--development-metrics", type=Path, help="with --metrics-dir: the development evaluation's "
                   "metrics.json, whose operating point, risk cut-off and survival times are carried over")  # fmt: skip
    _add_original_args(p)
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from mambamil.external import attach_labels, evaluate_cohort, read_development
    from mambamil.fileio import atomic_output
    from mambamil.inference import load_ensemble, predict_cohort, trained_level
    from mambamil.sheets import read_label_sheet, read_slide_sheet

    if args.metrics_dir and not args.labels:
        raise MambamilError("--metrics-dir needs --labels")
    cases = None
    if args.slides:
        sheet = read_slide_sheet(args.slides)
        cases = dict(zip(sheet["slide_id"], sheet["case_id"].astype(str), strict=True))
    ensemble = load_ensemble(args.checkpoint, args.device, _original(args), args.order)
    df = predict_cohort(ensemble, args.features, cases, args.level)
    if args.labels:
        task, extra = ensemble.task, ensemble.members[0].extra
        level = args.level or (trained_level(ensemble) if cases is not None else "slide")
        edges = (extra.get("meta") or {}).get("bin_edges")
        df, problems = attach_labels(
            df, read_label_sheet(args.labels), task.kind, list(task.classes), level, args.label_column, edges
        )
        for problem in problems:
            log.warning("%s", problem)
        if args.metrics_dir:
            title = f"{task.name} — {extra.get('model_name', '')} ({args.labels.parent.name})"
            development = read_development(args.development_metrics) if args.development_metrics else None
            result = evaluate_cohort(df, task.kind, list(task.classes), args.metrics_dir, title, problems,
                                     {"checkpoints": [str(c) for c in args.checkpoint], "level": level},
                                     development=development)  # fmt: skip
            scores = {k: v for k, v in result["pooled"].items() if isinstance(v, float)}
            print(f"{task.name}: {result['n']} scored: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    with atomic_output(args.out) as tmp:
        df.to_csv(tmp, index=False)
    print(f"{len(df)} predictions → {args.out}")
    return 0


# -- original MambaMIL checkpoints ---------------------------------------------------------------------------
def _add_order_override(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--order",
        choices=["raster", "snake", "hilbert", "random", "stored"],
        help="override the sequence order stored in the checkpoint (a warning says so; 'stored': the bag's own "
        "order); default: the order the model was trained on",
    )


def _add_original_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group(
        "original MambaMIL checkpoints",
        "a bare state dict from isyangshu/MambaMIL (s_<fold>_checkpoint.pt) cannot tell these; give them all "
        "(nothing is guessed). Ignored, with a warning, for project checkpoints.",
    )
    g.add_argument("--layer", choices=["srmamba", "bimamba", "mamba"], required=required, help="mixer layer type")
    g.add_argument("--rate", type=int, required=required, help="SRMamba reorder rate (the training script's)")
    g.add_argument("--task", choices=["classification", "survival"], required=required, help="task type")
    g.add_argument("--classes", nargs="+", help="class names in output order (classification)")
    g.add_argument("--n-bins", type=int, help="number of survival time bins (survival)")


def _original(args: argparse.Namespace) -> dict:
    """Original-checkpoint metadata given on the command line (None where not given)."""
    return {k: getattr(args, k) for k in ("layer", "rate", "task", "classes", "n_bins")}


def _add_convert_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-checkpoint",
        help="turn an original MambaMIL state dict into a project checkpoint with its metadata",
        description="Read a bare state dict saved by isyangshu/MambaMIL, check it against --layer/--rate/--task "
        "and --classes or --n-bins, and write a project checkpoint that carries them, so predict and heatmap load "
        "it without options. Its sequence order is 'stored' (bags are read as saved, as the original code does).",
    )
    p.add_argument("checkpoint", type=Path, help="original state dict (e.g. s_0_checkpoint.pt)")
    p.add_argument("--out", type=Path, required=True, help="output project checkpoint (.pt)")
    _add_original_args(p, required=True)
    p.set_defaults(func=_run_convert_checkpoint)


def _run_convert_checkpoint(args: argparse.Namespace) -> int:
    from mambamil.models import convert_original

    model, extra = convert_original(args.checkpoint, args.out, **_original(args))
    what = extra["classes"] if extra["task_kind"] == "classification" else f"{model.n_classes} time bins"
    layer = f"{model.config['layer']} rate {model.config['rate']}"
    print(f"{args.checkpoint}: {layer}, {extra['task_kind']} {what} → {args.out}")
    return 0


# -- heatmap ------------------------------------------------------------------------------------------------
def _add_heatmap(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heatmap",
        help="draw a trained model's per-patch scores onto one slide and export them for review",
        description="Attention of one checkpoint, or the mean over several (e.g. every fold model), as rank "
        "percentiles drawn over the slide at --mpp µm/px (block by block: memory stays bounded on any slide "
        "size), plus gradient × input attribution (independent of the pooling weights). Writes "
        "<slide_id>.attention.png, <slide_id>.gradxinput.png (with colour bars), <slide_id>.scores.csv, "
        "<slide_id>.patches.geojson (patch squares with scores as QuPath measurements) and top-/bottom-k "
        "patch montages into --out.",
    )
    p.add_argument("slide", type=Path, help="slide file")
    p.add_argument("--features", type=Path, required=True, help="the slide's feature H5")
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="checkpoint.pt file(s); averaged")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--slide-id", help="id for output names (default: the slide file name)")
    p.add_argument("--slide-mpp", type=float, help="µm/px override of the slide")
    add_section_options(p, "heatmaps")
    _add_order_override(p)
    _add_original_args(p)
    p.set_defaults(func=_run_heatmap)


def _run_heatmap(args: argparse.Namespace) -> int:
    from mambamil.heatmaps import HeatmapSettings, heatmap_slide

    settings = HeatmapSettings.from_config(section_from_args(args, "heatmaps"))
    summary = heatmap_slide(
        args.slide,
        args.features,
        args.checkpoint,
        args.out,
        settings,
        args.slide_id,
        args.slide_mpp,
        _original(args),
        order=args.order,
    )
    print(f"{summary['slide_id']}: {summary['n_patches']} patches, maps {summary['scores']} → {args.out}")
    return 0


# -- features -----------------------------------------------------------------------------------------------
def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="embed the patches of one or more slides with a patch encoder",
        description="Read the patches listed in a tile-stage coordinates file (at its target µm/px and patch size), "
        "embed them in batches and write OUT_H5: 'features' (N, D) and 'coords' (N, 2, identical to the coords "
        "file), with the encoder, its weights (source and SHA-256), normalisation and resolution as attributes. "
        "A rerun whose output already matches the settings is skipped. Several slides (or a slide sheet, "
        "optionally one --shard of it) run in one process with the encoder built once; a bad slide is reported "
        "on one line and the others finish (exit 1 at the end). Settings come from the schema defaults, "
        "then the config's 'features' section (--config), then --settings, then the options given here.",
    )
    p.add_argument(
        "slide", type=Path, nargs="*", help="slide file(s) (the ones the coordinates were made from); or use --sheet"
    )
    p.add_argument(
        "--coords", type=Path, nargs="+", metavar="COORDS_H5", help="tile-stage coordinates file(s), one per slide"
    )
    p.add_argument("--out", type=Path, nargs="+", metavar="OUT_H5", help="output feature file(s) (.h5), one per slide")
    p.add_argument("--slide-id", nargs="+", help="slide id(s) stored in the output (default: from the coords file)")
    m = p.add_argument_group("many slides in one process (encoder and device set up once)")
    m.add_argument("--sheet", type=Path, help="slide sheet CSV instead of SLIDE arguments")
    m.add_argument("--coords-dir", type=Path, help="with --sheet: folder of <slide_id>.h5 coordinates files")
    m.add_argument("--out-dir", type=Path, help="with --sheet: output folder for <slide_id>.h5")
    m.add_argument("--shard", help="with --sheet: i/k runs rows i, i+k, i+2k, … (0 <= i < k)")
    p.add_argument("--profile", action="store_true", help="time each stage of the data path and print a table")
    p.add_argument("--force", action="store_true", help="recompute even if the output matches the settings")
    add_section_options(p, "features")
    _add_on_bad_slide(p)
    p.set_defaults(func=_run_features)


def _feature_jobs(args: argparse.Namespace) -> list:
    """The slides of a features call: SLIDE arguments with --coords/--out, or --sheet (optionally one shard)."""
    from mambamil.batch import parse_shard, shard
    from mambamil.features.multi import jobs_from_lists, jobs_from_sheet

    if args.sheet is not None:
        if args.slide:
            raise MambamilError("give SLIDE arguments or --sheet, not both")
        if args.coords_dir is None or args.out_dir is None:
            raise MambamilError("--sheet needs --coords-dir and --out-dir")
        jobs = jobs_from_sheet(args.sheet, args.coords_dir, args.out_dir)
        return shard(jobs, *parse_shard(args.shard)) if args.shard else jobs
    if args.shard:
        raise MambamilError("--shard works with --sheet")
    if not args.slide or args.coords is None or args.out is None:
        raise MambamilError("give SLIDE [SLIDE ...] with --coords and --out (one each per slide), or --sheet")
    return jobs_from_lists(args.slide, args.coords, args.out, args.slide_id)


def _run_features(args: argparse.Namespace) -> int:
    from mambamil.features.extract import FeatureSettings
    from mambamil.features.multi import extract_slides

    settings = FeatureSettings.from_config(section_from_args(args, "features"))
    jobs = _feature_jobs(args)

    def report(outcome) -> None:
        result, out = outcome.result, outcome.job.out
        if outcome.status in ("failed", "excluded"):
            return
        if result.skipped:
            print(f"{result.slide_id}: {out} is up to date ({result.n_patches} patches); skipped")
        else:
            print(
                f"{result.slide_id}: {result.n_patches} patches × {result.dim} ({settings.encoder}, "
                f"{result.patches_per_s:.1f} patches/s) → {out}"
            )
        if result.profile is not None:
            print(result.profile.table())

    outcomes = extract_slides(
        jobs,
        settings,
        args.force,
        not args.quiet,
        args.profile,
        on_done=report,
        isolate_failures=len(jobs) > 1,
        on_bad_slide=args.on_bad_slide,
    )
    failed = [o.job.slide_id or o.job.slide.stem for o in outcomes if o.status == "failed"]
    if failed:
        raise MambamilError(f"{len(failed)} of {len(outcomes)} slide(s) failed: {', '.join(failed)}")
    return 0


# -- qc -----------------------------------------------------------------------------------------------------
def _add_qc(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qc",
        help="gather every slide's QC outcome into the cohort QC tables",
        description="Read each slide's stage outputs (QC stubs mark excluded slides) and write OUT/slides.csv "
        "(slide_id, case_id, status, stage, cause) and OUT/patients.csv (case_id, n_slides, n_usable, status, "
        "cause; a patient with no usable slide is excluded). Prints the excluded slides.",
    )
    p.add_argument("--slides", type=Path, required=True, help="slide sheet CSV")
    p.add_argument(
        "--stage-file",
        action="append",
        required=True,
        metavar="PATTERN",
        help="a stage output with {slide_id}, e.g. results/tiles/{slide_id}.h5; repeat in stage order",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run_qc)


def _run_qc(args: argparse.Namespace) -> int:
    from mambamil.paths import qc_tables
    from mambamil.qc import collect_qc, exclusion_report, write_table
    from mambamil.sheets import read_slide_sheet

    sheet = read_slide_sheet(args.slides)
    cases = dict(zip(sheet["slide_id"], sheet["case_id"].astype(str), strict=True))
    files = {sid: [Path(p.format(slide_id=sid)) for p in args.stage_file] for sid in cases}
    slides, patients = collect_qc(cases, files)
    tables = qc_tables(args.out)
    write_table(tables["slides"], slides)
    write_table(tables["patients"], patients)
    report = exclusion_report(slides)
    print(report or f"QC: all {len(slides)} slides usable")
    return 0


def _add_qc_retry(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qc-retry",
        help="retry excluded slides: remove their QC stubs so the next workflow run redoes them",
        description="Remove the QC stubs, at every stage (tiles, features of every encoder, orders), of every slide "
        "excluded by QC under RESULTS, or of those whose cause matches --cause. The next 'snakemake' run redoes those "
        "slides and everything downstream (qc table, splits, training, heatmaps). A slide whose file changed since "
        "it was excluded (size or modification time) is retried without this command.",
    )
    p.add_argument("results", type=Path, help="the results folder (config 'results')")
    p.add_argument("--cause", metavar="PATTERN", help="only slides whose cause matches this regular expression")
    p.add_argument("-n", "--dry-run", action="store_true", help="list the slides, remove nothing")
    p.set_defaults(func=_run_qc_retry)


def _run_qc_retry(args: argparse.Namespace) -> int:
    from mambamil.qc import retry_excluded

    if not args.results.is_dir():
        raise MambamilError(f"{args.results}: results folder not found")
    retried = retry_excluded(args.results, args.cause, args.dry_run)
    verb = "would retry" if args.dry_run else "retrying"
    for sid, why in retried.items():
        print(f"{sid}: {verb} (was excluded at {why})")
    what = f" matching {args.cause!r}" if args.cause else ""
    print(f"QC: {verb} {len(retried)} excluded slide(s){what}" + ("; now run snakemake" if retried else ""))
    return 0


# -- validate-config ----------------------------------------------------------------------------------------
def _add_validate_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate-config",
        help="check a config file against the schema and print it with defaults filled in",
        description="Validate a config file against workflow/schemas/config.schema.yaml; errors name the key "
        "path (e.g. tiling.target_mpp). With --sheets, also read the slide and label sheets it names.",
    )
    p.add_argument("config", type=Path, nargs="?", default=Path("config.yaml"), help="default: %(default)s")
    p.add_argument("--sheets", action="store_true", help="also validate the slide and label sheets")
    p.set_defaults(func=_run_validate_config)


# -- encoders -----------------------------------------------------------------------------------------------
def _add_encoders(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encoders",
        help="list the encoder presets (foundation models exactly as their authors run them)",
        description="The encoder presets of features.encoder: name, model, output dimension, input size and "
        "interpolation, µm/px it was trained at, output recipe, mean/std, weight source and licence. Any other "
        "timm model is timm:<name>.",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="default: %(default)s")
    p.set_defaults(func=_run_encoders)


def _run_encoders(args: argparse.Namespace) -> int:
    import json

    from mambamil.features.presets import preset_table

    rows = preset_table()
    if args.format == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print("\nAny other timm model: encoder timm:<name> (features.mean/std/input_size/interpolation/pooling).")
    return 0


def _check_sheets(config: dict) -> None:
    """Read both sheets and cross-check them; one error lists every problem found in either."""
    from mambamil.errors import ConfigError
    from mambamil.sheets import read_label_sheet, read_slide_sheet, sheet_problems

    problems, sheets = [], {}
    for key, reader in (("slides", read_slide_sheet), ("labels", read_label_sheet)):
        try:
            sheets[key] = reader(config[key])
        except MambamilError as exc:
            problems.append(str(exc))
    if len(sheets) == 2:
        problems += sheet_problems(sheets["slides"], sheets["labels"], config.get("tasks"))
    if problems:
        raise ConfigError(f"{len(problems)} sheet problem(s): " + " | ".join(problems))
    log.info("%d slides, %d labelled slides", len(sheets["slides"]), len(sheets["labels"]))


def _run_validate_config(args: argparse.Namespace) -> int:
    import yaml

    from mambamil.config import load_config

    config = load_config(args.config)
    if args.sheets:
        _check_sheets(config)
    print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")
    return 0


# -- review -------------------------------------------------------------------------------------------------
def _add_review(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="start a local review server over a finished results folder (cohort table, slide viewer, verdicts)",
        description="Serve the cohort's slides in the browser: a sortable, filterable table of every slide "
        "(prediction, fold, correct or not, QC), a deep-zoom viewer of each slide read on demand through "
        "OpenSlide with the heatmap scores as an overlay, and per-slide verdicts saved to "
        "RESULTS/review/verdicts.csv as they are typed. Binds 127.0.0.1; on a cluster, forward the port with "
        "'ssh -L PORT:localhost:PORT host'.",
    )
    p.add_argument("results", type=Path, help="the workflow's results folder (e.g. results/)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--task", help="evaluation task the predictions come from (default: the heatmaps' own)")
    p.add_argument("--model", help="evaluation model the predictions come from (default: the heatmaps' own)")
    p.set_defaults(func=_run_review)


def _run_review(args: argparse.Namespace) -> int:
    try:
        from mambamil.review import ReviewData
        from mambamil.review_server import serve
    except ImportError as exc:
        hint = "the review server needs the 'review' extra: pip install 'mambamil[review]'"
        raise MambamilError(f"{hint} ({exc})") from exc
    serve(ReviewData(args.results, task=args.task, model=args.model), host=args.host, port=args.port)
    return 0


# -- entry point --------------------------------------------------------------------------------------------
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo_cohort,
    _add_tile,
    _add_features,
    _add_order,
    _add_splits,
    _add_train,
    _add_evaluate,
    _add_train_final,
    _add_compare,
    _add_report,
    _add_predict,
    _add_heatmap,
    _add_convert_checkpoint,
    _add_qc,
    _add_qc_retry,
    _add_validate_config,
    _add_encoders,
    _add_review,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambamil",
        description="Whole-slide images to slide-level predictions and attention heatmaps with SR-Mamba MIL. "
        "Each command is one pipeline stage for one slide (or one fold); the Snakefile runs them for a cohort.",
        epilog="Run 'mambamil COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also MAMBAMIL_DEBUG=1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's own choice); the workflow passes each rule's threads, so "
        "jobs running side by side do not oversubscribe the cores",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("MAMBAMIL_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: Handler = args.func
    if args.threads:
        _set_threads(args.threads)
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print(f"mambamil {args.command}: interrupted", file=sys.stderr)
        return 130
    except FaultError as exc:
        if debug:
            raise
        print(f"mambamil {args.command}: failed, retry: {_one_line(exc)}", file=sys.stderr)
        return FAULT_EXIT
    except MambamilError as exc:
        if debug:
            raise
        print(f"mambamil {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        fault = fault_from(exc)  # disk full, EIO, EMFILE, MemoryError ... where no stage named the path
        if fault is not None:
            print(f"mambamil {args.command}: failed, retry: {_one_line(fault)}", file=sys.stderr)
            return FAULT_EXIT
        print(
            f"mambamil {args.command}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
