"""``mambamil demo-cohort`` (workflow/rules/demo.smk)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mambamil.cli.options import Subparsers, verb
from mambamil.errors import MambamilError

log = logging.getLogger("mambamil")


def add_demo_cohort(sub: Subparsers) -> None:
    p = verb(
        sub,
        "demo-cohort",
        run_demo_cohort,
        help="write the synthetic demo cohort (slides, slide sheet, label sheet, lesion ground truth)",
        description="Write a synthetic cohort of pyramidal JPEG TIFF slides with µm/px in their resolution tags, "
        "a slide sheet, a label sheet (subtyping label 'normal'/'tumor' and survival time/event) and the lesion "
        "ground truth of positive slides as GeoJSON. Deterministic for a given seed; no downloads.",
    )
    p.add_argument("out_dir", type=Path, help="folder to write the cohort into (created if missing)")
    p.add_argument("--n-slides", type=int, default=24, help="number of slides (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(4608, 3584),
        metavar=("W", "H"),
        help="nominal level-0 slide size in pixels at 0.5 µm/px, jittered per slide (default: 4608 3584)",
    )


def run_demo_cohort(args: argparse.Namespace) -> int:
    from mambamil.demo import generate_cohort

    if args.n_slides < 2:
        raise MambamilError(f"--n-slides must be at least 2, got {args.n_slides}")
    truth = generate_cohort(args.out_dir, args.n_slides, args.seed, tuple(args.size), progress=not args.quiet)
    n_pos = int((truth["label"] == "tumor").sum())
    log.info("wrote %d slides (%d with a lesion) to %s", len(truth), n_pos, args.out_dir)
    return 0
