"""Slide-level QC as data: stubs for excluded slides and the cohort QC table.

In ``qc.on_bad_slide: exclude`` mode a per-slide stage (tile, features, order) that fails on a user-input error
writes a **QC stub** at each of its normal output paths and exits 0; the next stage, given a stub, writes its
own stub carrying the same cause. A stub is a tiny HDF5 file whose root attributes are::

    qc_status = "excluded", qc_stage = "tile" | "features" | "order", qc_cause = "<one line>", slide_id

(GeoJSON/PNG side outputs of the tile stage get an empty FeatureCollection / a grey placeholder instead.)
Every reader refuses a stub with :class:`SlideExcludedError`. :func:`collect_qc` gathers every slide's
outcome into ``results/qc/slides.csv`` (slide_id, case_id, status, stage, cause) and
``results/qc/patients.csv``; splits, train and the summary read them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np
import pandas as pd

from mambamil.errors import InputFileError, MambamilError, SlideError
from mambamil.fileio import atomic_output, write_json, write_png

log = logging.getLogger(__name__)

EXCLUDED = "excluded"
OK = "ok"
MODES = ("exclude", "stop")
SLIDE_COLUMNS = ["slide_id", "case_id", "status", "stage", "cause"]
PATIENT_COLUMNS = ["case_id", "n_slides", "n_usable", "status", "cause"]
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class QCOutcome:
    """Why a slide was excluded: the stage that failed and the one-line cause."""

    slide_id: str
    stage: str
    cause: str


class SlideExcludedError(MambamilError):
    """A stage was given a QC stub: the slide was excluded upstream."""

    def __init__(self, path: str | Path, outcome: QCOutcome) -> None:
        self.path = str(path)
        self.outcome = outcome
        super().__init__(
            f"{path}: slide '{outcome.slide_id}' was excluded by QC at the {outcome.stage} stage: {outcome.cause}"
        )


# -- stubs --------------------------------------------------------------------------------------------------
def write_stub(path: str | Path, outcome: QCOutcome) -> None:
    """Write the QC stub of ``outcome`` at ``path`` (atomically); the format follows the path's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".geojson":
        props = {"qc_status": EXCLUDED, "qc_stage": outcome.stage, "qc_cause": outcome.cause}
        write_json(path, {"type": "FeatureCollection", "features": [], "properties": props})
    elif suffix == ".png":
        write_png(path, np.full((64, 64, 3), 200, dtype=np.uint8))
    else:
        with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["qc_status"] = EXCLUDED
            f.attrs["qc_stage"] = outcome.stage
            f.attrs["qc_cause"] = outcome.cause
            f.attrs["slide_id"] = outcome.slide_id


def read_stub(path: str | Path) -> QCOutcome | None:
    """The outcome recorded in a QC stub, or None if ``path`` is not a stub (or does not exist)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _HDF5_MAGIC:
                return None
        with h5py.File(path, "r") as f:
            if f.attrs.get("qc_status") != EXCLUDED:
                return None
            return QCOutcome(
                str(f.attrs.get("slide_id", path.stem)), str(f.attrs["qc_stage"]), str(f.attrs["qc_cause"])
            )
    except OSError:
        return None


def refuse_stub(path: str | Path) -> None:
    """Raise :class:`SlideExcludedError` if ``path`` is a QC stub; every bag/coords/order reader calls this."""
    outcome = read_stub(path)
    if outcome is not None:
        raise SlideExcludedError(path, outcome)


# -- one slide's stage, guarded -----------------------------------------------------------------------------
T = TypeVar("T")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def exclusion_cause(exc: BaseException, slide_inputs: Iterable[str | Path]) -> QCOutcome | None:
    """The outcome if ``exc`` is a slide-level failure (bad slide, stub, or bad per-slide input file), else None.

    Config errors, a missing encoder checkpoint and other cohort-wide problems are not exclusions."""
    if isinstance(exc, SlideExcludedError):
        return exc.outcome
    if isinstance(exc, SlideError):
        return QCOutcome(exc.slide_id or Path(exc.slide).stem, "", _one_line(exc.cause))
    if isinstance(exc, InputFileError):
        inputs = {str(Path(p).resolve()) for p in slide_inputs}
        if str(Path(exc.path).resolve()) in inputs:
            return QCOutcome("", "", _one_line(f"{Path(exc.path).name}: {exc.cause}"))
    return None


def run_slide_stage(
    stage: str,
    slide_id: str,
    outputs: Iterable[str | Path],
    slide_inputs: Iterable[str | Path],
    on_bad_slide: str,
    work: Callable[[], T],
) -> T | QCOutcome:
    """Run one slide's ``work``; in ``exclude`` mode a slide-level failure writes a QC stub at every output and
    returns the :class:`QCOutcome` (a stub input passes its outcome on). In ``stop`` mode the error propagates."""
    if on_bad_slide not in MODES:
        raise MambamilError(f"--on-bad-slide must be one of {MODES}, got {on_bad_slide!r}")
    slide_inputs = list(slide_inputs)
    try:
        return work()
    except MambamilError as exc:
        found = exclusion_cause(exc, slide_inputs)
        if on_bad_slide == "stop" or found is None:
            raise
        outcome = QCOutcome(slide_id, found.stage or stage, found.cause)
        for path in outputs:
            write_stub(path, outcome)
        log.warning("%s: excluded by QC at the %s stage: %s", slide_id, outcome.stage, outcome.cause)
        print(f"{slide_id}: EXCLUDED by QC ({outcome.stage}): {outcome.cause}")
        return outcome


# -- the cohort table ---------------------------------------------------------------------------------------
def slide_outcome(slide_id: str, stage_files: Iterable[str | Path]) -> QCOutcome | None:
    """The first QC stub among one slide's stage outputs (tile → features → order), or None when all are real."""
    for path in stage_files:
        outcome = read_stub(path)
        if outcome is not None:
            return QCOutcome(slide_id, outcome.stage, outcome.cause)
    return None


