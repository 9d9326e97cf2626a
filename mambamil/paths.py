"""The results layout: one function per output path, called by the stage that writes the file, by the stage
that reads it and by the Snakemake rules (with ``"{slide_id}"``-style wildcards in place of values).

Two levels: a stage's folder under the results root (:func:`tiles_dir`, :func:`features_dir`, ...), and the
files a CLI verb writes into the folder it is given with ``--out`` (:func:`tile_outputs`, :func:`fold_outputs`,
...)::

    results/
        tiles/<slide_id>.h5 | .tissue.geojson | .preview.png                    tile
        features/<encoder_tag>/<slide_id>.h5                                    features
        features/<encoder_tag>/order/<method>/<slide_id>.npy                    order
        qc/slides.csv | patients.csv                                            qc
        splits/<task>.csv                                                       splits
        models/<task>/<model>/fold_<k>/checkpoint.pt | test_predictions.csv …   train
        models/<task>/<model>/final/checkpoint.pt | summary.json | log.csv      train-final
        evaluation/<task>/<model>/metrics.json | predictions.csv | …           evaluate
        evaluation/summary.csv | comparison.csv                                 summary
        evaluation/<task>/comparison.csv                                        compare
        external/<cohort>/<task>/<model>/metrics.json | …                       external cohorts
        report.html                                                             report
        heatmaps/<slide_id>/<slide_id>.attention.png | … ;  heatmaps/index.csv  heatmaps
        external/<cohort>/tiles/… | features/<encoder_tag>/… | qc/…             an external cohort's own stages
        external/<cohort>/<task>/<model>/cohort_predictions.csv | metrics.json …  predict (fold ensemble)
        external/<cohort>/<task>/<model>/final/…                                 predict (final model)
        logs/<rule>/…                                                           every rule
        review/verdicts.csv                                                     review (mambamil review)

An external validation cohort's slides go through the stages under its own root (:func:`external_dir`, used as
a results root with :func:`tiles_dir`, :func:`features_dir`, :func:`qc_dir`), so slide ids may repeat between
cohorts.
"""

from __future__ import annotations

from pathlib import Path

PathLike = str | Path


# -- stage folders under the results root ------------------------------------------------------------------
def tiles_dir(results: PathLike) -> Path:
    return Path(results) / "tiles"


def features_dir(results: PathLike, encoder_tag: str) -> Path:
    """Feature files of one encoder (its tag names the folder, so encoders never overwrite each other)."""
    return Path(results) / "features" / encoder_tag


def qc_dir(results: PathLike) -> Path:
    return Path(results) / "qc"


def splits_file(results: PathLike, task: str) -> Path:
    return Path(results) / "splits" / f"{task}.csv"


def fold_dir(results: PathLike, task: str, model: str, fold: int | str) -> Path:
    return Path(results) / "models" / task / model / f"fold_{fold}"


def evaluation_dir(results: PathLike, task: str, model: str) -> Path:
    return Path(results) / "evaluation" / task / model


def final_model_dir(results: PathLike, task: str, model: str) -> Path:
    """The model trained on every development patient (``training.final_model``)."""
    return Path(results) / "models" / task / model / "final"


def external_dir(results: PathLike, cohort: str | None = None) -> Path:
    """The results root of one external validation cohort: its tiles, features and QC tables, as under
    ``results`` (pass it to :func:`tiles_dir`, :func:`features_dir`, :func:`qc_dir`); without ``cohort``, the
    folder of all cohorts (``external/<cohort>/<task>/<model>/`` hold :func:`evaluation_outputs`)."""
    root = Path(results) / "external"
    return root / cohort if cohort else root


def external_evaluation_dir(results: PathLike, cohort: str, task: str, model: str, final: bool = False) -> Path:
    """Predictions and metrics of one external cohort by one task × model: its fold ensemble, or (``final``) the
    final model."""
    out = external_dir(results, cohort) / task / model
    return out / "final" if final else out


def summary_file(results: PathLike) -> Path:
    return Path(results) / "evaluation" / "summary.csv"


def heatmap_dir(results: PathLike, slide_id: str) -> Path:
    return Path(results) / "heatmaps" / slide_id


def heatmaps_index(results: PathLike) -> Path:
    return Path(results) / "heatmaps" / "index.csv"


def logs_dir(results: PathLike) -> Path:
    return Path(results) / "logs"


def review_dir(results: PathLike) -> Path:
    return Path(results) / "review"


def verdicts_file(results: PathLike) -> Path:
    """Reviewers' verdicts, one row per slide and reviewer (written by ``mambamil review``)."""
    return review_dir(results) / "verdicts.csv"


def verdicts_lock(results: PathLike) -> Path:
    """The lock file review servers hold while they read, merge and rewrite :func:`verdicts_file`."""
    return review_dir(results) / "verdicts.csv.lock"


