"""Many slides in one process (the tile and features verbs): shards of a slide list, and running one slide
so that its failure is reported on one line naming it while the others go on."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from mambamil.errors import FaultError, MambamilError, SlideError, fault_from, one_line

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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


def run_guarded(verb: str, slide_id: str, slide: Path, fn: Callable[[], R]) -> tuple[R | None, str | None]:
    """``(fn(), None)``, or ``(None, error)`` after printing ``mambamil VERB: error: …`` (one line naming the
    slide) to stderr; an unexpected exception is named the same way, with its type. A fault of the environment
    (:class:`FaultError`, or an OSError/MemoryError that is one) is not the slide's: it ends the whole job."""
    try:
        return fn(), None
    except FaultError:
        raise  # a condition of the environment (disk full, I/O) is the whole job's: it fails now and is retried
    except MambamilError as exc:
        error = one_line(exc)
    except Exception as exc:
        fault = fault_from(exc, slide)
        if fault is not None:
            raise fault from exc
        error = one_line(SlideError(slide, f"unexpected error: {type(exc).__name__}: {exc}", slide_id))
        log.debug("slide %s failed", slide_id, exc_info=True)
    print(f"mambamil {verb}: error: {error}", file=sys.stderr, flush=True)
    return None, error
