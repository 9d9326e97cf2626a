"""Atomic file output: write to a temporary name in the same folder, rename when complete."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mambamil.errors import errno_in_message


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
        with _write_errors_raised(path):
            yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        # Name the output (h5py's errors do not, and HDF5 may report a full disk only in a RuntimeError's text).
        code = exc.errno if isinstance(exc, OSError) and not exc.filename else errno_in_message(exc)
        if code:
            raise OSError(code, f"{os.strerror(code)} while writing {path}", str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _write_errors_raised(path: Path) -> Iterator[None]:
    """Raise, as an OSError with its errno, a write error that a library reported only as an ignored exception:
    h5py flushes a file's last metadata while it closes and, on a full disk, prints "Exception ignored ... errno =
    28" (with a traceback, to stderr) and goes on, which would rename an incomplete file into place. What reaches
    stderr meanwhile is held back, and dropped when it was that report (the error is then one line, raised here)."""
    codes: list[int] = []
    previous, stderr = sys.unraisablehook, sys.stderr

    def hook(unraisable: Any) -> None:
        code = errno_in_message(unraisable.exc_value)
        if code:
            codes.append(code)
        else:
            previous(unraisable)

    held = io.StringIO()
    sys.unraisablehook, sys.stderr = hook, held
    try:
        yield
    finally:
        sys.unraisablehook, sys.stderr = previous, stderr
        if not codes and held.getvalue():
            stderr.write(held.getvalue())
    if codes:
        raise OSError(codes[0], f"{os.strerror(codes[0])} while writing {path}", str(path))


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

    ok, data = cv2.imencode(".png", rgb[..., ::-1])
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    with atomic_output(path) as tmp:
        tmp.write_bytes(data.tobytes())  # Python's write, so a full disk reports its errno (cv2.imwrite says False)
