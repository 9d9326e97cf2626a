"""Heatmap review over a finished results folder: the cohort table, slide and score-overlay tiles, verdicts.

The web server (:mod:`mambamil.review_server`) only routes; everything it serves comes from here, looked up by
slide id in :class:`ReviewData`, never from a path in a URL. What is read, per slide (``mambamil/paths.py``)::

    tiles/<id>.h5                       slide file path (attribute ``slide_path``), patch size and grid step
    tiles/<id>.preview.png | .tissue.geojson          thumbnail, tissue contours
    heatmaps/<id>/<id>.scores.csv | .prediction.json  per-patch scores (percentiles), the slide's prediction
    heatmaps/index.csv, qc/slides.csv                 drawn / excluded (with the cause) / not tested
    evaluation/<task>/<model>/predictions.csv         label and test fold
    review/verdicts.csv                               written: one row per slide and reviewer

Every file read is first checked to be inside the results folder (symlinks followed; the slide files the tile
stage recorded are the one exception). Verdicts are merged into ``review/verdicts.csv`` under a cross-process
file lock, and reloaded whenever the file changes, so several servers on one results folder lose no verdict and
each shows the others'.
Slide tiles come from ``openslide.deepzoom.DeepZoomGenerator`` (256 px, no overlap, full bounds); overlay tiles
of the same grid are drawn from the patch-score grid (one cell per patch step) with a colour map's lookup table.
"""

from __future__ import annotations

import csv
import datetime
import functools
import io
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from PIL import Image

from mambamil import paths
from mambamil.columns import LABEL_COLUMN, PERCENTILE_SUFFIX, PROBABILITY_PREFIX, percentile_column, probability_column
from mambamil.errors import InputFileError, one_line
from mambamil.fileio import atomic_output
from mambamil.h5layout import read_coords_attrs
from mambamil.qc import EXCLUDED, read_stub

log = logging.getLogger(__name__)

TILE = 256
#: Palette index of overlay pixels without a patch (transparent); percentiles map to indices 0 … EMPTY − 1.
EMPTY = 255
#: Colour maps offered for the overlay (matplotlib names); the first, the default, is perceptually uniform.
CMAPS = ("viridis", "magma", "inferno", "cividis", "coolwarm", "RdYlBu_r", "jet", "gray")
#: Marker colours (top-k, bottom-k patches) offered for each colour map: the two whose hues are furthest from it.
MARKER_CANDIDATES = ("#ff1744", "#ff9100", "#00e5ff", "#76ff03", "#d500f9", "#ffffff", "#000000")
#: How far (hue degrees) white and black markers count from any colour map.
NEUTRAL_DEGREES = 45.0
#: Longest side of a cohort-page thumbnail (px): shown 48 px high, sharp on a 2× display.
THUMB_PX = 160
VERDICTS = ("agree", "disagree", "artefact", "unsure")
VERDICT_COLUMNS = ["slide_id", "reviewer", "verdict", "note", "updated"]
#: Where the review server listens by default (this machine only; README "Reviewing heatmaps").
HOST, PORT = "127.0.0.1", 8765
#: Tile columns/rows a Bokeh zoom level may ask for are [0, 2**z); levels above this are refused outright.
MAX_LEVEL = 24


class NotFound(LookupError):
    """An unknown slide id, map, colour map or a file outside the results folder (HTTP 404)."""


class BadRequest(ValueError):
    """Malformed tile coordinates or verdict fields (HTTP 400)."""


class Busy(RuntimeError):
    """The verdicts file stayed locked by another writer too long (HTTP 503)."""


@dataclass
class SlideEntry:
    """One row of the cohort table and what the viewer needs to find the slide's files."""

    slide_id: str
    case_id: str = ""
    label: str = ""
    predicted: str = ""
    score: float | None = None  # probability of the predicted class, or risk (survival)
    score_name: str = ""
    fold: str = ""
    correct: str = ""  # "yes" | "no" | "" (no label or survival)
    qc_status: str = ""
    qc_cause: str = ""
    heatmap: str = ""  # drawn | excluded … | not in a test fold …
    slide_path: Path | None = None

    def row(self) -> dict[str, Any]:
        return {
            "slide_id": self.slide_id,
            "case_id": self.case_id,
            "label": self.label,
            "predicted": self.predicted,
            "score": None if self.score is None else round(self.score, 4),
            "score_name": self.score_name,
            "fold": self.fold,
            "correct": self.correct,
            "qc_status": self.qc_status,
            "qc_cause": self.qc_cause,
            "heatmap": self.heatmap,
            "viewable": self.slide_path is not None,
        }


