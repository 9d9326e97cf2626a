"""Input sheets: the slide sheet and the label sheet (CSV), validated with errors that name the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mambamil.errors import InputFileError


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


def _duplicates(series: pd.Series) -> list[str]:
    return sorted(series[series.duplicated()].astype(str).unique().tolist())


def read_slide_sheet(path: str | Path) -> pd.DataFrame:
    """Columns ``slide_id``, ``path`` (relative paths are relative to the sheet's folder), optional ``mpp``
    (µm/px override) and ``case_id`` (defaults to ``slide_id``). Returns absolute paths, one row per slide."""
    path = Path(path)
    df = _read_csv(path, "slide sheet")
    _require(df, path, ["slide_id", "path"], "slide sheet")
    if df["slide_id"].isna().any() or df["path"].isna().any():
        rows = (df.index[df["slide_id"].isna() | df["path"].isna()] + 2).tolist()
        raise InputFileError(path, f"empty slide_id or path on line(s) {rows}")
    dups = _duplicates(df["slide_id"])
    if dups:
        raise InputFileError(path, f"duplicate slide_id(s) {dups}")
    bad = [s for s in df["slide_id"] if "/" in s or s.startswith(".")]
    if bad:
        raise InputFileError(path, f"slide_id(s) {bad} cannot be used as file names")
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
    dups = _duplicates(df["slide_id"])
    if dups:
        raise InputFileError(path, f"duplicate slide_id(s) {dups}")
    if "event" not in df.columns and "censorship" in df.columns:
        df["event"] = 1 - pd.to_numeric(df["censorship"], errors="coerce")
    if "time" in df.columns:
        if "event" not in df.columns:
            raise InputFileError(path, "label sheet has 'time' but neither 'event' nor 'censorship'")
        df["time"] = pd.to_numeric(df["time"], errors="coerce")
        df["event"] = pd.to_numeric(df["event"], errors="coerce")
        bad = df.loc[~df["event"].isin([0, 1]) | df["time"].isna() | (df["time"] < 0), "slide_id"].tolist()
        if bad:
            raise InputFileError(path, f"invalid time/event for slide(s) {bad[:10]} (time >= 0, event in {{0, 1}})")
        df["event"] = df["event"].astype(int)
    if "label" not in df.columns and "time" not in df.columns:
        raise InputFileError(path, "label sheet needs 'label' (subtyping) or 'time' + 'event' (survival)")
    return df.set_index("slide_id", drop=False)
