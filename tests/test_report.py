"""The run's HTML report, built from a small synthetic results folder (what evaluate / compare / qc write) and
opened in headless Chromium: it loads offline, logs no console error, and every embedded image decodes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mambamil import paths
from mambamil.cli import main
from mambamil.evaluation.compare import compare_models
from mambamil.evaluation.evaluate import evaluate_predictions
from mambamil.fileio import atomic_output

# tests/test_evaluation.py by its module name: the `tests` package that torchmil and torchstain install into
# site-packages shadows `tests.test_evaluation`
from test_evaluation import CLASSES, SETTINGS, classification_frame, survival_frame  # isort: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    subtype = {"mambamil": classification_frame(seed=1).assign(threshold=0.5), "abmil": classification_frame(seed=2)}
    for model, preds in subtype.items():
        evaluate_predictions(preds, "classification", CLASSES, paths.evaluation_dir(root, "subtype", model), model)
    survival = survival_frame()
    evaluate_predictions(survival, "survival", [], paths.evaluation_dir(root, "survival", "mambamil"), "surv")
    for task, frames, kind in (
        ("subtype", subtype, "classification"),
        ("survival", {"mambamil": survival}, "survival"),
    ):
        table = compare_models(frames, kind, CLASSES, task, SETTINGS)
        paths.comparison_file(root, task).parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(paths.comparison_file(root, task)) as tmp:
            table.to_csv(tmp, index=False)
    qc = pd.DataFrame(
        {
            "slide_id": ["S1", "S2"],
            "case_id": ["P1", "P2"],
            "status": ["ok", "excluded"],
            "stage": ["", "tile"],
            "cause": ["", "no tissue found"],
        }
    )
    paths.qc_dir(root).mkdir()
    qc.to_csv(paths.qc_tables(paths.qc_dir(root))["slides"], index=False)
    external = paths.external_dir(root) / "hospital_b" / "subtype" / "mambamil"
    evaluate_predictions(classification_frame(seed=3).drop(columns="fold"), "classification", CLASSES, external, "ext")
    return root


def test_report_opens_offline_without_errors_and_shows_every_image(results: Path, browser, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing to fetch or run
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
    # subtype: 2 models × (ROC/PR + calibration + decision curve); survival: KM + time AUC; external: ROC/PR +
    # calibration + decision curve
    assert len(images) == 11, images
    assert all(done and width > 0 for done, width, _ in images), images
    assert not errors, errors
    body = page.inner_text("body")
    for expected in (
        "Task subtype",
        "Task survival",
        "Paired model comparison",
        "bias-corrected and accelerated (BCa",
        "bootstrap interval: 1000 resamples",
        "Participant flow, development cohort",
        "Cohort characteristics, task survival",
        "Calibration slope and intercept",
        "Operating thresholds on P(pos)",
        "External validation",
        "Cohort hospital_b, task subtype",
        "1 of 2 slide(s) excluded",
        "no tissue found",
        "scikit-survival",
        "Uno's c-index (IPCW)",
        "one model only",
    ):
        assert expected in body, expected
    page.close()