def inside_folder(root: Path, path: Path) -> Path | None:
    """``path`` resolved (symlinks followed) if it is a file inside the folder ``root`` (resolved), else None."""
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(root) and resolved.is_file() else None


def _read_csv(root: Path, path: Path) -> pd.DataFrame | None:
    inside = inside_folder(root, path)
    return pd.read_csv(inside, dtype=str, keep_default_na=False) if inside else None


def _evaluation_runs(root: Path, results: Path) -> dict[tuple[str, str], pd.DataFrame]:
    runs = {}
    for task, models in paths.evaluation_runs(results, output="predictions").items():
        for model, folder in models.items():
            pred = paths.evaluation_outputs(folder)["predictions"]
            if inside := inside_folder(root, pred):
                runs[(task, model)] = pd.read_csv(inside, dtype={"case_id": str, "slide_id": str})
    return runs


def _pick_run(runs: dict, predictions: dict[str, dict], task: str | None, model: str | None) -> tuple[str, str] | None:
    """The evaluation run the heatmaps came from: the given task/model, else the run whose predictions agree best
    with the heatmaps' own (same keys, closest values: the heatmap of a slide uses the model that tested it)."""
    candidates = [k for k in runs if (task is None or k[0] == task) and (model is None or k[1] == model)]
    if (task or model) and not candidates:
        raise InputFileError(f"evaluation/{task or '*'}/{model or '*'}/predictions.csv", "no such evaluation")
    if len(candidates) <= 1:
        return candidates[0] if candidates else None

    def distance(key: tuple[str, str]) -> float:
        df = runs[key]
        id_col = "slide_id" if "slide_id" in df.columns else "case_id"
        table = df.drop_duplicates(id_col).set_index(id_col)
        diffs = []
        for sid, pred in predictions.items():
            numbers = {k: v for k, v in pred.items() if isinstance(v, (int, float))}
            if not numbers or not set(numbers) <= set(table.columns):
                return math.inf
            ident = sid if id_col == "slide_id" else pred.get("_case_id", "")
            if ident in table.index:
                diffs += [abs(float(table.loc[ident, k]) - v) for k, v in numbers.items()]
        return float(np.mean(diffs)) if diffs else 1e9

    return min(candidates, key=distance)


