"""The features stage's data path: block reads in the workers, resize + normalise on the device.

Readers (DataLoader workers, each with its own :class:`~mambamil.slide.Slide`) get *blocks*: groups of
neighbouring patches whose union is read with ONE OpenSlide request at the patch read level and cut into
patches in memory (overlapping patches share pixels, so a 50 % overlap grid reads ~2.5× fewer pixels). Patches
leave the workers as uint8 at the read size (e.g. 256 px), in shared memory. The main process copies them into
pinned, preallocated staging buffers (two, so one fills while the other is copied), sends them with
non-blocking copies, and on the device resizes them ONCE, with the encoder's interpolation, from the read size to
the encoder's pre-crop size (shrinking or enlarging alike), rounds to uint8 levels, centre-crops when the preset
crops, optionally normalises the stain (:mod:`mambamil.features.stain`), normalises mean/std, and runs the model.
Features stay on the device until the slide is done: no host sync per batch.

Blocks are handed to workers in contiguous runs (:func:`worker_runs_order`), so each worker reads one region
of the slide after the other and OpenSlide's tile cache serves the tiles two blocks share.

``profile=True`` times each stage (workers: read + decode, RGBA → RGB, cut; main: wait for data, staging copy,
host → device, resize + normalise, model, device → host, write); on CUDA it then synchronises after each stage,
which costs a little throughput, so profile numbers are for finding the bottleneck, not for the rate.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from mambamil.errors import SlideError
from mambamil.slide import Slide, open_slide, rgba_to_rgb

#: Edge of a block's cell, in pixels of the level the patches are read from (a block reads at most
#: (cell + patch)² pixels: ~6.5 MB of RGBA for 1024 + 256).
BLOCK_CELL_PX = 1024

#: What each interpolation is, as the output's ``resize`` attribute names it.
RESIZE_METHODS = {
    "area": "cv2 INTER_AREA weights (separable matrix products)",
    "area-enlarge": "bilinear, half-pixel centres (cv2 INTER_AREA enlarges bilinearly)",
    "bilinear": "antialiased bilinear (PIL / torchvision Resize)",
    "bicubic": "antialiased bicubic (PIL / torchvision Resize)",
}


def default_num_workers(reserve: int = 1) -> int:
    """Reader processes for the cores this job may use (``os.sched_getaffinity``), one left for the main process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, cores - reserve)


# -- blocks -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadPlan:
    """Where and how big the patches are read: pyramid ``level`` with ``downsample``, ``read_size`` (w, h)
    pixels there (what the workers hand over, never resized there), ``out_size`` (w, h) the device resizes to
    (the encoder's pre-crop size)."""

    level: int
    downsample: float
    read_size: tuple[int, int]
    out_size: tuple[int, int]


def plan_reads(slide: Slide, size0: float, out_size: tuple[int, int]) -> ReadPlan:
    """The read of a ``size0`` level-0 square for ``out_size`` (the encoder's pre-crop size): the coarsest level at
    least as fine as the output (:meth:`Slide.region_read_plan`)."""
    choice, read_w, read_h = slide.region_read_plan((size0, size0), out_size)
    return ReadPlan(choice.level, choice.downsample, (read_w, read_h), (int(out_size[0]), int(out_size[1])))


