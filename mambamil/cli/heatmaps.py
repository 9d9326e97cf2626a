"""``mambamil heatmap`` (workflow/rules/heatmaps.smk)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambamil.cli.options import Subparsers, add_order_override, add_original_args, add_out, original, verb
from mambamil.config import add_section_options, section_from_args


def add_heatmap(sub: Subparsers) -> None:
    p = verb(
        sub,
        "heatmap",
        run_heatmap,
        help="draw a trained model's per-patch scores onto one slide and export them for review",
        description="Attention of one checkpoint, or the mean over several (e.g. every fold model), as rank "
        "percentiles drawn over the slide at --mpp µm/px (block by block: memory stays bounded on any slide "
        "size), plus gradient × input attribution (independent of the pooling weights). Writes "
        "<slide_id>.attention.png, <slide_id>.gradxinput.png (with colour bars), <slide_id>.scores.csv, "
        "<slide_id>.patches.geojson (patch squares with scores as QuPath measurements) and top-/bottom-k "
        "patch montages into --out.",
    )
    p.add_argument("slide", type=Path, help="slide file")
    p.add_argument("--features", type=Path, required=True, help="the slide's feature H5")
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="checkpoint.pt file(s); averaged")
    add_out(p, "output folder")
    p.add_argument("--slide-id", help="id for output names (default: the slide file name)")
    p.add_argument("--slide-mpp", type=float, help="µm/px override of the slide")
    add_section_options(p, "heatmaps")
    add_order_override(p)
    add_original_args(p)


def run_heatmap(args: argparse.Namespace) -> int:
    from mambamil.heatmaps import HeatmapSettings, heatmap_slide

    settings = HeatmapSettings.from_config(section_from_args(args, "heatmaps"))
    summary = heatmap_slide(
        args.slide,
        args.features,
        args.checkpoint,
        args.out,
        settings,
        args.slide_id,
        args.slide_mpp,
        original(args),
        order=args.order,
    )
    print(f"{summary['slide_id']}: {summary['n_patches']} patches, maps {summary['scores']} → {args.out}")
    return 0
