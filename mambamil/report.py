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

import pandas as pd
import yaml

from mambamil import __version__, paths
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
figcaption { font-size: 0.8em; color: #555; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
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
    """'estimate [low, high]', or NaN and its reason."""
    if m.get("estimate") is None or not math.isfinite(m["estimate"]):
        return f'<span class="nan">NaN</span> <span class="note">({html.escape(str(m.get("reason")))})</span>'
    text = _num(m["estimate"])
    if m.get("ci_low") is not None and math.isfinite(m["ci_low"]):
        text += f" [{_num(m['ci_low'])}, {_num(m['ci_high'])}]"
    return text


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(f"{caption} ({path.name})")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep="NaN", float_format=lambda v: _num(float(v)), border=0)


def _metrics_section(runs: dict[str, Path], heading: str) -> str:
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
    parts = [
        heading,
        f"<table><tr><th>metric</th>{header}</tr>{''.join(rows)}</table>",
        "".join(
            f'<p class="note">Intervals: {html.escape(m)}. Below each pooled estimate: the mean ± std (ddof 1) '
            "over the test folds that could compute it (k of K folds); p-values are not averaged.</p>"
            for m in methods
        ),
    ]
    for model, folder in runs.items():
        outputs = paths.evaluation_outputs(folder)
        plots = PLOTS.get(results[model].get("kind"), ())
        figures = [_image(outputs[k], f"{model}: {caption}") for k, caption in plots if outputs[k].exists()]
        if figures:
            parts.append(f"<h4>{html.escape(model)}</h4>" + "".join(figures))
    return "\n".join(parts)


def _comparison_section(path: Path) -> str:
    if not path.exists():
        return '<p class="note">No model comparison (compare stage not run).</p>'
    table = pd.read_csv(path)
    if table.empty:
        return '<p class="note">No model comparison: one model only.</p>'
    methods = table["method"].dropna().unique()
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
    body = []
    toc = []
    for task, models in paths.evaluation_runs(results).items():
        toc.append(f'<li><a href="#task-{_slug(task)}">{html.escape(task)}</a></li>')
        heading = f'<h2 id="task-{_slug(task)}">Task {html.escape(task)}</h2>'
        body.append(_metrics_section(models, heading))
        body.append(_comparison_section(paths.comparison_file(results, task)))
    if not body:
        body.append('<p class="note">No evaluation results yet.</p>')
    ext = []
    for cohort in paths.external_cohorts(results):
        for task, models in paths.evaluation_runs(results, cohort).items():
            heading = f"<h3>Cohort {html.escape(cohort)}, task {html.escape(task)}</h3>"
            ext.append(_metrics_section(models, heading))
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
