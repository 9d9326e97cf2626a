"""Many slides in one process: the encoder, its weights' hash and the device are set up once, then each slide is
extracted exactly as alone (:func:`~mambamil.features.extract.extract_slide`: same output path, same
fingerprint-based skip, atomic write). One slide's bad input is reported on one line naming that slide and
the others still run; :func:`run_slide` is the one place that decides what a failed slide becomes.

Slides come from the command line or a slide sheet; ``--shard i/k`` (:func:`shard`) takes every k-th row
starting at row i, so k array jobs split a cohort without overlap.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mambamil.errors import MambamilError, SlideError
from mambamil.features.encoders import create_encoder
from mambamil.features.extract import FeatureResult, FeatureSettings, extract_slide, resolve_device
from mambamil.sheets import read_slide_sheet

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SlideJob:
    """One slide to embed: its file, the tile stage's coordinates, the output path and (optional) id."""

    slide: Path
    coords: Path
    out: Path
    slide_id: str | None = None


@dataclass
class SlideOutcome:
    """What became of a slide: a result, or the one-line error (``status`` ``done`` | ``skipped`` | ``failed``)."""

    job: SlideJob
    result: FeatureResult | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "skipped" if self.result is not None and self.result.skipped else "done"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/k"`` → (i, k) with 0 ≤ i < k."""
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise MambamilError(f"--shard {text!r}: expected i/k with integers, e.g. 0/4") from exc
    if not (k >= 1 and 0 <= i < k):
        raise MambamilError(f"--shard {text!r}: need 0 <= i < k")
    return i, k


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Rows ``index``, ``index + count``, … of ``items``: the k shards are disjoint and cover every row."""
    return list(items[index::count])


def jobs_from_sheet(sheet: str | Path, coords_dir: str | Path, out_dir: str | Path) -> list[SlideJob]:
    """A job per row of the slide sheet: ``<coords_dir>/<slide_id>.h5`` → ``<out_dir>/<slide_id>.h5``."""
    rows = read_slide_sheet(sheet)
    return [
        SlideJob(Path(p), Path(coords_dir) / f"{sid}.h5", Path(out_dir) / f"{sid}.h5", sid)
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


def run_slide(job: SlideJob, extract: Callable[[SlideJob], FeatureResult]) -> SlideOutcome:
    """Extract one slide; its failure becomes a one-line error naming the slide, and the caller goes on.

    The one place that decides what a failed slide becomes (a QC mode may record it as excluded here)."""
    try:
        return SlideOutcome(job, result=extract(job))
    except MambamilError as exc:
        error = " ".join(str(exc).split())
    except Exception as exc:  # an unexpected failure still names its slide; the other slides run
        name = job.slide_id or job.slide.stem
        error = " ".join(str(SlideError(job.slide, f"unexpected error: {type(exc).__name__}: {exc}", name)).split())
        log.debug("slide %s failed", name, exc_info=True)
    print(f"mambamil features: error: {error}", file=sys.stderr, flush=True)
    return SlideOutcome(job, error=error)


def extract_slides(
    jobs: Sequence[SlideJob],
    settings: FeatureSettings,
    force: bool = False,
    progress: bool = True,
    profile: bool = False,
    on_done: Callable[[SlideOutcome], None] | None = None,
) -> list[SlideOutcome]:
    """Embed every job's slide with one encoder on one device; one outcome per job, in order."""
    resolve_device(settings.device)  # a bad device fails the whole job, once
    encoder = create_encoder(settings.encoder, settings.weights, **settings.encoder_kwargs)  # once, with its hash

    def extract(job: SlideJob) -> FeatureResult:
        return extract_slide(
            job.slide, job.coords, job.out, settings, job.slide_id, progress, force, encoder, profile=profile
        )

    outcomes = []
    for job in jobs:
        outcome = run_slide(job, extract)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes
