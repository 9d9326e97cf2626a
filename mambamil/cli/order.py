"""``mambamil order`` (workflow/rules/order.smk)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mambamil.cli.options import ORDER_METHODS, Subparsers, add_on_bad_slide, add_out, verb
from mambamil.config import add_section_options, section_from_args
from mambamil.errors import MambamilError

log = logging.getLogger("mambamil")


def add_order(sub: Subparsers) -> None:
    p = verb(
        sub,
        "order",
        run_order,
        help="write the instance sequence (permutation) of one slide's bag",
        description="Compute the order in which the scan reads a slide's patches: raster (row-major, as "
        "MambaMIL), snake (boustrophedon), hilbert (Hilbert curve over the patch grid) or random (a seeded "
        "control). Writes a .npy int64 permutation of the bag's instances, applied when bags load.",
    )
    p.add_argument("features", type=Path, help="feature (or coordinates) H5 of one slide")
    p.add_argument("--method", choices=list(ORDER_METHODS), default="hilbert")
    add_out(p, "output .npy file")
    add_section_options(p, "order")
    add_on_bad_slide(p)


def run_order(args: argparse.Namespace) -> int:
    from mambamil.h5layout import read_bag
    from mambamil.order import slide_order, write_order
    from mambamil.qc import QCOutcome, run_slide_stage

    seed = section_from_args(args, "order")["seed"]

    def work() -> int:
        bag = read_bag(args.features)
        if bag.coords is None:
            raise MambamilError(f"{args.features}: the bag has no coordinates, so it cannot be ordered")
        perm = slide_order(bag.coords, bag.coords_meta, args.method, seed, args.features.stem)
        write_order(args.out, perm)
        return len(perm)

    n = run_slide_stage("order", args.features.stem, [args.out], [args.features], args.on_bad_slide, work)
    if isinstance(n, QCOutcome):
        return 0
    log.info("%s: %s order of %d instances → %s", args.features.stem, args.method, n, args.out)
    return 0