class ReviewData:
    """Everything the review server serves, by slide id. Slides are opened lazily and cached."""

    def __init__(self, results: paths.PathLike, task: str | None = None, model: str | None = None) -> None:
        self.results = Path(results)
        if not self.results.is_dir():
            raise InputFileError(self.results, "results folder not found")
        self.root = self.results.resolve()
        self.slides: dict[str, SlideEntry] = {}
        self._verdict_lock = threading.Lock()
        self._slide_lock = threading.Lock()
        self._load(task, model)
        self._verdicts: dict[tuple[str, str], dict[str, str]] = {}
        self._verdicts_seen: tuple[int, int, int] | None = None  # (inode, size, mtime) of the file last read

    # -- safety: every file served or read is inside the results folder ------------------------------------
    def inside(self, path: Path) -> Path:
        """``path`` resolved (symlinks followed); NotFound unless it is a file inside the results folder."""
        resolved = inside_folder(self.root, path)
        if resolved is None:
            raise NotFound(str(path.name))
        return resolved

    def entry(self, slide_id: str) -> SlideEntry:
        try:
            return self.slides[slide_id]
        except KeyError:
            raise NotFound(slide_id) from None

    # -- the cohort table ------------------------------------------------------------------------------------
    def _load(self, task: str | None, model: str | None) -> None:
        qc = _read_csv(self.root, paths.qc_tables(paths.qc_dir(self.results))["slides"])
        index = _read_csv(self.root, paths.heatmaps_index(self.results))
        ids: dict[str, None] = {}  # ordered, without repeats: QC table, heatmap index, then any other tiles
        for table in (qc, index):
            ids.update(dict.fromkeys(table["slide_id"] if table is not None else []))
        ids.update(dict.fromkeys(paths.tiled_slides(self.results)))
        for sid in ids:
            self.slides[sid] = SlideEntry(sid)
        if qc is not None:
            for r in qc.itertuples():
                e = self.slides[r.slide_id]
                e.case_id, e.qc_status = r.case_id, r.status
                e.qc_cause = f"{r.stage}: {r.cause}" if r.status == EXCLUDED else ""
        if index is not None:
            for r in index.itertuples():
                self.slides[r.slide_id].heatmap = r.status
        predictions = {}
        for sid, e in self.slides.items():
            e.slide_path = self._slide_path(sid)
            pred_file = paths.heatmap_outputs(paths.heatmap_dir(self.results, sid), sid)["prediction"]
            if pred_file := inside_folder(self.root, pred_file):
                predictions[sid] = {**json.loads(pred_file.read_text()), "_case_id": e.case_id}
        runs = _evaluation_runs(self.root, self.results)
        run = _pick_run(runs, predictions, task, model)
        self.run = run
        table = runs.get(run) if run else None
        for sid, e in self.slides.items():
            row = self._evaluation_row(table, sid, e.case_id)
            pred = predictions.get(sid) or {}
            if row is not None:
                e.fold = str(row.get("fold", ""))
                e.case_id = e.case_id or str(row.get("case_id", ""))
                if LABEL_COLUMN in row:
                    e.label = str(row[LABEL_COLUMN])
                elif "time" in row:
                    e.label = f"time {row['time']}, event {row.get('event', '')}"
                if not pred:  # not drawn: the evaluation's (patient-level) prediction
                    keep = ("risk", "predicted")
                    pred = {k: row[k] for k in row.index if k in keep or k.startswith(PROBABILITY_PREFIX)}
            if "predicted" in pred:
                e.predicted = str(pred["predicted"])
                prob = pred.get(probability_column(e.predicted))
                e.score, e.score_name = (None if prob is None else float(prob)), "probability"
                if e.label:
                    e.correct = "yes" if e.label == e.predicted else "no"
            elif "risk" in pred:
                e.score, e.score_name = float(pred["risk"]), "risk"

    @staticmethod
    def _evaluation_row(table: pd.DataFrame | None, sid: str, case: str) -> pd.Series | None:
        if table is None:
            return None
        if "slide_id" in table.columns and (table["slide_id"] == sid).any():
            return table[table["slide_id"] == sid].iloc[0]
        if case and "case_id" in table.columns and (table["case_id"] == case).any():
            return table[table["case_id"] == case].iloc[0]
        return None

    def _slide_path(self, sid: str) -> Path | None:
        """The slide file recorded by the tile stage (None for QC stubs and missing files)."""
        coords = inside_folder(self.root, paths.tile_outputs(paths.tiles_dir(self.results), sid)["coords"])
        if coords is None or read_stub(coords) is not None:
            return None
        meta = read_coords_attrs(coords)
        value = meta.slide_path if meta is not None else None
        path = Path(str(value)) if value is not None else None
        return path if path is not None and path.is_file() else None

    def cohort(self) -> list[dict[str, Any]]:
        return [{**e.row(), "thumb": self._has_thumbnail(e.slide_id)} for e in self.slides.values()]

    def _has_thumbnail(self, slide_id: str) -> bool:
        try:
            return bool(self.thumbnail(slide_id))
        except NotFound:
            return False

    # -- per-slide files ---------------------------------------------------------------------------------------
    def thumbnail(self, slide_id: str) -> Path:
        self.entry(slide_id)
        return self.inside(paths.tile_outputs(paths.tiles_dir(self.results), slide_id)["preview"])

    def thumbnail_jpeg(self, slide_id: str) -> bytes:
        """The slide's preview downscaled to at most ``THUMB_PX`` on its longer side, as JPEG."""
        path = self.thumbnail(slide_id)
        return _thumbnail(str(path), path.stat().st_mtime_ns)

    def mpp(self, slide_id: str) -> float | None:
        """Level-0 µm per pixel of the slide, as the tile stage recorded it (None when unknown)."""
        self.entry(slide_id)
        coords = self.inside(paths.tile_outputs(paths.tiles_dir(self.results), slide_id)["coords"])
        meta = read_coords_attrs(coords)
        value = meta.slide_mpp if meta is not None else None
        return float(value) if value else None

    def _heatmap_file(self, slide_id: str, key: str) -> Path:
        return self.inside(paths.heatmap_outputs(paths.heatmap_dir(self.results, slide_id), slide_id)[key])

    def tissue(self, slide_id: str) -> list[list[tuple[list[float], list[float]]]]:
        """Tissue polygons as rings of (xs, ys) in level-0 px; [] when there is no tissue file."""
        self.entry(slide_id)
        try:
            path = self.inside(paths.tile_outputs(paths.tiles_dir(self.results), slide_id)["tissue"])
        except NotFound:
            return []
        polygons = []
        for feature in json.loads(path.read_text()).get("features", []):
            geom = feature.get("geometry") or {}
            rings = geom.get("coordinates", [])
            if geom.get("type") == "Polygon":
                rings = [rings]
            for poly in rings if geom.get("type") in ("Polygon", "MultiPolygon") else []:
                polygons.append([([p[0] for p in ring], [p[1] for p in ring]) for ring in poly])
        return polygons

    # -- slide tiles ---------------------------------------------------------------------------------------------
    def slide(self, slide_id: str) -> SlideTiles:
        entry = self.entry(slide_id)
        if entry.slide_path is None:
            raise NotFound(slide_id)
        with self._slide_lock:
            return _slide_tiles(str(entry.slide_path))

    def scores(self, slide_id: str) -> ScoreGrid:
        self.entry(slide_id)
        scores = self._heatmap_file(slide_id, "scores")
        coords = self.inside(paths.tile_outputs(paths.tiles_dir(self.results), slide_id)["coords"])
        with self._slide_lock:
            return _score_grid(str(scores), scores.stat().st_mtime_ns, str(coords))

    def maps(self, slide_id: str) -> list[str]:
        try:
            return self.scores(slide_id).names
        except NotFound:
            return []

    # -- verdicts -------------------------------------------------------------------------------------------------
    @property
    def verdicts(self) -> dict[tuple[str, str], dict[str, str]]:
        """Every verdict by (slide id, reviewer), reloaded when ``review/verdicts.csv`` changed since last read
        (another server on the same folder may have written it)."""
        with self._verdict_lock:
            self._refresh_verdicts()
            return dict(self._verdicts)

    def _refresh_verdicts(self) -> None:
        path = paths.verdicts_file(self.results)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._verdicts, self._verdicts_seen = {}, None
            return
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        if seen == self._verdicts_seen:
            return
        inside = self.inside(path)  # the file is replaced whole (atomic rename), so a read sees one version
        table = pd.read_csv(inside, dtype=str, keep_default_na=False)
        self._verdicts = {(r["slide_id"], r["reviewer"]): dict(r) for r in table.to_dict("records")}
        self._verdicts_seen = seen

    def slide_verdicts(self, slide_id: str) -> list[dict[str, str]]:
        self.entry(slide_id)
        return [v for (sid, _), v in self.verdicts.items() if sid == slide_id]

    def save_verdict(self, slide_id: str, reviewer: str, verdict: str, note: str) -> dict[str, str]:
        """Record one reviewer's verdict of one slide: under a cross-process lock, read ``review/verdicts.csv``,
        merge the row in and replace the file atomically."""
        self.entry(slide_id)
        reviewer = one_line(reviewer)
        if not reviewer or len(reviewer) > 80:
            raise BadRequest("a reviewer name (1–80 characters) is required")
        if verdict not in ("", *VERDICTS):
            raise BadRequest(f"verdict must be one of {', '.join(VERDICTS)}")
        if len(note) > 20000:
            raise BadRequest("note longer than 20000 characters")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        row = {"slide_id": slide_id, "reviewer": reviewer, "verdict": verdict, "note": note, "updated": now}
        path = paths.verdicts_file(self.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._verdict_lock, FileLock(paths.verdicts_lock(self.results), timeout=30):
                self._refresh_verdicts()
                merged = {**self._verdicts, (slide_id, reviewer): row}
                buffer = io.StringIO()
                writer = csv.DictWriter(buffer, VERDICT_COLUMNS, lineterminator="\n")
                writer.writeheader()
                writer.writerows(sorted(merged.values(), key=lambda r: (r["slide_id"], r["reviewer"])))
                with atomic_output(path) as tmp:
                    tmp.write_text(buffer.getvalue())
                self._refresh_verdicts()
        except Timeout as exc:
            raise Busy(f"{path} is locked by another writer") from exc
        return row


class SlideTiles:
    """A slide's deep-zoom pyramid: 256-px JPEG tiles addressed (level, column, row), edge tiles padded."""

    def __init__(self, path: str) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.osr = openslide.OpenSlide(path)
        self.dz = DeepZoomGenerator(self.osr, tile_size=TILE, overlap=0, limit_bounds=False)
        self.dimensions = self.osr.dimensions
        self.max_level = self.dz.level_count - 1
        self._blank = _encode_jpeg(Image.new("RGB", (TILE, TILE), "white"))

    def tile(self, level: int, col: int, row: int) -> bytes:
        check_tile(level, col, row, self.max_level)
        cols, rows = self.dz.level_tiles[level]
        if col >= cols or row >= rows:
            return self._blank  # inside Bokeh's tile grid, outside the slide
        image = self.dz.get_tile(level, (col, row)).convert("RGB")
        if image.size != (TILE, TILE):
            padded = Image.new("RGB", (TILE, TILE), "white")
            padded.paste(image)
            image = padded
        return _encode_jpeg(image)


def check_tile(level: int, col: int, row: int, max_level: int) -> None:
    if not (0 <= level <= max_level) or not (0 <= col < 2**level) or not (0 <= row < 2**level):
        raise BadRequest(f"tile ({level}, {col}, {row}) outside the pyramid (levels 0–{max_level})")


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@functools.lru_cache(maxsize=16)
def _slide_tiles(path: str) -> SlideTiles:
    return SlideTiles(path)


class ScoreGrid:
    """A slide's patch scores as a grid (one cell per patch step, level-0 origin), as colour-map indices."""

    def __init__(self, scores_csv: str, coords_h5: str) -> None:
        table = pd.read_csv(scores_csv)
        meta = read_coords_attrs(coords_h5)
        self.step = float(meta.step_level0 or meta.patch_size_level0)
        self.patch_size = float(meta.patch_size_level0 or self.step)
        self.names = [c[: -len(PERCENTILE_SUFFIX)] for c in table.columns if c.endswith(PERCENTILE_SUFFIX)]
        xy = table[["x", "y"]].to_numpy(np.float64)
        self.coords = xy
        gx, gy = np.round(xy[:, 0] / self.step).astype(np.int64), np.round(xy[:, 1] / self.step).astype(np.int64)
        shape = (int(gy.max()) + 1, int(gx.max()) + 1) if len(xy) else (1, 1)
        self.grids: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}
        for name in self.names:
            grid = np.full(shape, EMPTY, np.uint8)
            pct = table[percentile_column(name)].to_numpy(np.float64)
            grid[gy, gx] = np.clip(np.round(pct * (EMPTY - 1)), 0, EMPTY - 1).astype(np.uint8)
            self.grids[name] = grid
            self.values[name] = table[name].to_numpy(np.float64)

    def tile(self, name: str, cmap: str, level: int, col: int, row: int, max_level: int) -> bytes:
        """A palette PNG of the score map over tile (level, col, row) of a pyramid whose top level is
        ``max_level``: each pixel takes the patch grid cell under its centre; no patch is transparent."""
        if name not in self.grids:
            raise NotFound(name)
        check_tile(level, col, row, max_level)
        colours = palette(cmap)
        down = 2.0 ** (max_level - level)  # level-0 px per tile px
        centres = (np.arange(TILE) + 0.5) * down
        grid = self.grids[name]
        gx = np.floor((col * TILE * down + centres) / self.step).astype(np.int64)
        gy = np.floor((row * TILE * down + centres) / self.step).astype(np.int64)
        okx, oky = (gx >= 0) & (gx < grid.shape[1]), (gy >= 0) & (gy < grid.shape[0])
        cells = np.full((TILE, TILE), EMPTY, np.uint8)
        if okx.any() and oky.any():
            cells[np.ix_(oky, okx)] = grid[np.ix_(gy[oky], gx[okx])]
        image = Image.fromarray(cells, "P")
        image.putpalette(colours)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", transparency=EMPTY, compress_level=1)
        return buffer.getvalue()

    def extremes(self, name: str, k: int) -> dict[str, list[dict[str, float]]]:
        """The top-k and bottom-k patches of one map: level-0 x, y (top-left), size and score."""
        if name not in self.grids:
            raise NotFound(name)
        raw = self.values[name]
        order = np.argsort(-raw, kind="stable")
        k = min(k, len(order))
        out = {}
        for which, idx in (("top", order[:k]), ("bottom", order[::-1][:k])):
            out[which] = [
                {"x": float(self.coords[i, 0]), "y": float(self.coords[i, 1]), "size": self.patch_size,
                 "score": float(raw[i])}
                for i in idx
            ]  # fmt: skip
        return out