def pre_crop_size(input_size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """(w, h) a patch is resized to before the centre crop: the input / ``crop_pct`` (e.g. 224 / 0.875 = 256)."""
    h, w = input_size
    return (round(w / crop_pct), round(h / crop_pct)) if crop_pct < 1.0 else (w, h)


def plan_blocks(coords: np.ndarray, downsample: float, cell_px: int = BLOCK_CELL_PX) -> list[np.ndarray]:
    """Group patch indices into blocks of neighbours: patches whose rounded top-left falls in the same
    ``cell_px`` × ``cell_px`` cell of the read level, cells in row-major order.

    A patch can share a block read only when its offset from the block's corner is a whole number of pixels of
    the read level (always at level 0); others become blocks of one, read exactly as the per-patch path does.
    """
    xy = np.rint(np.asarray(coords, dtype=np.float64)).astype(np.int64)
    if len(xy) == 0:
        return []
    cell0 = cell_px * downsample
    keys = np.floor(xy[:, 1] / cell0).astype(np.int64), np.floor(xy[:, 0] / cell0).astype(np.int64)
    order = np.lexsort((xy[:, 0], keys[1], keys[0]))  # by cell row, cell column, then x within (stable in y)
    ky, kx = keys[0][order], keys[1][order]
    cuts = np.flatnonzero((np.diff(ky) != 0) | (np.diff(kx) != 0)) + 1
    blocks: list[np.ndarray] = []
    for group in np.split(order, cuts):
        group = np.sort(group)
        off = (xy[group] - xy[group].min(axis=0)) / downsample
        if np.allclose(off, np.rint(off), atol=1e-6):
            blocks.append(group)
        else:
            blocks.extend(group[i : i + 1] for i in range(len(group)))
    return blocks


def worker_runs_order(n_blocks: int, n_workers: int) -> list[int]:
    """A block order that gives DataLoader worker ``w`` (it gets items w, w + W, … in turn) the ``w``-th
    contiguous run of blocks: neighbouring blocks go to the same worker and its slide handle's tile cache."""
    if n_workers <= 1:
        return list(range(n_blocks))
    runs = np.array_split(np.arange(n_blocks), n_workers)
    out: list[int] = []
    for k in range(max(len(r) for r in runs)):
        out.extend(int(r[k]) for r in runs if k < len(r))
    return out


class ListSampler(Sampler[int]):
    """Items in a given order."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class BlockDataset(Dataset):
    """Blocks of one slide's patches; item ``b`` is ``{"index", "patches", "error", "times"}`` with patches uint8
    (k, read_h, read_w, 3) at the read level, or the read error as (first patch, cause, is a fault) (a failed read
    reaches the main process as a cause, not as a worker traceback)."""

    def __init__(
        self,
        slide_path: str,
        coords: np.ndarray,
        blocks: list[np.ndarray],
        plan: ReadPlan,
        mpp: float | None = None,
        slide_id: str | None = None,
        profile: bool = False,
    ) -> None:
        self.slide_path = slide_path
        self.xy = np.rint(np.asarray(coords, dtype=np.float64)).astype(np.int64)
        self.blocks = blocks
        self.plan = plan
        self.mpp = mpp
        self.slide_id = slide_id
        self.profile = profile
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def _open(self) -> Slide:
        if self._slide is None:  # first use in this process (each worker opens its own handle)
            self._slide = open_slide(self.slide_path, mpp=self.mpp, slide_id=self.slide_id)
        return self._slide

    def __getitem__(self, b: int) -> dict[str, Any]:
        index = self.blocks[b]
        times: dict[str, float] = {}
        try:
            patches = self._read_block(index, times)
        except Exception as exc:  # a reader failure goes to the main process as text, and whether it is a fault
            # Only a SlideError (image data that do not decode) is the slide's; anything else in a reader (an I/O
            # fault, a file changed underneath, memory) is a condition of the environment (README "Bad slides and QC").
            fault = not isinstance(exc, SlideError)
            return {"index": torch.from_numpy(index), "patches": None, "error": (int(index[0]), _cause(exc), fault)}
        return {"index": torch.from_numpy(index), "patches": patches, "error": None, "times": times}

    def _read_block(self, index: np.ndarray, times: dict[str, float]) -> torch.Tensor:
        """One OpenSlide read of the block's bounding box at the read level, cut into its patches."""
        ds, (rw, rh) = self.plan.downsample, self.plan.read_size
        xy = self.xy[index]
        x0, y0 = xy.min(axis=0)
        off = np.rint((xy - (x0, y0)) / ds).astype(np.int64)
        width, height = int(off[:, 0].max()) + rw, int(off[:, 1].max()) + rh
        t0 = time.perf_counter()
        rgba = self._open().read_level_rgba(int(x0), int(y0), self.plan.level, (width, height))
        t1 = time.perf_counter()
        rgb = rgba_to_rgb(rgba)
        t2 = time.perf_counter()
        out = torch.empty((len(index), rh, rw, 3), dtype=torch.uint8)
        view = out.numpy()
        for k, (ox, oy) in enumerate(off):
            view[k] = rgb[oy : oy + rh, ox : ox + rw]
        if self.profile:
            times.update(read_decode=t1 - t0, rgba_to_rgb=t2 - t1, cut=time.perf_counter() - t2)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slide"] = None  # never ship an open handle to another process
        return state

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def _cause(exc: Exception) -> str:
    return getattr(exc, "cause", None) or f"{type(exc).__name__}: {exc}"


def _as_is(item: dict[str, Any]) -> dict[str, Any]:
    return item  # batch_size=None: each block is its own item


def _worker_context() -> Any:
    """Fork where the platform has it (fast; the dataset holds no open handle), else spawn."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def make_block_loader(dataset: BlockDataset, num_workers: int) -> DataLoader:
    """Blocks in :func:`worker_runs_order`; ``num_workers`` processes read in parallel."""
    order = worker_runs_order(len(dataset), num_workers)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=ListSampler(order),
        num_workers=num_workers,
        collate_fn=_as_is,
        prefetch_factor=4 if num_workers > 0 else None,
        multiprocessing_context=_worker_context() if num_workers > 0 else None,
    )


# -- resize on the device ---------------------------------------------------------------------------------
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of cv2's INTER_AREA shrink along one axis: each output pixel averages the input
    pixels it covers, weighted by the covered fraction."""
    if n_out > n_in:
        raise ValueError(f"area weights shrink only ({n_in} → {n_out})")
    w = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for j in range(n_out):
        lo, hi = j * scale, (j + 1) * scale
        for i in range(math.floor(lo), min(n_in, math.ceil(hi))):
            w[j, i] = (min(hi, i + 1) - max(lo, i)) / scale
    return w


class DeviceResize:
    """uint8 (B, h, w, 3) as read → float (B, 3, H, W) at the encoder input on the device, channels-last.

    One resize, from the read size straight to the pre-crop size (``out/crop_pct``, as ``Resize(256)`` +
    ``CenterCrop(224)``), with ``interpolation``: ``area`` shrinks with cv2's INTER_AREA weights (two matrix
    products) and enlarges bilinearly; ``bilinear``/``bicubic`` resize with antialiasing as PIL/torchvision
    ``Resize`` do, shrinking or enlarging. The result is rounded to uint8 levels (as cv2 and PIL return images),
    centre-cropped, passed through ``stain`` (a :class:`~mambamil.features.stain.StainNormaliser`, optional),
    then normalised with the encoder's mean/std exactly as :meth:`Encoder.preprocess`."""

    def __init__(
        self,
        size: tuple[int, int],
        out_size: tuple[int, int],
        mean,
        std,
        device: torch.device,
        interpolation: str = "area",
        crop_pct: float = 1.0,
        stain: Any = None,
    ) -> None:
        (w, h), (ow, oh) = size, out_size
        rw, rh = pre_crop_size((oh, ow), crop_pct)
        self.size = (w, h)
        self.resize_to = (rh, rw)
        self.crop = (round((rh - oh) / 2.0), round((rw - ow) / 2.0), oh, ow) if (rw, rh) != (ow, oh) else None
        if interpolation not in ("area", "bilinear", "bicubic"):
            raise ValueError(f"unknown interpolation {interpolation!r}")
        enlarge = rw > w or rh > h
        self.mode = "area-enlarge" if interpolation == "area" and enlarge else interpolation
        self.identity = (w, h) == (rw, rh)
        self.stain = stain
        if self.mode == "area":
            self.wy = torch.tensor(area_weights(h, rh), dtype=torch.float32, device=device)
            self.wxt = torch.tensor(area_weights(w, rw).T, dtype=torch.float32, device=device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if not self.identity:
            if self.mode == "area":
                x = torch.matmul(torch.matmul(self.wy, x), self.wxt)
            elif self.mode == "area-enlarge":
                x = F.interpolate(x, size=self.resize_to, mode="bilinear", align_corners=False)
            else:
                x = F.interpolate(x, size=self.resize_to, mode=self.mode, antialias=True, align_corners=False)
            x = x.round_().clamp_(0.0, 255.0)
        if self.crop is not None:
            top, left, oh, ow = self.crop
            x = x[:, :, top : top + oh, left : left + ow]
        if self.stain is not None:
            x = self.stain(x)
        x = (x.div(255.0) - self.mean) / self.std  # the same arithmetic as Encoder.preprocess
        return x.contiguous(memory_format=torch.channels_last)

    def describe(self) -> str:
        """What ran, for the output's ``resize`` attribute: the one resize (or none) and the crop."""
        (w, h), (rh, rw) = self.size, self.resize_to
        text = (
            f"none: read at {w}x{h} px"
            if self.identity
            else f"once on the device, {w}x{h} → {rw}x{rh} px: {RESIZE_METHODS[self.mode]}; rounded to uint8"
        )
        if self.crop is not None:
            text += f"; centre crop {self.crop[3]}x{self.crop[2]} px"
        return text


# -- profile ----------------------------------------------------------------------------------------------
@dataclass
class StageTimes:
    """Seconds per stage: ``workers`` summed over reader processes (CPU-seconds), ``main`` wall seconds."""

    workers: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    main: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    n_patches: int = 0
    n_blocks: int = 0
    wall: float = 0.0

    def table(self) -> str:
        """A Markdown table of where the time went."""
        rows = ["| where | stage | s | % of wall |", "|---|---|---|---|"]
        for where, d in (("workers (sum)", self.workers), ("main", self.main)):
            for stage, s in d.items():
                pct = 100 * s / self.wall if self.wall > 0 else float("nan")
                rows.append(f"| {where} | {stage} | {s:.3f} | {pct:.0f} % |")
        rate = self.n_patches / self.wall if self.wall > 0 else float("nan")
        rows.append(f"| total | {self.n_patches} patches in {self.n_blocks} blocks | {self.wall:.3f} | {rate:.1f}/s |")
        return "\n".join(rows)


class _Clock:
    """Adds the time since the last tick to a stage; on CUDA (profile only) waits for the device first."""

    def __init__(self, times: StageTimes | None, device: torch.device) -> None:
        self.times = times
        self.sync = times is not None and device.type == "cuda"
        self.t = time.perf_counter()

    def tick(self, stage: str) -> None:
        if self.times is None:
            return
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.main[stage] += now - self.t
        self.t = now


# -- the main loop ----------------------------------------------------------------------------------------
class _Staging:
    """Preallocated host buffers for a batch of uint8 patches (pinned on CUDA) with the copy's done-event."""

    def __init__(self, batch: int, plan: ReadPlan, device: torch.device) -> None:
        rw, rh = plan.read_size
        pin = device.type == "cuda"
        self.images = torch.empty((batch, rh, rw, 3), dtype=torch.uint8, pin_memory=pin)
        self.index = torch.empty((batch,), dtype=torch.int64, pin_memory=pin)
        self.fill = 0
        self.copied = torch.cuda.Event() if pin else None

    def wait(self) -> None:
        """Before refilling: the previous non-blocking copy out of this buffer must be done."""
        if self.copied is not None:
            self.copied.synchronize()


def embed_blocks(
    model: torch.nn.Module,
    resize: DeviceResize,
    blocks: Iterator[dict[str, Any]],
    n: int,
    dim: int,
    batch_size: int,
    plan: ReadPlan,
    device: torch.device,
    autocast: Any,
    out_dtype: torch.dtype,
    on_error: Any,
    times: StageTimes | None = None,
    progress: Any = None,
) -> torch.Tensor:
    """Embed every patch of the blocks into an (n, dim) tensor on ``device``; ``on_error(i, cause, fault)`` raises
    for a failed read (``fault``: a condition of the environment, not of the slide). Nothing waits for the device
    per batch except refilling a staging buffer whose copy is still in flight (two buffers alternate)."""
    feats = torch.empty((n, dim), dtype=out_dtype, device=device)
    done = torch.zeros(n, dtype=torch.bool)
    stages = [_Staging(batch_size, plan, device), _Staging(batch_size, plan, device)]
    cur = 0
    clock = _Clock(times, device)

    def launch(st: _Staging) -> None:
        k = st.fill
        images = st.images[:k].to(device, non_blocking=True)
        index = st.index[:k].to(device, non_blocking=True)
        if st.copied is not None:
            st.copied.record()
        clock.tick("host_to_device")
        x = resize(images)
        clock.tick("resize_normalise")
        with autocast():
            out = model(x)
        feats[index] = out.to(out_dtype)
        clock.tick("model")
        st.fill = 0

    for item in blocks:
        clock.tick("wait_for_readers")
        if item["error"] is not None:
            on_error(*item["error"])
        patches, index = item["patches"], item["index"]
        if times is not None:
            for stage, s in item.get("times", {}).items():
                times.workers[stage] += s
            times.n_blocks += 1
        pos = 0
        while pos < len(index):
            st = stages[cur]
            if st.fill == 0:
                st.wait()
            take = min(batch_size - st.fill, len(index) - pos)
            st.images[st.fill : st.fill + take].copy_(patches[pos : pos + take])
            st.index[st.fill : st.fill + take].copy_(index[pos : pos + take])
            st.fill += take
            pos += take
            clock.tick("staging_copy")
            if st.fill == batch_size:
                launch(st)
                cur = 1 - cur
        done[index] = True
        if progress is not None:
            progress(len(index))
    if stages[cur].fill:
        launch(stages[cur])
    if not bool(done.all()):
        missing = int((~done).sum())
        on_error(
            int(np.flatnonzero(~done.numpy())[0]), f"{missing} patches were never read (reader stopped early)", True
        )
    if times is not None:
        times.n_patches += n
    return feats