# -- the files of one stage's output folder ----------------------------------------------------------------
def tile_outputs(out_dir: PathLike, slide_id: str) -> dict[str, Path]:
    """coords (H5), tissue (GeoJSON) and preview (PNG) of one slide."""
    out_dir = Path(out_dir)
    return {
        "coords": out_dir / f"{slide_id}.h5",
        "tissue": out_dir / f"{slide_id}.tissue.geojson",
        "preview": out_dir / f"{slide_id}.preview.png",
    }


def feature_file(out_dir: PathLike, slide_id: str) -> Path:
    """A slide's feature H5 (also the name of a tile-stage coordinates file in ``tiles_dir``)."""
    return Path(out_dir) / f"{slide_id}.h5"


def order_dir(features: PathLike, method: str) -> Path:
    """The orders of one method, beside the features they order."""
    return Path(features) / "order" / method


def order_file(out_dir: PathLike, slide_id: str) -> Path:
    """A slide's instance order (``.npy`` permutation of its bag) in an :func:`order_dir`."""
    return Path(out_dir) / f"{slide_id}.npy"


def qc_tables(out_dir: PathLike) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"slides": out_dir / "slides.csv", "patients": out_dir / "patients.csv"}


def fold_outputs(out_dir: PathLike) -> dict[str, Path]:
    """What training one fold writes."""
    out_dir = Path(out_dir)
    return {
        "checkpoint": out_dir / "checkpoint.pt",
        "predictions": out_dir / "test_predictions.csv",
        "val_predictions": out_dir / "val_predictions.csv",
        "log_csv": out_dir / "log.csv",
        "curves": out_dir / "curves.png",
        "summary": out_dir / "summary.json",
    }


def evaluation_outputs(out_dir: PathLike) -> dict[str, Path]:
    """What evaluating one task × model writes."""
    out_dir = Path(out_dir)
    return {
        "metrics": out_dir / "metrics.json",
        "predictions": out_dir / "predictions.csv",
        "curves": out_dir / "test_curves.png",
        "calibration": out_dir / "calibration.png",
        "time_auc": out_dir / "time_auc.png",
    }


def external_outputs(out_dir: PathLike) -> dict[str, Path]:
    """What predicting an external cohort writes: every patient's prediction with its label where known
    (``cohort_predictions``) and, with a label sheet, the :func:`evaluation_outputs` of the labelled ones."""
    return {"cohort_predictions": Path(out_dir) / "cohort_predictions.csv", **evaluation_outputs(out_dir)}


def comparison_file(results: PathLike, task: str) -> Path:
    """The paired comparison of every two models of one task."""
    return Path(results) / "evaluation" / task / "comparison.csv"


def comparison_table(results: PathLike) -> Path:
    """Every task's model comparisons in one table."""
    return Path(results) / "evaluation" / "comparison.csv"


def report_file(results: PathLike) -> Path:
    """The self-contained HTML report of a run."""
    return Path(results) / "report.html"


def heatmap_outputs(out_dir: PathLike, slide_id: str, maps: tuple[str, ...] = ("attention", "gradxinput")) -> dict:
    """What drawing one slide writes: one PNG per score map, the scores table, the QuPath patches, the montages
    and the slide's prediction."""
    out_dir = Path(out_dir)
    files = {name: out_dir / f"{slide_id}.{name}.png" for name in maps}
    files.update(
        scores=out_dir / f"{slide_id}.scores.csv",
        geojson=out_dir / f"{slide_id}.patches.geojson",
        top=out_dir / f"{slide_id}.top.png",
        bottom=out_dir / f"{slide_id}.bottom.png",
        prediction=out_dir / f"{slide_id}.prediction.json",
    )
    return files


# -- what a finished results folder holds (read back by the report and the review server) ---------------
def evaluation_runs(
    results: PathLike, cohort: str | None = None, output: str = "metrics"
) -> dict[str, dict[str, Path]]:
    """task → model → evaluation folder (:func:`evaluation_dir`; with ``cohort``, that external cohort's
    :func:`external_evaluation_dir`, and its final model's as ``"<model> (final model)"``) for every one that holds
    its ``output`` (a key of :func:`evaluation_outputs`)."""
    root = external_dir(results, cohort) if cohort else Path(results) / "evaluation"
    name = evaluation_outputs("")[output].name
    runs: dict[str, dict[str, Path]] = {}
    for found in sorted(root.glob(f"*/*/{name}")):
        runs.setdefault(found.parent.parent.name, {})[found.parent.name] = found.parent
    for found in sorted(root.glob(f"*/*/final/{name}")) if cohort else ():
        runs.setdefault(found.parents[2].name, {})[f"{found.parents[1].name} (final model)"] = found.parent
    return runs


def external_cohorts(results: PathLike) -> list[str]:
    """The external cohorts with a folder under ``results`` (:func:`external_dir`), sorted."""
    root = external_dir(results)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def tiled_slides(results: PathLike) -> list[str]:
    """The slide ids with a coordinates file (or its QC stub) in :func:`tiles_dir`, sorted."""
    tiles = tiles_dir(results)
    return sorted(p.stem for p in tiles.glob("*.h5")) if tiles.is_dir() else []
