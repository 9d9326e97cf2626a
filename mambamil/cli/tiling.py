"""``mambamil tile`` (workflow/rules/tiling.smk)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambamil.cli.options import (
    Subparsers,
    add_on_bad_slide,
    add_out,
    add_shard,
    refuse_shard_without_sheet,
    sheet_shard,
    verb,
)
from mambamil.config import add_section_options, section_from_args
from mambamil.errors import MambamilError


def add_tile(sub: Subparsers) -> None:
    p = verb(
        sub,
        "tile",
        run_tile,
        help="segment tissue and write the patch grid of one or more slides",
        description="Segment the tissue of one slide and lay a patch grid at a target resolution. Writes "
        "OUT/<slide_id>.h5 (patch coordinates), OUT/<slide_id>.tissue.geojson (tissue polygons, level-0 px, "
        "QuPath-importable) and OUT/<slide_id>.preview.png. Settings come from the schema defaults, then the "
        "config's 'tiling' section (--config), then --settings, then the options given here.",
    )
    p.add_argument("slide", type=Path, nargs="*", help="slide file(s) (anything OpenSlide reads); or use --sheet")
    add_out(p, "output folder")
    p.add_argument("--slide-id", nargs="+", help="id(s) used for output names (default: the file name without suffix)")
    p.add_argument(
        "--mpp", type=float, nargs="+", help="µm/px override(s) when a slide lacks or misreports its resolution"
    )
    p.add_argument("--sheet", type=Path, help="slide sheet CSV instead of SLIDE arguments (its mpp column applies)")
    add_shard(p, "tiles")
    add_section_options(p, "tiling")
    add_on_bad_slide(p)


def run_tile(args: argparse.Namespace) -> int:
    from mambamil.paths import tile_outputs
    from mambamil.qc import QCOutcome, run_slide_stage
    from mambamil.slide_jobs import run_guarded
    from mambamil.tiling import TilingSettings, tile_slide

    settings = TilingSettings.from_config(section_from_args(args, "tiling"))
    jobs = tile_jobs(args)
    failed = []
    for slide, slide_id, mpp in jobs:

        def work(slide: Path = slide, slide_id: str = slide_id, mpp: float | None = mpp):
            return run_slide_stage(
                "tile",
                slide_id,
                tile_outputs(args.out, slide_id).values(),
                [slide],
                args.on_bad_slide,
                lambda: tile_slide(slide, args.out, settings, slide_id, mpp),
                slide_file=slide,
            )

        if len(jobs) == 1:  # one slide: its error is the command's error (--debug shows the traceback)
            result = work()
        else:
            result, _ = run_guarded("tile", slide_id, slide, work)
        if result is None:
            failed.append(slide_id)
            continue
        if isinstance(result, QCOutcome):
            continue
        print(f"{result.slide_id}: {result.n_patches} patches ({result.tissue_area_mm2:.2f} mm² tissue) → {args.out}")
    if failed:
        raise MambamilError(f"{len(failed)} of {len(jobs)} slide(s) failed: {', '.join(failed)}")
    return 0


def tile_jobs(args: argparse.Namespace) -> list[tuple[Path, str, float | None]]:
    """(slide, slide_id, mpp override) of a tile call: SLIDE arguments, or --sheet (optionally one --shard)."""
    import math

    from mambamil.sheets import read_slide_sheet

    if args.sheet is not None:
        if args.slide or args.slide_id or args.mpp:
            raise MambamilError("--sheet replaces SLIDE, --slide-id and --mpp")
        rows = read_slide_sheet(args.sheet)
        jobs = [
            (Path(p), sid, None if math.isnan(m) else float(m))
            for sid, p, m in zip(rows["slide_id"], rows["path"], rows["mpp"], strict=True)
        ]
        return sheet_shard(args, jobs)
    refuse_shard_without_sheet(args)
    if not args.slide:
        raise MambamilError("give SLIDE [SLIDE ...] or --sheet")
    n = len(args.slide)
    for name, values in (("--slide-id", args.slide_id), ("--mpp", args.mpp)):
        if values is not None and len(values) != n:
            raise MambamilError(f"{name} has {len(values)} value(s) for {n} slide(s): give one per slide")
    ids = args.slide_id or [s.stem for s in args.slide]
    return list(zip(args.slide, ids, args.mpp or [None] * n, strict=True))
