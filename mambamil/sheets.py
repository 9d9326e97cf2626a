"""Input sheets: the slide sheet and the label sheet (CSV), validated with errors that name the rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mambamil.columns import LABEL_COLUMN
from mambamil.errors import ConfigError, InputFileError, MambamilError

log = logging.getLogger(__name__)


def _read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, f"{what} not found")
    try:
        df = pd.read_csv(path, dtype={"slide_id": str, "case_id": str, "path": str, "label": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"{what} is not a readable CSV ({str(exc).splitlines()[0]})") from exc
    df.columns = [c.strip() for c in df.columns]
    return df


def _require(df: pd.DataFrame, path: Path, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputFileError(path, f"{what} lacks column(s) {missing}; has {list(df.columns)}")


def _line(index: int) -> int:
    """The CSV line of a row (line 1 is the header)."""
    return int(index) + 2


def _lines(index) -> str:
    lines = [_line(i) for i in index]
    return f"line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines[:10]))}{' …' if len(lines) > 10 else ''}"


def _duplicate_problems(df: pd.DataFrame, column: str) -> list[str]:
    """One problem per duplicated id, with every line it is on."""
    dup = df[df[column].duplicated(keep=False) & df[column].notna()]
    return [f"duplicate {column}(s) {[key]} on {_lines(rows.index)}" for key, rows in dup.groupby(column, sort=True)]


def _raise_all(path: Path, problems: list[str]) -> None:
    """One error listing every problem of a file (the CLI prints it on one line)."""
    if len(problems) == 1:
        raise InputFileError(path, problems[0])
    if problems:
        raise InputFileError(path, f"{len(problems)} problems: " + "; ".join(problems))


def read_slide_sheet(path: str | Path) -> pd.DataFrame:
    """Columns ``slide_id``, ``path`` (relative paths are relative to the sheet's folder), optional ``mpp``
    (µm/px override) and ``case_id`` (defaults to ``slide_id``). Returns absolute paths, one row per slide."""
    path = Path(path)
    df = _read_csv(path, "slide sheet")
    _require(df, path, ["slide_id", "path"], "slide sheet")
    problems = []
    empty = df["slide_id"].isna() | df["path"].isna()
    if empty.any():
        problems.append(f"empty slide_id or path on {_lines(df.index[empty])}")
    problems += _duplicate_problems(df, "slide_id")
    ids = df["slide_id"].fillna("")
    bad = ids.str.contains("/", regex=False) | ids.str.startswith(".")
    if bad.any():
        problems.append(f"slide_id(s) {ids[bad].tolist()} on {_lines(df.index[bad])} cannot be used as file names")
    _raise_all(path, problems)
    base = path.resolve().parent
    df["path"] = [str(p if Path(p).is_absolute() else (base / p)) for p in df["path"]]
    if "mpp" not in df.columns:
        df["mpp"] = np.nan
    df["mpp"] = pd.to_numeric(df["mpp"], errors="coerce")
    if "case_id" not in df.columns:
        df["case_id"] = df["slide_id"]
    df["case_id"] = df["case_id"].fillna(df["slide_id"])
    return df.set_index("slide_id", drop=False)


def read_label_sheet(path: str | Path) -> pd.DataFrame:
    """Columns ``case_id``, ``slide_id`` and ``label`` (subtyping) and/or ``time`` with ``event``
    (1 = event observed) or CLAM/MambaMIL's ``censorship`` (= 1 − event). Returns ``event`` always."""
    path = Path(path)
    df = _read_csv(path, "label sheet")
    _require(df, path, ["case_id", "slide_id"], "label sheet")
    problems = _duplicate_problems(df, "slide_id")
    if "event" not in df.columns and "censorship" in df.columns:
        df["event"] = 1 - pd.to_numeric(df["censorship"], errors="coerce")
    if "time" in df.columns:
        if "event" not in df.columns:
            raise InputFileError(path, "label sheet has 'time' but neither 'event' nor 'censorship'")
        raw = df[["time", "event"]].astype(str)
        df["time"] = pd.to_numeric(df["time"], errors="coerce")
        df["event"] = pd.to_numeric(df["event"], errors="coerce")
        for i, row in df.iterrows():
            where = f"line {_line(i)} (slide {row['slide_id']})"
            if pd.isna(row["time"]) or row["time"] < 0:
                problems.append(f"{where}: time {raw.loc[i, 'time']!r} is not a number >= 0")
            if row["event"] not in (0, 1):
                problems.append(f"{where}: event {raw.loc[i, 'event']!r} is not 0 or 1")
    if "label" not in df.columns and "time" not in df.columns:
        problems.append("label sheet needs 'label' (subtyping) or 'time' + 'event' (survival)")
    _raise_all(path, problems)
    if "event" in df.columns and "time" in df.columns:
        df["event"] = df["event"].astype(int)
    return df.set_index("slide_id", drop=False)


def sheet_problems(slides: pd.DataFrame, labels: pd.DataFrame, tasks: dict | None = None) -> list[str]:
    """Every disagreement between a read slide sheet and label sheet, with label-sheet lines: label rows whose
    slide is not in the slide sheet, slides without a label row, slide files that do not exist, and labels
    outside a classification task's ``classes``."""
    problems = []
    unknown = ~labels["slide_id"].isin(slides["slide_id"])
    if unknown.any():
        problems.append(
            f"label sheet: slide_id(s) {labels.loc[unknown, 'slide_id'].tolist()[:10]} on "
            f"{_lines(np.flatnonzero(unknown))} are not in the slide sheet"
        )
    unlabelled = ~slides["slide_id"].isin(labels["slide_id"])
    if unlabelled.any():
        problems.append(
            f"slide sheet: slide_id(s) {slides.loc[unlabelled, 'slide_id'].tolist()[:10]} on "
            f"{_lines(np.flatnonzero(unlabelled))} have no row in the label sheet"
        )
    missing = ~slides["path"].map(lambda p: Path(p).exists())
    if missing.any():
        problems.append(
            f"slide sheet: file(s) {slides.loc[missing, 'path'].tolist()[:5]} on "
            f"{_lines(np.flatnonzero(missing))} do not exist"
        )
    for name, task in (tasks or {}).items():
        column = task.get("label_column", LABEL_COLUMN)
        if task.get("type") != "classification" or column not in labels.columns:
            continue
        values = labels[column]
        outside = values.notna() & ~values.astype(str).isin([str(c) for c in task.get("classes", [])])
        if outside.any():
            problems.append(
                f"label sheet: task '{name}': {column} value(s) {sorted(set(values[outside].astype(str)))} on "
                f"{_lines(np.flatnonzero(outside))} are not in classes {task.get('classes')}"
            )
    return problems


def check_sheets(config: dict) -> None:
    """Read the config's slide and label sheets and cross-check them; one :class:`ConfigError` lists every
    problem found in either."""
    problems, sheets = [], {}
    for key, reader in (("slides", read_slide_sheet), ("labels", read_label_sheet)):
        try:
            sheets[key] = reader(config[key])
        except MambamilError as exc:
            problems.append(str(exc))
    if len(sheets) == 2:
        problems += sheet_problems(sheets["slides"], sheets["labels"], config.get("tasks"))
    if problems:
        raise ConfigError(f"{len(problems)} sheet problem(s): " + " | ".join(problems))
    log.info("%d slides, %d labelled slides", len(sheets["slides"]), len(sheets["labels"]))
