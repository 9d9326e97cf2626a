"""Slide-level QC as data: stubs for excluded slides and the cohort QC table.

In ``qc.on_bad_slide: exclude`` mode a per-slide stage (tile, features, order) that fails on a user-input error
writes a **QC stub** at each of its normal output paths and exits 0; the next stage, given a stub, writes its
own stub carrying the same cause. A stub is a tiny HDF5 file whose root attributes are::

    qc_status = "excluded", qc_stage = "tile" | "features" | "order", qc_cause = "<one line>", slide_id,
    slide_file, slide_size, slide_mtime_ns          (the slide file as it was when excluded; size -1: missing)

(GeoJSON/PNG side outputs of the tile stage get an empty FeatureCollection / a grey placeholder instead.)
Only properties of the slide are exclusions; conditions of the environment (:class:`~mambamil.errors.FaultError`:
I/O errors, a full disk, a file cut short, memory) fail the job instead and leave no output behind. A stub whose
slide file has since changed in size or modification time is retried by the workflow (the tile rule's
``slide_state`` parameter, Snakemake's ``params`` rerun trigger); :func:`retry_excluded` (``mambamil qc-retry``)
removes the stubs of excluded slides so the next run redoes them.
Every reader refuses a stub with :class:`SlideExcludedError`. :func:`collect_qc` gathers every slide's
outcome into ``results/qc/slides.csv`` (slide_id, case_id, status, stage, cause) and
``results/qc/patients.csv``; splits, train and the summary read them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from mambamil.errors import FaultError, InputFileError, MambamilError, SlideError, fault_from, one_line
from mambamil.fileio import atomic_output, write_json, write_png

log = logging.getLogger(__name__)

EXCLUDED = "excluded"
OK = "ok"
MODES = ("exclude", "stop")
SLIDE_COLUMNS = ["slide_id", "case_id", "status", "stage", "cause"]
PATIENT_COLUMNS = ["case_id", "n_slides", "n_usable", "status", "cause"]
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: A QC stub holds attributes only (a few KiB); a larger file is never one, and is not opened to find out.
_STUB_MAX_BYTES = 1 << 16


@dataclass(frozen=True)
class SlideStat:
    """A slide file as a stub records it: its path, size (-1: missing) and modification time (ns)."""

    file: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> SlideStat:
        """The file as it is now."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cls(str(path), -1, 0)
        return cls(str(path), int(st.st_size), int(st.st_mtime_ns))

    def describe(self) -> str:
        return "missing" if self.size < 0 else f"{self.size} bytes, mtime {self.mtime_ns / 1e9:.3f}"


@dataclass(frozen=True)
class QCOutcome:
    """Why a slide was excluded: the stage that failed and the one-line cause."""

    slide_id: str
    stage: str
    cause: str
    slide: SlideStat | None = None


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
    attrs = {"qc_status": EXCLUDED, "qc_stage": outcome.stage, "qc_cause": outcome.cause}
    if outcome.slide is not None:
        attrs.update(
            slide_file=outcome.slide.file, slide_size=outcome.slide.size, slide_mtime_ns=outcome.slide.mtime_ns
        )
    if suffix == ".geojson":
        write_json(path, {"type": "FeatureCollection", "features": [], "properties": attrs})
    elif suffix == ".png":
        write_png(path, np.full((64, 64, 3), 200, dtype=np.uint8))
    else:
        from mambamil.h5layout import write_root_attrs  # deferred: h5layout's readers refuse stubs (refuse_stub)

        write_root_attrs(path, {**attrs, "slide_id": outcome.slide_id})


