"""The run's report: one self-contained HTML file (``results/report.html``; images embedded as base64, no
scripts, nothing fetched when it opens) with, per task, the metrics and their intervals, the model comparison,
the evaluation plots; the external validation cohorts; the QC exclusions; the settings and the software versions.

It reads what the evaluate / compare / summary / qc stages wrote (:mod:`mambamil.paths`), so it can be rebuilt
from any results folder (``mambamil report --results results``)."""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mambamil import __version__, paths
from mambamil.columns import probability_column
from mambamil.evaluation.frame import as_settings
from mambamil.evaluation.registry import label as metric_label
from mambamil.evaluation.summary import fold_text
from mambamil.fileio import atomic_output
from mambamil.qc import EXCLUDED

#: Packages whose versions the report lists.
PACKAGES = (
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "scikit-survival",
    "lifelines",
    "torch",
    "timm",
    "matplotlib",
    "openslide-python",
    "snakemake",
)
#: The plots of an evaluation folder, in report order, with their captions.
PLOTS = {
    "classification": (("curves", "ROC and precision–recall, bootstrap bands"), ("calibration", "reliability curve")),
    "survival": (("curves", "Kaplan–Meier by predicted risk group"), ("time_auc", "time-dependent AUC")),
}
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } .note { color: #666; font-size: 0.85em; } .nan { color: #a33; }
figure { display: inline-block; margin: 0.5em; }
figure img { max-width: 520px; max-height: 460px; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; } .warning { color: #8a4b00; font-weight: bold; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def _label(name: str) -> str:
    return metric_label(name)


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NaN"
    if isinstance(value, float) and abs(value) < 10**-digits and value != 0:
        return f"{value:.2e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(m: dict[str, Any]) -> str:
    """'estimate [low, high]' with the usable resamples (and the method where BCa fell back), or NaN and its
    reason."""
    if m.get("estimate") is None or not math.isfinite(m["estimate"]):
        return f'<span class="nan">NaN</span> <span class="note">({html.escape(str(m.get("reason")))})</span>'
    text = _num(m["estimate"])
    if m.get("ci_low") is not None and math.isfinite(m["ci_low"]):
        text += f" [{_num(m['ci_low'])}, {_num(m['ci_high'])}]"
        used = f"B = {m['resamples']}" if m.get("resamples") is not None else ""
        if m.get("interval") and m["interval"] != "bca":
            used += f", {m['interval']}"
        text += f' <span class="note">{html.escape(used)}</span>' if used else ""
    return text


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(f"{caption} ({path.name})")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep="NaN", float_format=lambda v: _num(float(v)), border=0)


def _value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _num(float(v))
    return str(v)


def _values_table(frame: pd.DataFrame) -> str:
    """A table of mixed counts, estimates and text: integers as integers, missing as —."""
    return _table(frame.astype(object).map(_value))


def _metrics_section(runs: dict[str, Path], heading: str, time_unit: str = "months") -> str:
    """The metrics table (one column per model) and the plots of each model's evaluation folder."""
    results = {model: json.loads((folder / "metrics.json").read_text()) for model, folder in runs.items()}
    names: list[str] = []
    for r in results.values():
        names += [n for n in r.get("metrics", {}) if n not in names]
    rows = []
    for name in names:
        row = f"<td>{html.escape(_label(name))}</td>"
        for r in results.values():
            m = r.get("metrics", {}).get(name)
            fold = r.get("summary", {}).get(name)
            text = _cell(m) if m else ""
            if fold and fold.get("computed"):
                text += f'<br><span class="note">folds {html.escape(fold_text(fold))}</span>'
            row += f"<td>{text}</td>"
        rows.append(f"<tr>{row}</tr>")
    header = "".join(
        f"<th>{html.escape(m)}<br><span class='note'>{r.get('n_patients', '?')} patients, {r.get('n_folds', 0)} "
        f"fold(s)</span></th>"
        for m, r in results.items()
    )
    methods = sorted({r.get("interval_method", "") for r in results.values()} - {""})
    warned = [(model, w) for model, r in results.items() for w in r.get("warnings", [])]
    kinds = {r.get("kind") for r in results.values()}
    parts = [
        heading,
        "".join(f'<p class="warning">Warning ({html.escape(m)}): {html.escape(w)}</p>' for m, w in warned),
        f"<table><tr><th>metric</th>{header}</tr>{''.join(rows)}</table>",
        "".join(
            f'<p class="note">Intervals: {html.escape(m)}. B = the usable resamples. Below each pooled estimate: '
            "the mean ± std (ddof 1) over the test folds that could compute it (k of K folds); p-values are not "
            "averaged.</p>"
            for m in methods
        ),
        f'<p class="note">Survival times in {html.escape(time_unit)}.</p>' if "survival" in kinds else "",
        "".join(_survival_settings(model, r, time_unit) for model, r in results.items() if r.get("kind") == "survival"),
    ]
    for model, folder in runs.items():
        outputs = paths.evaluation_outputs(folder)
        plots = PLOTS.get(results[model].get("kind"), ())
        figures = [_image(outputs[k], f"{model}: {caption}") for k, caption in plots if outputs[k].exists()]
        if figures:
            parts.append(f"<h4>{html.escape(model)}</h4>" + "".join(figures))
        parts.append(_clinical_section(model, folder, results[model]))
    return "\n".join(parts)


def _survival_settings(model: str, result: dict[str, Any], unit: str) -> str:
    """What a survival model's numbers hang on: τ and where it came from, the td-AUC times, the IBS range and the
    risk-group cut-off (per fold, fixed on validation predictions)."""

    def num(x: Any) -> str:
        return "—" if x is None else f"{x:.4g}" if isinstance(x, float) else html.escape(str(x))

    tau = result.get("tau")
    times = ", ".join(num(t) for t in result.get("survival_times") or [])
    ibs = result.get("ibs_range") or []
    cut = result.get("risk_cutoff") or {}
    per_fold = cut.get("per_fold") or {}
    folds = ", ".join(f"fold {k}: {num(v)}" for k, v in per_fold.items()) if isinstance(per_fold, dict) else ""
    return (
        f'<p class="note">{html.escape(model)}: τ = {num(tau)} {html.escape(unit)} '
        f"({html.escape(str(result.get('tau_source') or 'not set'))}); time-dependent AUC at {times or '—'} "
        f"{html.escape(unit)}; IBS from {num(ibs[0] if ibs else None)} to {num(ibs[-1] if ibs else None)}; "
        f"risk groups cut at {num(cut.get('development'))} ({html.escape(str(cut.get('method') or '—'))}"
        f"{'; ' + html.escape(folds) if folds else ''}).</p>"
    )


def _png(data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    alt = html.escape(caption)
    return f'<figure><img src="data:image/png;base64,{encoded}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def _read_predictions(folder: Path) -> pd.DataFrame | None:
    path = paths.evaluation_outputs(folder)["predictions"]
    return pd.read_csv(path, dtype={"sample_id": str, "case_id": str}) if path.exists() else None


def _classes(result: dict[str, Any], preds: pd.DataFrame) -> list[str]:
    """The class names of a classification run: from metrics.json, else the ``prob_<class>`` columns."""
    classes = result.get("pooled", {}).get("classes")
    return list(classes) if classes else [c.removeprefix("prob_") for c in preds.columns if c.startswith("prob_")]


def _clinical_section(model: str, folder: Path, result: dict[str, Any]) -> str:
    """Confusion matrix, one-vs-rest AUC per class (multi-class), calibration slope and intercept, operating
    thresholds with PPV/NPV and the decision curve of one classification run (:mod:`mambamil.evaluation.clinical`)."""
    from mambamil.evaluation import clinical

    preds = _read_predictions(folder)
    if result.get("kind") != "classification" or preds is None or preds.empty:
        return ""
    classes = _classes(result, preds)
    settings = as_settings(result.get("settings") or None)  # the run's; schema defaults for keys it lacks
    parts = [f"<h4>{html.escape(model)}: clinical performance</h4>"]
    matrix = result.get("pooled", {}).get("confusion_matrix")
    if matrix:
        frame = pd.DataFrame(matrix, columns=[f"predicted {c}" for c in classes])
        frame.insert(0, "true class", classes)
        parts.append("<p>Confusion matrix (pooled test folds, highest-probability class)</p>" + _table(frame))
    if len(classes) > 2:
        per_class = clinical.per_class_auc(preds, classes, settings)
        parts.append("<p>One-vs-rest AUC per class (B = usable resamples)</p>" + _values_table(per_class))
    y = preds["target"].to_numpy(dtype=int)
    level = settings.confidence_level
    calib = []
    for k in [1] if len(classes) == 2 else range(len(classes)):
        prob = preds[probability_column(classes[k])].to_numpy(dtype=float)
        fit = clinical.calibration_slope_intercept(y == k, prob, level)
        calib.append({"class": classes[k], **fit})
    parts.append(
        f"<p>Calibration slope and intercept (logistic recalibration, {100 * level:g} % Wald intervals; ideal: "
        "slope 1, intercept 0)</p>" + _values_table(pd.DataFrame(calib))
    )
    if len(classes) == 2:
        points = clinical.operating_points(preds, classes, settings)
        if points.empty:
            parts.append('<p class="note">No operating threshold (validation predictions not given).</p>')
        else:
            parts.append(
                f"<p>Operating thresholds on P({html.escape(classes[1])}) (Youden's J on each fold's validation "
                "predictions) with sensitivity, specificity, PPV and NPV</p>" + _values_table(points)
            )
        curve = clinical.net_benefit(y == 1, preds[f"prob_{classes[1]}"].to_numpy(dtype=float))
        parts.append(_png(clinical.decision_curve_png(curve, model), f"{model}: decision curve (net benefit)"))
    else:
        parts.append('<p class="note">Decision curve and operating thresholds: binary tasks only.</p>')
    return "\n".join(parts)


def _comparison_section(path: Path) -> str:
    if not path.exists():
        return '<p class="note">No model comparison (compare stage not run).</p>'
    table = pd.read_csv(path)
    if table.empty:
        return '<p class="note">No model comparison: one model only.</p>'
    methods = table["method"].dropna().unique()
    if "p_value_text" in table.columns:  # the p-value as text: 0 is "< 2/B"
        table["p_value"] = table.pop("p_value_text")
    shown = table.drop(columns=["method", "task"], errors="ignore")
    text = "<h4>Paired model comparison</h4>" + _table(shown)
    text += "".join(
        f'<p class="note">{html.escape(str(m))}. DeLong\'s test: not computed (no well-kept Python '
        "library provides it).</p>"
        for m in methods
    )
    return text


def _qc_section(results: Path) -> str:
    parts = []
    tables = [("development cohort", paths.qc_tables(paths.qc_dir(results))["slides"])]
    for cohort in paths.external_cohorts(results):
        path = paths.qc_tables(paths.qc_dir(paths.external_dir(results, cohort)))["slides"]
        if path.exists():
            tables.append((f"external cohort {cohort}", path))
    for name, path in tables:
        if not path.exists():
            parts.append(f'<p class="note">{html.escape(name)}: no QC table ({html.escape(str(path))}).</p>')
            continue
        qc = pd.read_csv(path, dtype=str, keep_default_na=False)
        bad = qc[qc.get("status", pd.Series(dtype=str)) == EXCLUDED]
        parts.append(f"<h4>{html.escape(name)}: {len(bad)} of {len(qc)} slide(s) excluded</h4>")
        if not bad.empty:
            parts.append(_table(bad))
    return "\n".join(parts)


def _qc_slides(results: Path) -> pd.DataFrame | None:
    path = paths.qc_tables(paths.qc_dir(results))["slides"]
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else None


def _cohort_section(results: Path, config: dict[str, Any] | None) -> str:
    """Per cohort (development, each external one): the participant flow from the QC table; per task: the cohort
    characteristics (one column per cohort) and the counts of each test fold
    (:mod:`mambamil.evaluation.cohort_table`)."""
    from mambamil.evaluation import cohort_table

    cohorts = {"development": (results, None)}
    for name in paths.external_cohorts(results):
        cohorts[f"external {name}"] = (paths.external_dir(results, name), name)
    parts = []
    characteristics: dict[str, dict[str, dict[str, Any]]] = {}
    folds: dict[str, pd.DataFrame] = {}
    for cohort, (root, external) in cohorts.items():
        slides = _qc_slides(root)
        analysed = {}
        for task, models in paths.evaluation_runs(results, external).items():
            folder = next(iter(models.values()))
            preds = _read_predictions(folder)
            if preds is None:
                continue
            result = json.loads(paths.evaluation_outputs(folder)["metrics"].read_text())
            kind = result.get("kind", "classification")
            classes = _classes(result, preds) if kind == "classification" else []
            analysed[task] = int(preds["case_id"].nunique())
            stats = cohort_table.cohort_characteristics(preds, kind, classes, slides)
            if kind == "survival":
                unit = time_unit(config, task)
                stats[f"median follow-up (reverse KM, {unit})"] = stats.pop("median follow-up (reverse KM)")
                stats[f"follow-up range ({unit})"] = stats.pop("follow-up range")
            characteristics.setdefault(task, {})[cohort] = stats
            if cohort == "development" and "fold" in preds.columns:
                folds[task] = cohort_table.fold_counts(preds, kind, classes, slides)
        if slides is None:
            parts.append(f'<p class="note">{html.escape(cohort)}: no QC table, no participant flow.</p>')
        else:
            flow = cohort_table.participant_flow(slides, analysed)
            parts.append(f"<h4>Participant flow, {html.escape(cohort)} cohort</h4>" + _values_table(flow))
    for task, by_cohort in characteristics.items():
        frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in by_cohort.items()})
        frame.insert(0, "characteristic", frame.index)
        parts.append(f"<h4>Cohort characteristics, task {html.escape(task)}</h4>" + _values_table(frame))
        if task in folds:
            parts.append(f"<p>Test folds, task {html.escape(task)}</p>" + _values_table(folds[task]))
    if not parts:
        return '<p class="note">No cohort yet.</p>'
    return "\n".join(parts)


