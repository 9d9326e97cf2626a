"""``mambamil evaluate`` and ``compare`` (workflow/rules/train.smk) and ``report`` (the report rule, common.smk)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambamil.cli.options import Subparsers, add_out, add_settings, task_settings, verb
from mambamil.errors import InputFileError, MambamilError


def add_evaluate(sub: Subparsers) -> None:
    p = verb(
        sub,
        "evaluate",
        run_evaluate,
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
    add_settings(p, "JSON with task_name and task (and model_name, shown in titles; evaluation, the config section)")
    add_out(p, "output folder")


def _evaluation_settings(spec: dict):
    from mambamil.config import config_section
    from mambamil.evaluation.frame import EvaluationSettings

    return EvaluationSettings.from_config(config_section("evaluation", settings=spec.get("evaluation")))


def run_evaluate(args: argparse.Namespace) -> int:
    from mambamil.bags import TaskSpec
    from mambamil.evaluation.evaluate import evaluate_folds
    from mambamil.evaluation.summary import fold_text

    spec = task_settings(args)
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


def add_compare(sub: Subparsers) -> None:
    p = verb(
        sub,
        "compare",
        run_compare,
        help="paired comparison of the models of one task on the same patients",
        description="Difference in AUC (subtyping) or Harrell's c-index (survival) between every two models, "
        "on the patients both predicted, with a paired patient-bootstrap interval and p-value (the same "
        "resampled patients for both models). DeLong's test is not included: no well-kept Python library "
        "provides it.",
    )
    p.add_argument("predictions", type=Path, nargs="+", help="pooled predictions.csv of each model ('evaluate')")
    p.add_argument("--names", nargs="+", required=True, help="model name of each predictions file, in order")
    add_settings(p, "JSON with task_name, task and evaluation (the config section)")
    add_out(p, "output CSV")


def run_compare(args: argparse.Namespace) -> int:
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


def add_report(sub: Subparsers) -> None:
    p = verb(
        sub,
        "report",
        run_report,
        help="write the self-contained HTML report of a results folder",
        description="One HTML file (images embedded, no network needed to open it): per task the metrics with "
        "their intervals, the model comparison, ROC/PR, calibration, Kaplan–Meier and time-dependent AUC plots, "
        "external validation cohorts, the QC exclusions, the settings and the software versions.",
    )
    p.add_argument("--results", type=Path, required=True, help="results folder of a run")
    p.add_argument("--config", type=Path, help="config.yaml whose settings the report lists")
    p.add_argument("--out", type=Path, help="output HTML (default: <results>/report.html)")


def run_report(args: argparse.Namespace) -> int:
    from mambamil.config import load_config
    from mambamil.paths import report_file
    from mambamil.report import write_report

    config = load_config(args.config) if args.config else None
    out = write_report(args.results, args.out or report_file(args.results), config)
    print(out)
    return 0