def read_stub(path: str | Path) -> QCOutcome | None:
    """The outcome recorded in a QC stub, or None if ``path`` is not a stub (or does not exist); a file that cannot
    be read for a condition of the environment raises :class:`~mambamil.errors.FaultError`."""
    from mambamil.h5layout import read_root_attrs  # deferred: h5layout's readers refuse stubs (refuse_stub)

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > _STUB_MAX_BYTES or fh.read(8) != _HDF5_MAGIC:
                return None
        a = read_root_attrs(path)
        if a.get("qc_status") != EXCLUDED:
            return None
        slide = None
        if "slide_size" in a:
            slide = SlideStat(str(a["slide_file"]), int(a["slide_size"]), int(a["slide_mtime_ns"]))
        return QCOutcome(str(a.get("slide_id", path.stem)), str(a["qc_stage"]), str(a["qc_cause"]), slide)
    except OSError as exc:
        if (fault := fault_from(exc, path)) is not None:  # unreadable (EIO, ESTALE, EACCES...): a fault, not an output
            raise fault from exc
        return None


def refuse_stub(path: str | Path) -> None:
    """Raise :class:`SlideExcludedError` if ``path`` is a QC stub; every bag/coords/order reader calls this."""
    outcome = read_stub(path)
    if outcome is not None:
        raise SlideExcludedError(path, outcome)


# -- one slide's stage, guarded -----------------------------------------------------------------------------
T = TypeVar("T")


def exclusion_cause(exc: BaseException, slide_inputs: Iterable[str | Path]) -> QCOutcome | None:
    """The outcome if ``exc`` is a slide-level failure (bad slide, stub, or bad per-slide input file), else None.

    Config errors, a missing encoder checkpoint and other cohort-wide problems are not exclusions."""
    if isinstance(exc, SlideExcludedError):
        return exc.outcome
    if isinstance(exc, SlideError):
        return QCOutcome(exc.slide_id or Path(exc.slide).stem, "", one_line(exc.cause))
    if isinstance(exc, InputFileError):
        inputs = {str(Path(p).resolve()) for p in slide_inputs}
        if str(Path(exc.path).resolve()) in inputs:
            return QCOutcome("", "", one_line(f"{Path(exc.path).name}: {exc.cause}"))
    return None


def _snapshot(paths: list[Path]) -> dict[Path, tuple[int, int] | None]:
    out = {}
    for p in paths:
        try:
            st = p.stat()
            out[p] = (st.st_ino, st.st_mtime_ns)
        except OSError:
            out[p] = None
    return out


def _remove_new(before: dict[Path, tuple[int, int] | None]) -> None:
    """Remove the outputs written since ``before`` (a failed stage leaves no partial set of outputs)."""
    for path, was in before.items():
        if _snapshot([path])[path] != was:
            path.unlink(missing_ok=True)


def run_slide_stage(
    stage: str,
    slide_id: str,
    outputs: Iterable[str | Path],
    slide_inputs: Iterable[str | Path],
    on_bad_slide: str,
    work: Callable[[], T],
    slide_file: str | Path | None = None,
) -> T | QCOutcome:
    """Run one slide's ``work``; in ``exclude`` mode a slide-level failure writes a QC stub at every output and
    returns the :class:`QCOutcome` (a stub input passes its outcome on). In ``stop`` mode the error propagates.

    A condition of the environment (a :class:`FaultError`, or an OSError/MemoryError that is one: disk full,
    EIO, ESTALE, EACCES, EMFILE, ...) is never an exclusion: the outputs this call wrote are removed and the
    :class:`FaultError` propagates, one line naming the path. ``slide_file``: the slide, recorded in stubs (its
    size and mtime)."""
    if on_bad_slide not in MODES:
        raise MambamilError(f"--on-bad-slide must be one of {MODES}, got {on_bad_slide!r}")
    slide_inputs = list(slide_inputs)
    outputs = [Path(p) for p in outputs]
    before = _snapshot(outputs)
    where = outputs[0].parent if outputs else None
    try:
        return work()
    except FaultError:
        _remove_new(before)
        raise
    except MambamilError as exc:
        found = exclusion_cause(exc, slide_inputs)
        if on_bad_slide == "stop" or found is None:
            raise
        slide = SlideStat.of(slide_file) if slide_file is not None else found.slide
        outcome = QCOutcome(slide_id, found.stage or stage, found.cause, slide)
        try:
            for path in outputs:
                write_stub(path, outcome)
        except (OSError, MemoryError) as err:
            _remove_new(before)
            raise (fault_from(err, where) or err) from exc
        log.warning("%s: excluded by QC at the %s stage: %s", slide_id, outcome.stage, outcome.cause)
        print(f"{slide_id}: EXCLUDED by QC ({outcome.stage}): {outcome.cause}")
        return outcome
    except Exception as exc:  # an OSError/MemoryError (or HDF5's errno in a RuntimeError) that is a fault
        fault = fault_from(exc, where)
        if fault is None:
            raise
        _remove_new(before)
        raise fault from exc


