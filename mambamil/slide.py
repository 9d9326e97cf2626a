"""Slide access: the one place that opens whole-slide images and reads them at a physical resolution.

Everything is expressed in level-0 pixel coordinates and µm/px (``mpp``). µm/px is resolved in this order:
the slide sheet's override, OpenSlide's ``openslide.mpp-x/y``, then the TIFF resolution tags. A slide with
none of these is an error: resolution is never guessed from objective-power buckets.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openslide

from mambamil.errors import FaultError, MambamilError, SlideError, fault_from

#: A pyramid level whose µm/px exceeds the target by at most this fraction still counts as "at or below"
#: the target (0.499 vs 0.5 and 0.5021 vs 0.5 both read level 0/1 directly rather than a 2× finer level).
LEVEL_MPP_TOLERANCE = 0.02

#: Plausible µm/px for a microscope image; TIFF resolution tags outside it are screen defaults (72 dpi).
PLAUSIBLE_MPP = (0.05, 50.0)

#: Largest edge, in pixels of the level being read, of one OpenSlide request in block-wise reads.
READ_BLOCK = 4096

#: OpenSlide/libtiff messages of a read that failed or came back short (an I/O condition), as opposed to image
#: data that were read and would not decode (damaged data in the file).
_SHORT_READ = re.compile(r"read error|got \d+ bytes|input/output|i/o error|stale file|no such file", re.IGNORECASE)

_UNIT_TO_UM = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


@dataclass(frozen=True)
class LevelChoice:
    """The pyramid level used to read at some target µm/px."""

    level: int
    downsample: float
    mpp: float


class Slide:
    """An open whole-slide image with a resolved µm/px.

    Use as a context manager, or call :meth:`close`. Each process (and each DataLoader worker) must open its
    own ``Slide``: OpenSlide handles are not shared across forked processes.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, slide_id: str | None = None) -> None:
        self.path = Path(path)
        self.slide_id = slide_id or self.path.stem
        self._osr, self.file_size = _open(self.path, self.slide_id)
        try:
            self.mpp, self.mpp_source = self._resolve_mpp(mpp)
        except SlideError:
            self._osr.close()
            raise

    # -- basic properties -------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self._osr.dimensions

    @property
    def level_count(self) -> int:
        return self._osr.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._osr.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._osr.level_downsamples

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._osr.properties)

    def error(self, cause: str) -> SlideError:
        """A :class:`SlideError` naming this slide."""
        return SlideError(self.path, cause, self.slide_id)

    def fault(self, cause: str) -> FaultError:
        """A :class:`FaultError` naming this slide (a condition of the environment, not of the slide)."""
        return FaultError(f"slide '{self.slide_id}' ({self.path})", cause)

    def read_error(self, what: str, exc: Exception) -> MambamilError:
        """What a failed OpenSlide read is. The file changed size since it was opened, or the read failed or came
        back short: a fault of the environment (the job fails and is retried). Data that were read but do not
        decode, in a file unchanged since it opened: damaged data, a property of the slide (a QC exclusion)."""
        try:
            size = self.path.stat().st_size
        except OSError as err:
            return fault_from(err, self.path) or self.fault(f"{what} failed and the file cannot be checked: {err}")
        if size != self.file_size:
            return self.fault(
                f"{what} failed: the file changed size while it was read ({self.file_size} → {size} bytes), cut short "
                f"or replaced underneath the job; not a bad slide, retry ({exc})"
            )
        if _SHORT_READ.search(str(exc)):
            return self.fault(f"{what} failed: a read that failed or came back short (I/O fault), retry ({exc})")
        return self.error(f"{what} failed: the slide's image data are damaged ({exc})")

    # -- resolution ---------------------------------------------------------------------------------------
    def _resolve_mpp(self, override: float | None) -> tuple[float, str]:
        if override is not None and not (isinstance(override, float) and math.isnan(override)):
            if not override > 0:
                raise self.error(f"mpp override must be > 0, got {override}")
            return float(override), "override"
        props = self._osr.properties
        candidates: list[tuple[float, str]] = []
        mx, my = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
        if mx:
            value = _mean_mpp(mx, my)
            if value is not None:
                candidates.append((value, "openslide.mpp"))
        unit = (props.get("tiff.ResolutionUnit") or "").lower()
        xres, yres = props.get("tiff.XResolution"), props.get("tiff.YResolution")
        if xres and unit in _UNIT_TO_UM:
            value = _tiff_mpp(_UNIT_TO_UM[unit], xres, yres or xres)
            if value is not None:
                candidates.append((value, "tiff.resolution"))
        for value, source in candidates:
            if PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
                return value, source
        if candidates:
            raise self.error(
                f"{candidates[0][1]} gives {candidates[0][0]:.4g} µm/px, not a microscope resolution "
                "(a screen-dpi default?); set the 'mpp' column in the slide sheet"
            )
        raise self.error(
            "no µm/px in the slide (no openslide.mpp-x, no TIFF resolution tags); "
            "set the 'mpp' column in the slide sheet"
        )

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def level_for_mpp(self, target_mpp: float) -> LevelChoice:
        """The coarsest pyramid level whose µm/px is at or below ``target_mpp`` (within tolerance)."""
        if target_mpp <= 0:
            raise self.error(f"target µm/px must be > 0, got {target_mpp}")
        best = 0
        for level in range(self.level_count):
            if self.level_mpp(level) <= target_mpp * (1 + LEVEL_MPP_TOLERANCE):
                best = level if self.level_downsamples[level] >= self.level_downsamples[best] else best
        return LevelChoice(best, float(self.level_downsamples[best]), self.level_mpp(best))

    # -- reading ------------------------------------------------------------------------------------------
    def read_level_rgba(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """OpenSlide's read_region (read + decode) as an RGBA uint8 array."""
        try:
            return np.asarray(self._osr.read_region((int(x0), int(y0)), level, (int(size[0]), int(size[1]))))
        except openslide.OpenSlideError as exc:
            raise self.read_error(f"read at level {level} ({x0}, {y0})", exc) from exc

    def read_level_region(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """OpenSlide's read_region as an RGB uint8 array; transparent pixels become white."""
        return rgba_to_rgb(self.read_level_rgba(x0, y0, level, size))

    def region_read_plan(self, size0: tuple[float, float], out_size: tuple[int, int]) -> tuple[LevelChoice, int, int]:
        """How :meth:`read_region` reads a level-0 rectangle of ``size0`` for ``out_size`` (w, h): the level (the
        coarsest at least as fine as the output) and the (width, height) read there, before the resize."""
        out_w, out_h = int(out_size[0]), int(out_size[1])
        target_mpp = self.mpp * min(size0[0] / out_w, size0[1] / out_h)
        choice = self.level_for_mpp(target_mpp)
        read_w = max(1, math.ceil(size0[0] / choice.downsample - 1e-6))
        read_h = max(1, math.ceil(size0[1] / choice.downsample - 1e-6))
        return choice, read_w, read_h

    def read_region(self, x0: float, y0: float, size0: tuple[float, float], out_size: tuple[int, int]) -> np.ndarray:
        """Read the level-0 rectangle (x0, y0, w0, h0) and return it resized to ``out_size`` (w, h), RGB uint8.

        Reads from the coarsest level that is at least as fine as the output, then resizes (area interpolation
        when shrinking).
        """
        choice, read_w, read_h = self.region_read_plan(size0, out_size)
        rgb = self.read_level_region(round(x0), round(y0), choice.level, (read_w, read_h))
        return resize(rgb, (int(out_size[0]), int(out_size[1])))

    def read_at_mpp(self, x0: float, y0: float, size: tuple[int, int], mpp: float) -> np.ndarray:
        """Read ``size`` (w, h) pixels at ``mpp`` µm/px whose top-left corner is level-0 (x0, y0)."""
        scale = mpp / self.mpp
        return self.read_region(x0, y0, (size[0] * scale, size[1] * scale), size)

    def size_at_mpp(self, mpp: float) -> tuple[int, int]:
        """Whole-slide (width, height) in pixels at ``mpp``."""
        w0, h0 = self.dimensions
        scale = self.mpp / mpp
        return max(1, round(w0 * scale)), max(1, round(h0 * scale))

    def read_whole_at_mpp(self, mpp: float, max_pixels: int = 400_000_000) -> np.ndarray:
        """The whole slide at ``mpp`` µm/px, read block by block (:meth:`read_box_at_mpp`): memory stays bounded."""
        out_w, out_h = self.size_at_mpp(mpp)
        if out_w * out_h > max_pixels:
            raise self.error(
                f"whole-slide image at {mpp} µm/px would be {out_w}x{out_h} px; choose a coarser resolution"
            )
        return self.read_box_at_mpp(0, 0, (out_w, out_h), mpp)

    def read_box_at_mpp(self, ox: int, oy: int, size: tuple[int, int], mpp: float) -> np.ndarray:
        """The (w, h) box at output pixel (ox, oy) of the slide drawn at ``mpp`` µm/px, read block by block.

        Each OpenSlide request is at most :data:`READ_BLOCK` pixels on a side of the level it reads, so a slide
        whose only level is huge is downsampled piecewise rather than loaded at once.
        """
        out_w, out_h = int(size[0]), int(size[1])
        choice = self.level_for_mpp(mpp)
        level_per_out = mpp / choice.mpp  # level pixels per output pixel (>= ~1)
        block = max(16, int(READ_BLOCK / max(level_per_out, 1.0)))
        scale0 = mpp / self.mpp  # level-0 pixels per output pixel
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for by in range(0, out_h, block):
            bh = min(block, out_h - by)
            for bx in range(0, out_w, block):
                bw = min(block, out_w - bx)
                out[by : by + bh, bx : bx + bw] = self.read_region(
                    (ox + bx) * scale0, (oy + by) * scale0, (bw * scale0, bh * scale0), (bw, bh)
                )
        return out

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({self.slide_id!r}, {self.dimensions[0]}x{self.dimensions[1]}, {self.mpp:.4g} µm/px)"


def open_slide(path: str | Path, mpp: float | None = None, slide_id: str | None = None) -> Slide:
    """Open a slide, resolving its µm/px; raises :class:`SlideError` with a one-line cause."""
    return Slide(path, mpp=mpp, slide_id=slide_id)


def resize(rgb: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Resize an image to (w, h): area interpolation when shrinking, bilinear when enlarging."""
    h, w = rgb.shape[:2]
    if (w, h) == tuple(out_size):
        return rgb
    interp = cv2.INTER_AREA if out_size[0] <= w and out_size[1] <= h else cv2.INTER_LINEAR
    return cv2.resize(rgb, (int(out_size[0]), int(out_size[1])), interpolation=interp)


def _open(path: Path, slide_id: str) -> tuple[openslide.OpenSlide, int]:
    """The OpenSlide handle and the file's size. What fails is sorted: a property of the file (not found, empty, not
    a slide format, corrupt) is a :class:`SlideError`; a condition of the environment (an errno such as EACCES, EIO,
    ESTALE when the file is stat'ed or its header read, a TIFF cut short of its own directories) a
    :class:`FaultError`."""
    name = f"slide '{slide_id}' ({path})"
    try:
        if not path.exists():
            raise SlideError(path, "file not found", slide_id)
        if path.is_dir():
            raise SlideError(path, "is a directory, not a slide file", slide_id)
        size = path.stat().st_size
        if size == 0:
            raise SlideError(path, "file is empty (0 bytes)", slide_id)
        with open(path, "rb") as fh:  # OpenSlide hides the errno of an unreadable file; Python's open does not
            fh.read(16)
        osr = openslide.OpenSlide(str(path))
    except OSError as exc:
        raise fault_from(exc, name) or FaultError(name, f"cannot read the file: {exc}") from exc
    except openslide.OpenSlideError as exc:
        try:
            short = tiff_truncation(path, size)
        except OSError as err:
            raise fault_from(err, name) or FaultError(name, f"cannot read the file: {err}") from exc
        if short:
            raise FaultError(
                name,
                f"file cut short: {short} (a copy still in progress, or an I/O fault); not a bad slide, retry",
            ) from exc
        if isinstance(exc, openslide.OpenSlideUnsupportedFormatError):
            raise SlideError(path, "not a slide format OpenSlide can read", slide_id) from exc
        raise SlideError(path, f"slide is corrupt ({exc})", slide_id) from exc
    return osr, size


def tiff_truncation(path: str | Path, size: int) -> str | None:
    """How a (Big)TIFF file is shorter than its own directory chain says (a directory starting or ending past the
    end of the file), or None (not a TIFF, or its directories are all there). Only the headers are read: cheap.

    A file whose size is less than its TIFF header and directory offsets claim is a truncated copy: the bytes it
    should have were never written or never arrived, which is a fault of the copy, not a property of the slide."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 4:
            return None
        magic = struct.unpack(order + "H", head[2:4])[0]
        if magic in (42, 43) and len(head) < (8 if magic == 42 else 16):
            return f"the TIFF header is cut off at {size} bytes"
        if magic == 42:
            offset, count_fmt, entry, next_fmt = struct.unpack(order + "I", head[4:8])[0], "H", 12, "I"
        elif magic == 43 and len(head) == 16:
            offset, count_fmt, entry, next_fmt = struct.unpack(order + "Q", head[8:16])[0], "Q", 20, "Q"
        else:
            return None
        seen: set[int] = set()
        while offset and offset not in seen and len(seen) < 100_000:
            seen.add(offset)
            n_dir = len(seen)
            if offset >= size:
                return f"TIFF directory {n_dir} starts at byte {offset}, the file has {size} bytes"
            fh.seek(offset)
            raw = fh.read(struct.calcsize(count_fmt))
            if len(raw) < struct.calcsize(count_fmt):
                return f"TIFF directory {n_dir} at byte {offset} is cut off at {size} bytes"
            n = struct.unpack(order + count_fmt, raw)[0]
            end = offset + len(raw) + n * entry + struct.calcsize(next_fmt)
            if end > size:
                return f"TIFF directory {n_dir} ends at byte {end}, the file has {size} bytes"
            fh.seek(end - struct.calcsize(next_fmt))
            offset = struct.unpack(order + next_fmt, fh.read(struct.calcsize(next_fmt)))[0]
    return None


def _mean_mpp(mx: str, my: str | None) -> float | None:
    try:
        values = [float(mx), float(my or mx)]
    except ValueError:
        return None
    if not all(v > 0 for v in values):
        return None
    return float(np.mean(values))


def _tiff_mpp(um_per_unit: float, xres: str, yres: str) -> float | None:
    try:
        return float(np.mean([um_per_unit / float(xres), um_per_unit / float(yres)]))
    except (ValueError, ZeroDivisionError):
        return None


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """RGBA → RGB uint8; transparent pixels (outside the scanned area) become white."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