@functools.lru_cache(maxsize=256)
def _thumbnail(path: str, mtime_ns: int) -> bytes:
    with Image.open(path) as image:
        image.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
        return _encode_jpeg(image.convert("RGB"))


@functools.lru_cache(maxsize=32)
def _score_grid(scores_csv: str, mtime_ns: int, coords_h5: str) -> ScoreGrid:
    return ScoreGrid(scores_csv, coords_h5)


@functools.lru_cache(maxsize=len(CMAPS))
def colours(cmap: str) -> np.ndarray:
    """The colour map's 256 colours (uint8 RGB), as the heatmap PNGs use them."""
    if cmap not in CMAPS:
        raise NotFound(cmap)
    from matplotlib import colormaps

    # The heatmap PNGs' 256 colours (mambamil.heatmaps.colour_lut, not imported: it would import torch).
    return (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colour_hex(cmap: str) -> list[str]:
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colours(cmap)]


@functools.lru_cache(maxsize=len(CMAPS))
def marker_colours(cmap: str) -> tuple[str, str]:
    """Top-k and bottom-k marker colours for a colour map: the two candidates whose hue is furthest from every
    saturated colour of the map (white and black count as ``NEUTRAL_DEGREES`` away)."""
    import colorsys

    hsv = np.array([colorsys.rgb_to_hsv(*(c / 255)) for c in colours(cmap)])
    hues = hsv[(hsv[:, 1] > 0.25) & (hsv[:, 2] > 0.2), 0]

    def distance(hex_colour: str) -> float:
        h, s_, _ = colorsys.rgb_to_hsv(*(int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)))
        if s_ < 0.25:  # white or black: used only when no hue is further away
            return NEUTRAL_DEGREES
        if not len(hues):
            return 180.0
        gap = np.abs(hues - h)
        return float(np.min(np.minimum(gap, 1 - gap)) * 360)

    ranked = sorted(MARKER_CANDIDATES, key=distance, reverse=True)
    return ranked[0], ranked[1]


@functools.lru_cache(maxsize=len(CMAPS))
def palette(cmap: str) -> bytes:
    """A PNG palette: a colour map's colours at ``EMPTY`` evenly spaced positions (index i is the percentile
    i / (EMPTY − 1)), then the transparent index ``EMPTY`` (no patch)."""
    lut = colours(cmap)[np.round(np.arange(EMPTY) * 255 / (EMPTY - 1)).astype(int)]
    return np.concatenate([lut, np.zeros((256 - EMPTY, 3), np.uint8)]).tobytes()