# -- retrying excluded slides -------------------------------------------------------------------------------
def stage_stubs(results: str | Path) -> dict[str, list[Path]]:
    """slide_id → every QC stub under a results folder: tile coordinates, features (every encoder) and orders."""
    from mambamil.paths import features_dir, order_dir, tiles_dir

    results = Path(results)
    candidates = [*sorted(tiles_dir(results).glob("*.h5"))]
    for enc in sorted(p for p in features_dir(results, "").glob("*") if p.is_dir()):
        candidates += sorted(enc.glob("*.h5")) + sorted(enc.glob(str(order_dir("", "*") / "*.npy")))
    found: dict[str, list[Path]] = {}
    for path in candidates:
        if read_stub(path) is not None:
            found.setdefault(path.stem, []).append(path)
    return found


def retry_excluded(results: str | Path, cause: str | None = None, dry_run: bool = False) -> dict[str, str]:
    """Remove the QC stubs, at every stage, of each excluded slide (those whose cause matches the regular
    expression ``cause``, case-insensitive), with the tile stage's side outputs, so the next workflow run redoes
    them and everything downstream. slide_id → 'stage: cause' of the slides retried (to be, with ``dry_run``)."""
    from mambamil.paths import tile_outputs, tiles_dir

    try:
        pattern = re.compile(cause, re.IGNORECASE) if cause else None
    except re.error as exc:
        raise MambamilError(f"--cause {cause!r} is not a regular expression: {exc}") from exc
    retried = {}
    for sid, stubs in sorted(stage_stubs(results).items()):
        first = read_stub(stubs[0])
        if first is None or (pattern is not None and not pattern.search(first.cause)):
            continue
        retried[sid] = f"{first.stage}: {first.cause}"
        if dry_run:
            continue
        tile = tile_outputs(tiles_dir(results), sid)
        if tile["coords"] in stubs:
            stubs = [*stubs, tile["tissue"], tile["preview"]]
        for path in stubs:
            Path(path).unlink(missing_ok=True)
    return retried


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


def drop_excluded(
    features: dict[str, Path], labels: pd.DataFrame, qc_table: str | Path | None = None
) -> tuple[dict[str, Path], pd.DataFrame]:
    """``features`` (slide_id → feature file) and label rows without the slides QC excluded (those of
    ``qc_table``, else the QC stubs among ``features``), each excluded slide and lost patient logged as a warning."""
    if qc_table:
        excluded = excluded_slides(read_qc_table(qc_table))
    else:
        excluded = {sid: f"{o.stage}: {o.cause}" for sid, p in features.items() if (o := read_stub(p)) is not None}
    if not excluded:
        return features, labels
    for sid, why in sorted(excluded.items()):
        log.warning("slide %s EXCLUDED by QC (%s)", sid, why)
    kept = labels[~labels["slide_id"].isin(excluded)]
    lost = sorted(set(labels["case_id"].astype(str)) - set(kept["case_id"].astype(str)))
    if lost:
        log.warning("%d patient(s) EXCLUDED, no usable slide: %s", len(lost), lost[:20])
    return {sid: p for sid, p in features.items() if sid not in excluded}, kept


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