def time_unit(config: dict[str, Any] | None, task: str | None = None) -> str:
    """The unit of a survival task's times (``tasks.<task>.time_unit``); without ``task``, every survival task's
    unit (joined when they differ)."""
    from mambamil.bags import TaskSpec

    tasks = (config or {}).get("tasks") or {}
    units = [
        str(section.get("time_unit") or TaskSpec.time_unit)
        for name, section in tasks.items()
        if section.get("type") == "survival" and task in (None, name)
    ]
    return " / ".join(dict.fromkeys(units)) or TaskSpec.time_unit


def software_versions() -> dict[str, str]:
    """Python, the platform, mambamil and the packages that computed the results."""
    versions = {"python": platform.python_version(), "platform": platform.platform(), "mambamil": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text)


def build_report(results: str | Path, config: dict[str, Any] | None = None) -> str:
    """The HTML text of the report of ``results``."""
    results = Path(results)
    toc = ['<li><a href="#cohorts">Cohorts and participant flow</a></li>']
    body = [f'<h2 id="cohorts">Cohorts and participant flow</h2>{_cohort_section(results, config)}']
    for task, models in paths.evaluation_runs(results).items():
        toc.append(f'<li><a href="#task-{_slug(task)}">{html.escape(task)}</a></li>')
        heading = f'<h2 id="task-{_slug(task)}">Task {html.escape(task)}</h2>'
        body.append(_metrics_section(models, heading, time_unit(config, task)))
        body.append(_comparison_section(paths.comparison_file(results, task)))
    if len(body) == 1:
        body.append('<p class="note">No evaluation results yet.</p>')
    ext = []
    for cohort in paths.external_cohorts(results):
        for task, models in paths.evaluation_runs(results, cohort).items():
            heading = f"<h3>Cohort {html.escape(cohort)}, task {html.escape(task)}</h3>"
            ext.append(_metrics_section(models, heading, time_unit(config, task)))
    toc.append('<li><a href="#external">External validation</a></li>')
    body.append('<h2 id="external">External validation</h2>')
    body.append("\n".join(ext) if ext else '<p class="note">No external cohort with labels evaluated.</p>')
    toc += [
        '<li><a href="#qc">QC exclusions</a></li>',
        '<li><a href="#settings">Settings</a></li>',
        '<li><a href="#software">Software</a></li>',
    ]
    body.append(f'<h2 id="qc">QC exclusions</h2>{_qc_section(results)}')
    settings = yaml.safe_dump(config, sort_keys=False, allow_unicode=True) if config else "(config not given)"
    body.append(f'<h2 id="settings">Settings</h2><pre>{html.escape(settings)}</pre>')
    versions = pd.DataFrame(list(software_versions().items()), columns=["software", "version"])
    body.append(f'<h2 id="software">Software</h2>{_table(versions)}')
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>mambamil report — {html.escape(str(results))}</title><style>{CSS}</style></head><body>"
        f"<h1>mambamil report</h1><p class='note'>results folder {html.escape(str(results))}; written {stamp} by "
        f"mambamil {__version__}</p><ul>{''.join(toc)}</ul>{''.join(body)}</body></html>\n"
    )


def write_report(results: str | Path, out: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write :func:`build_report` of ``results`` to ``out`` (atomically) and return ``out``."""
    out = Path(out)
    with atomic_output(out) as tmp:
        Path(tmp).write_text(build_report(results, config), encoding="utf-8")
    return out
