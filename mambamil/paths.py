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
        evaluation/<task>/<model>/metrics.json | predictions.csv | …           evaluate
        evaluation/summary.csv                                                  summary
        heatmaps/<slide_id>/<slide_id>.attention.png | … ;  heatmaps/index.csv  heatmaps
        logs/<rule>/…                                                           every rule
        review/verdicts.csv                                                     review (mambamil review)
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
    }


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
