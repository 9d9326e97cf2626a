"""Atomic file output: write to a temporary name in the same folder, rename when complete."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On any exception the temporary file is removed, so a crash never leaves a half-written output.
    The temporary name keeps the suffix, so libraries that infer a format from it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def write_png(path: str | Path, rgb: Any) -> None:
    """Write an RGB uint8 array as PNG atomically."""
    import cv2

    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), rgb[..., ::-1]):
            raise OSError(f"could not write {path}")