def collect_qc(slide_cases: dict[str, str], stage_files: dict[str, list[Path]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The slide table (slide_id, case_id, status, stage, cause) and the patient table (case_id, n_slides,
    n_usable, status, cause) from every slide's stage outputs. A patient with no usable slide is excluded."""
    rows = []
    for sid, case in slide_cases.items():
        outcome = slide_outcome(sid, stage_files.get(sid, []))
        if outcome is None:
            rows.append((sid, case, OK, "", ""))
        else:
            rows.append((sid, case, EXCLUDED, outcome.stage, outcome.cause))
    slides = pd.DataFrame(rows, columns=SLIDE_COLUMNS)
    patients = []
    for case, group in slides.groupby("case_id", sort=True):
        usable = int((group["status"] == OK).sum())
        bad = group[group["status"] != OK]
        if usable:
            patients.append((case, len(group), usable, OK, ""))
        else:
            causes = "; ".join(f"{r.slide_id}: {r.cause}" for r in bad.itertuples())
            patients.append((case, len(group), 0, EXCLUDED, f"no usable slide ({causes})"))
    return slides, pd.DataFrame(patients, columns=PATIENT_COLUMNS)


def write_table(path: str | Path, table: pd.DataFrame) -> None:
    """Write a QC table atomically."""
    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False)


def read_qc_table(path: str | Path) -> pd.DataFrame:
    """Read ``results/qc/slides.csv``; :class:`InputFileError` if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "QC table not found (run the qc rule)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SLIDE_COLUMNS if c not in df.columns]
    if missing:
        raise InputFileError(path, f"QC table lacks column(s) {missing}")
    return df


def excluded_slides(qc: pd.DataFrame | None) -> dict[str, str]:
    """slide_id → 'stage: cause' of every excluded slide of a QC table (empty for None)."""
    if qc is None:
        return {}
    bad = qc[qc["status"] == EXCLUDED]
    return {r.slide_id: f"{r.stage}: {r.cause}" for r in bad.itertuples()}


def qc_counts(qc: pd.DataFrame) -> dict[str, int]:
    """Slides and patients used / excluded, for the evaluation summary."""
    ok = qc["status"] == OK
    cases_ok = set(qc.loc[ok, "case_id"])
    cases = set(qc["case_id"])
    return {
        "n_slides_used": int(ok.sum()),
        "n_slides_excluded": int((~ok).sum()),
        "n_patients_used": len(cases_ok),
        "n_patients_excluded": len(cases - cases_ok),
    }


def exclusion_report(qc: pd.DataFrame) -> str:
    """A loud, multi-line summary of excluded slides ('' when none)."""
    bad = qc[qc["status"] == EXCLUDED]
    if bad.empty:
        return ""
    lines = [f"QC: {len(bad)} of {len(qc)} slide(s) EXCLUDED:"]
    lines += [f"  {r.slide_id} (patient {r.case_id}) at {r.stage}: {r.cause}" for r in bad.itertuples()]
    return "\n".join(lines)
