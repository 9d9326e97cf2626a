"""User-facing errors: one line that names the file and the cause."""

from __future__ import annotations

import errno
import re
from pathlib import Path


class MambamilError(Exception):
    """An error caused by the user's input; the CLI prints it as one line, no traceback."""


class SlideError(MambamilError):
    """A slide could not be opened, read or processed."""

    def __init__(self, slide: str | Path, cause: str, slide_id: str | None = None) -> None:
        self.slide = str(slide)
        self.slide_id = slide_id
        self.cause = cause
        name = f"slide '{slide_id}' ({slide})" if slide_id else f"slide {slide}"
        super().__init__(f"{name}: {cause}")


class ConfigError(MambamilError):
    """The config file or one of the input sheets is invalid."""


class InputFileError(MambamilError):
    """An input file (coords, features, sheet, checkpoint) is missing or malformed."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")


class CheckpointError(InputFileError, ValueError):
    """A model checkpoint is missing, unreadable, or lacks what is needed to rebuild its model."""


class FaultError(MambamilError):
    """A condition of the environment, not a property of the input: an I/O error, a stale network file handle, a
    full disk, a refused permission, too many open files, memory run out, a killed reader process, a file cut short
    or changed underneath the job. The job fails (exit status :data:`FAULT_EXIT`) so that Snakemake's ``--retries``
    or the cluster retry it; it is never a QC exclusion (README "Bad slides and QC")."""

    def __init__(self, what: str | Path, cause: str) -> None:
        self.path = str(what)
        self.cause = cause
        super().__init__(f"{what}: {cause}")


#: Exit status of a job that failed on a :class:`FaultError` (EX_TEMPFAIL of sysexits.h: "try again later").
FAULT_EXIT = 75

#: errno → what it means and what to do, for the conditions of the environment that fail a job.
FAULT_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on device (disk full): free space or write results elsewhere, then rerun",
    errno.EDQUOT: "disk quota exceeded: free space or raise the quota, then rerun",
    errno.EIO: "I/O error (storage or network file system fault): rerun (retry)",
    errno.ESTALE: "stale file handle (network file system): rerun (retry)",
    errno.EACCES: "permission denied: fix the file's or folder's permissions, then rerun",
    errno.EPERM: "operation not permitted: fix the file's or folder's permissions, then rerun",
    errno.EROFS: "read-only file system: write results elsewhere, then rerun",
    errno.EMFILE: "too many open files in this process: raise the limit (ulimit -n) or use fewer reader workers",
    errno.ENFILE: "too many open files in the system: rerun when fewer files are open, or raise fs.file-max",
    errno.ENOMEM: "out of memory: give the job more memory (resources mem_mb) or use smaller batches",
    errno.ETIMEDOUT: "timed out (network file system?): rerun (retry)",
    errno.ENOTCONN: "transport endpoint not connected (network file system unmounted?): rerun (retry)",
    errno.EAGAIN: "resource temporarily unavailable: rerun (retry)",
}


def fault_from(exc: BaseException, where: str | Path | None = None) -> FaultError | None:
    """The :class:`FaultError` for an OSError whose errno is a condition of the environment
    (:data:`FAULT_ERRNOS`) or a MemoryError, naming the path (the error's own, else ``where``); None otherwise."""
    if isinstance(exc, FaultError):
        return exc
    if isinstance(exc, MemoryError):
        return FaultError(where or "memory", "out of memory (MemoryError): give the job more memory (mem_mb)")
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno_in_message(exc)
    if code in FAULT_ERRNOS:
        path = getattr(exc, "filename", None) or where or "file system"
        return FaultError(path, f"[{errno.errorcode.get(code, code)}] {FAULT_ERRNOS[code]}")
    return None


def errno_in_message(exc: BaseException) -> int | None:
    """The errno HDF5 puts in the text of a failed write or read ("file write failed: ... errno = 28, ..."), which
    h5py raises as an OSError without errno or as a RuntimeError ("Disable slist on flush dest failure failed")."""
    found = re.search(r"file (?:write|read) failed.*?errno = (\d+)", str(exc), re.DOTALL)
    return int(found.group(1)) if found else None


def one_line(text: object) -> str:
    """``text`` on one line (runs of white space, newlines included, become one space): how errors are printed."""
    return " ".join(str(text).split())
