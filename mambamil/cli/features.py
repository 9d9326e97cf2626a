"""``mambamil features`` (workflow/rules/features.smk) and ``mambamil encoders`` (the encoder presets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambamil.cli.options import (
    Subparsers,
    add_on_bad_slide,
    add_shard,
    refuse_shard_without_sheet,
    sheet_shard,
    verb,
)
from mambamil.config import add_section_options, section_from_args
from mambamil.errors import MambamilError
from mambamil.qc import EXCLUDED


def add_features(sub: Subparsers) -> None:
    p = verb(
        sub,
        "features",
        run_features,
        help="embed the patches of one or more slides with a patch encoder",
        description="Read the patches listed in a tile-stage coordinates file (at its target µm/px and patch size), "
        "embed them in batches and write OUT_H5: 'features' (N, D) and 'coords' (N, 2, identical to the coords "
        "file), with the encoder, its weights (source and SHA-256), normalisation and resolution as attributes. "
        "A rerun whose output already matches the settings is skipped. Several slides (or a slide sheet, "
        "optionally one --shard of it) run in one process with the encoder built once; a bad slide is reported "
        "on one line and the others finish (exit 1 at the end). Settings come from the schema defaults, "
        "then the config's 'features' section (--config), then --settings, then the options given here.",
    )
    p.add_argument(
        "slide", type=Path, nargs="*", help="slide file(s) (the ones the coordinates were made from); or use --sheet"
    )
    p.add_argument(
        "--coords", type=Path, nargs="+", metavar="COORDS_H5", help="tile-stage coordinates file(s), one per slide"
    )
    p.add_argument("--out", type=Path, nargs="+", metavar="OUT_H5", help="output feature file(s) (.h5), one per slide")
    p.add_argument("--slide-id", nargs="+", help="slide id(s) stored in the output (default: from the coords file)")
    m = p.add_argument_group("many slides in one process (encoder and device set up once)")
    m.add_argument("--sheet", type=Path, help="slide sheet CSV instead of SLIDE arguments")
    m.add_argument("--coords-dir", type=Path, help="with --sheet: folder of <slide_id>.h5 coordinates files")
    m.add_argument("--out-dir", type=Path, help="with --sheet: output folder for <slide_id>.h5")
    add_shard(m, "runs")
    p.add_argument("--profile", action="store_true", help="time each stage of the data path and print a table")
    p.add_argument("--force", action="store_true", help="recompute even if the output matches the settings")
    add_section_options(p, "features")
    add_on_bad_slide(p)


def feature_jobs(args: argparse.Namespace) -> list:
    """The slides of a features call: SLIDE arguments with --coords/--out, or --sheet (optionally one shard)."""
    from mambamil.features.many_slides import jobs_from_lists, jobs_from_sheet

    if args.sheet is not None:
        if args.slide:
            raise MambamilError("give SLIDE arguments or --sheet, not both")
        if args.coords_dir is None or args.out_dir is None:
            raise MambamilError("--sheet needs --coords-dir and --out-dir")
        return sheet_shard(args, jobs_from_sheet(args.sheet, args.coords_dir, args.out_dir))
    refuse_shard_without_sheet(args)
    if not args.slide or args.coords is None or args.out is None:
        raise MambamilError("give SLIDE [SLIDE ...] with --coords and --out (one each per slide), or --sheet")
    return jobs_from_lists(args.slide, args.coords, args.out, args.slide_id)


def run_features(args: argparse.Namespace) -> int:
    from mambamil.features.extract import FeatureSettings
    from mambamil.features.many_slides import extract_slides

    settings = FeatureSettings.from_config(section_from_args(args, "features"))
    jobs = feature_jobs(args)

    def report(outcome) -> None:
        result, out = outcome.result, outcome.job.out
        if outcome.status in ("failed", EXCLUDED):
            return
        if result.skipped:
            print(f"{result.slide_id}: {out} is up to date ({result.n_patches} patches); skipped")
        else:
            print(
                f"{result.slide_id}: {result.n_patches} patches × {result.dim} ({settings.encoder}, "
                f"{result.patches_per_s:.1f} patches/s) → {out}"
            )
        if result.profile is not None:
            print(result.profile.table())

    outcomes = extract_slides(
        jobs,
        settings,
        args.force,
        not args.quiet,
        args.profile,
        on_done=report,
        isolate_failures=len(jobs) > 1,
        on_bad_slide=args.on_bad_slide,
    )
    failed = [o.job.slide_id or o.job.slide.stem for o in outcomes if o.status == "failed"]
    if failed:
        raise MambamilError(f"{len(failed)} of {len(outcomes)} slide(s) failed: {', '.join(failed)}")
    return 0


def add_encoders(sub: Subparsers) -> None:
    p = verb(
        sub,
        "encoders",
        run_encoders,
        help="list the encoder presets (foundation models exactly as their authors run them)",
        description="The encoder presets of features.encoder: name, model, output dimension, input size and "
        "interpolation, µm/px it was trained at, output recipe, mean/std, weight source and licence. Any other "
        "timm model is timm:<name>.",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="default: %(default)s")
    p.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="only the presets whose name or builder.name tag matches this shell pattern (e.g. 'timm_vit.*', "
        "'uni*'; default: all)",
    )


def run_encoders(args: argparse.Namespace) -> int:
    import json

    from mambamil.features.presets import preset_table

    rows = preset_table(args.pattern)
    if not rows:
        raise MambamilError(f"no encoder preset matches {args.pattern!r} (mambamil encoders lists them all)")
    if args.format == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print("\nAny other timm model: encoder timm:<name> (features.mean/std/input_size/interpolation/pooling).")
    return 0
