"""``mambamil predict`` (workflow/rules/external.smk) and ``convert-checkpoint`` (original MambaMIL weights)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mambamil.cli.options import Subparsers, add_order_override, add_original_args, add_out, original, verb
from mambamil.columns import LABEL_COLUMN
from mambamil.config import schema_choices
from mambamil.errors import MambamilError

log = logging.getLogger("mambamil")


def add_predict(sub: Subparsers) -> None:
    p = verb(
        sub,
        "predict",
        run_predict,
        help="apply one checkpoint, or the ensemble of fold checkpoints, to new slides",
        description="Predict slides from their feature files with one or more checkpoints (probabilities or "
        "risk averaged over the ensemble). Writes a CSV with one row per slide, or, with --slides, one row per "
        "patient when the models were trained on patients (a patient's bag is the concatenation of its slides' "
        "sequences, as in training). With --labels the label sheet's labels are written beside the predictions "
        "(rows that cannot be scored are reported one per line) and --metrics-dir gets the metrics.",
    )
    p.add_argument("features", type=Path, nargs="+", help="feature H5 files, one per slide (QC stubs are skipped)")
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="checkpoint.pt file(s)")
    add_order_override(p)
    add_out(p, "output CSV")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--slides", type=Path, help="slide sheet CSV: the case_id of each slide (feature file stem)")
    p.add_argument(
        "--level",
        choices=schema_choices("training", "level"),
        help="one row per slide or per patient (default: the checkpoints' training.level with --slides, else slide)",
    )
    p.add_argument("--labels", type=Path, help="label sheet CSV: labels written beside the predictions")
    p.add_argument("--label-column", default=LABEL_COLUMN, help="classification label column (default: %(default)s)")
    p.add_argument("--metrics-dir", type=Path, help="with --labels: write metrics.json, predictions.csv, curves here")
    p.add_argument("--development-metrics", type=Path, help="with --metrics-dir: the development evaluation's "
                   "metrics.json, whose operating point, risk cut-off and survival times are carried over")  # fmt: skip
    add_original_args(p)


def run_predict(args: argparse.Namespace) -> int:
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
    ensemble = load_ensemble(args.checkpoint, args.device, original(args), args.order)
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


def add_convert_checkpoint(sub: Subparsers) -> None:
    p = verb(
        sub,
        "convert-checkpoint",
        run_convert_checkpoint,
        help="turn an original MambaMIL state dict into a project checkpoint with its metadata",
        description="Read a bare state dict saved by isyangshu/MambaMIL, check it against --layer/--rate/--task "
        "and --classes or --n-bins, and write a project checkpoint that carries them, so predict and heatmap load "
        "it without options. Its sequence order is 'stored' (bags are read as saved, as the original code does).",
    )
    p.add_argument("checkpoint", type=Path, help="original state dict (e.g. s_0_checkpoint.pt)")
    add_out(p, "output project checkpoint (.pt)")
    add_original_args(p, required=True)


def run_convert_checkpoint(args: argparse.Namespace) -> int:
    from mambamil.models import convert_original

    model, extra = convert_original(args.checkpoint, args.out, **original(args))
    what = extra["classes"] if extra["task_kind"] == "classification" else f"{model.n_classes} time bins"
    layer = f"{model.config['layer']} rate {model.config['rate']}"
    print(f"{args.checkpoint}: {layer}, {extra['task_kind']} {what} → {args.out}")
    return 0
