"""Many slides in one process: the encoder, its weights' hash and the device are set up once, then each slide is
extracted exactly as alone (:func:`~mambamil.features.extract.extract_slide`: same output path, same
fingerprint-based skip, atomic write). One slide's bad input is reported on one line naming that slide and
the others still run; :func:`run_slide` is the one place that decides what a failed slide becomes.

Slides come from the command line or a slide sheet; ``--shard i/k`` takes every k-th row
starting at row i (:func:`mambamil.slide_jobs.shard`), so k array jobs split a cohort without overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mambamil.device import resolve_device
from mambamil.errors import MambamilError
from mambamil.features.encoders import TimmOverrides, create_encoder
from mambamil.features.extract import FeatureResult, FeatureSettings, extract_slide
from mambamil.paths import feature_file, tile_outputs
from mambamil.qc import QCOutcome, run_slide_stage
from mambamil.sheets import read_slide_sheet
from mambamil.slide_jobs import run_guarded


@dataclass(frozen=True)
class SlideJob:
    """One slide to embed: its file, the tile stage's coordinates, the output path and (optional) id."""

    slide: Path
    coords: Path
    out: Path
    slide_id: str | None = None


@dataclass
class SlideOutcome:
    """What became of a slide: a result, its QC exclusion, or the one-line error (``status`` ``done`` |
    ``skipped`` | ``excluded`` | ``failed``)."""

    job: SlideJob
    result: FeatureResult | QCOutcome | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        if isinstance(self.result, QCOutcome):
            return "excluded"
        return "skipped" if self.result is not None and self.result.skipped else "done"


def jobs_from_sheet(sheet: str | Path, coords_dir: str | Path, out_dir: str | Path) -> list[SlideJob]:
    """A job per row of the slide sheet: ``<coords_dir>/<slide_id>.h5`` → ``<out_dir>/<slide_id>.h5``."""
    rows = read_slide_sheet(sheet)
    return [
        SlideJob(Path(p), tile_outputs(coords_dir, sid)["coords"], feature_file(out_dir, sid), sid)
        for sid, p in zip(rows["slide_id"], rows["path"], strict=True)
    ]


def jobs_from_lists(
    slides: Sequence[Path], coords: Sequence[Path], outs: Sequence[Path], slide_ids: Sequence[str] | None = None
) -> list[SlideJob]:
    """Jobs from parallel lists (the command line); the lists must have one entry per slide."""
    n = len(slides)
    for name, values in (("--coords", coords), ("--out", outs), ("--slide-id", slide_ids)):
        if values is not None and len(values) != n:
            raise MambamilError(f"{name} has {len(values)} value(s) for {n} slide(s): give one per slide")
    ids = list(slide_ids) if slide_ids is not None else [None] * n
    return [SlideJob(Path(s), Path(c), Path(o), i) for s, c, o, i in zip(slides, coords, outs, ids, strict=True)]


def run_slide(job: SlideJob, extract: Callable[[SlideJob], FeatureResult | QCOutcome]) -> SlideOutcome:
    """Extract one slide; its failure becomes a one-line error naming the slide, and the caller goes on.

    The one place that decides what a failed features slide becomes (a QC mode may record it as excluded here)."""
    result, error = run_guarded("features", job.slide_id or job.slide.stem, job.slide, lambda: extract(job))
    return SlideOutcome(job, result=result, error=error)


def extract_slides(
    jobs: Sequence[SlideJob],
    settings: FeatureSettings,
    force: bool = False,
    progress: bool = True,
    profile: bool = False,
    on_done: Callable[[SlideOutcome], None] | None = None,
    isolate_failures: bool = True,
    on_bad_slide: str = "stop",
) -> list[SlideOutcome]:
    """Embed every job's slide with one encoder on one device; one outcome per job, in order.

    ``isolate_failures=False`` lets a slide's error propagate (a single-slide call: its error is the command's).
    ``on_bad_slide="exclude"`` records a bad slide as excluded (a QC stub at its output, :mod:`mambamil.qc`)."""
    resolve_device(settings.device)  # a bad device fails the whole job, once
    overrides = TimmOverrides.of(settings)
    encoder = create_encoder(settings.encoder, settings.weights, overrides=overrides, **settings.encoder_kwargs)  # once

    def extract(job: SlideJob) -> FeatureResult | QCOutcome:
        return run_slide_stage(
            "features",
            job.slide_id or job.coords.stem,
            [job.out],
            [job.slide, job.coords],
            on_bad_slide,
            lambda: extract_slide(
                job.slide, job.coords, job.out, settings, job.slide_id, progress, force, encoder, profile=profile
            ),
            slide_file=job.slide,
        )

    outcomes = []
    for job in jobs:
        outcome = run_slide(job, extract) if isolate_failures else SlideOutcome(job, result=extract(job))
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes
