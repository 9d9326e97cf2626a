"""The ``mambamil`` command line: one verb per pipeline stage (the Snakemake rules call these).

Errors caused by input (a bad slide, a missing file, an invalid config) print one line naming the file and
the cause, and exit 1. ``--debug`` (or ``MAMBAMIL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mambamil import __version__
from mambamil.errors import MambamilError

log = logging.getLogger("mambamil")

Handler = Callable[[argparse.Namespace], int | None]


# -- demo-cohort --------------------------------------------------------------------------------------------
def _add_demo_cohort(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-cohort",
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
    p.set_defaults(func=_run_demo_cohort)


def _run_demo_cohort(args: argparse.Namespace) -> int:
    from mambamil.demo import generate_cohort

    if args.n_slides < 2:
        raise MambamilError(f"--n-slides must be at least 2, got {args.n_slides}")
    truth = generate_cohort(args.out_dir, args.n_slides, args.seed, tuple(args.size), progress=not args.quiet)
    n_pos = int((truth["label"] == "tumor").sum())
    log.info("wrote %d slides (%d with a lesion) to %s", len(truth), n_pos, args.out_dir)
    return 0


# -- tile ---------------------------------------------------------------------------------------------------
def _add_tile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tile",
        help="segment tissue and write the patch grid of one slide",
        description="Segment the tissue of one slide and lay a patch grid at a target resolution. Writes "
        "OUT/<slide_id>.h5 (patch coordinates), OUT/<slide_id>.tissue.geojson (tissue polygons, level-0 px, "
        "QuPath-importable) and OUT/<slide_id>.preview.png. Settings come from the schema defaults, then the "
        "config's 'tiling' section (--config), then the options given here.",
    )
    p.add_argument("slide", type=Path, help="slide file (anything OpenSlide reads)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--slide-id", help="id used for output names (default: the file name without suffix)")
    p.add_argument("--mpp", type=float, help="µm/px override when the slide lacks or misreports its resolution")
    p.add_argument("--config", type=Path, help="config.yaml whose 'tiling' section gives the settings")
    g = p.add_argument_group("tiling settings (override the config)")
    g.add_argument("--target-mpp", type=float, help="patch resolution in µm/px (0.5 ≈ 20×)")
    g.add_argument("--patch-size", type=int, help="patch edge in pixels at --target-mpp")
    g.add_argument("--overlap", type=float, help="fraction of a patch shared with its neighbour, in [0, 1)")
    g.add_argument("--tissue-threshold", type=float, help="minimum tissue fraction of a kept patch")
    g.add_argument("--seg-mpp", type=float, help="resolution of tissue segmentation in µm/px")
    g.add_argument("--saturation-threshold", help="HSV saturation threshold 0–255, or 'otsu'")
    g.add_argument("--min-saturation", type=int, help="floor under the Otsu threshold (0–255)")
    g.add_argument("--median-blur", type=int, help="median filter size in pixels at --seg-mpp")
    g.add_argument("--close-um", type=float, help="morphological closing kernel in µm")
    g.add_argument("--min-tissue-area-um2", type=float, help="drop tissue regions smaller than this (µm²)")
    g.add_argument("--min-hole-area-um2", type=float, help="fill holes smaller than this (µm²)")
    g.add_argument("--preview-max-px", type=int, help="longest edge of the preview PNG")
    p.set_defaults(func=_run_tile)


def _run_tile(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from mambamil.config import load_config, validate_config
    from mambamil.tiling import TilingSettings, tile_slide

    section = load_config(args.config)["tiling"] if args.config else {}
    overrides = {f.name: getattr(args, f.name) for f in fields(TilingSettings)}
    sat = overrides["saturation_threshold"]
    if sat is not None and sat != "otsu":
        try:
            overrides["saturation_threshold"] = int(sat)
        except ValueError as exc:
            raise MambamilError(f"--saturation-threshold must be an integer or 'otsu', got {sat!r}") from exc
    merged = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    checked = validate_config({"slides": "", "labels": "", "tiling": merged}, source="tile options")["tiling"]
    result = tile_slide(args.slide, args.out, TilingSettings.from_config(checked), args.slide_id, args.mpp)
    print(f"{result.slide_id}: {result.n_patches} patches ({result.tissue_area_mm2:.2f} mm² tissue) → {args.out}")
    return 0


# -- validate-config ----------------------------------------------------------------------------------------
def _add_validate_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate-config",
        help="check a config file against the schema and print it with defaults filled in",
        description="Validate a config file against workflow/schemas/config.schema.yaml; errors name the key "
        "path (e.g. tiling.target_mpp). With --sheets, also read the slide and label sheets it names.",
    )
    p.add_argument("config", type=Path, nargs="?", default=Path("config.yaml"), help="default: %(default)s")
    p.add_argument("--sheets", action="store_true", help="also validate the slide and label sheets")
    p.set_defaults(func=_run_validate_config)


def _run_validate_config(args: argparse.Namespace) -> int:
    import yaml

    from mambamil.config import load_config
    from mambamil.sheets import read_label_sheet, read_slide_sheet

    config = load_config(args.config)
    if args.sheets:
        slides = read_slide_sheet(config["slides"])
        labels = read_label_sheet(config["labels"])
        log.info("%d slides, %d labelled slides", len(slides), len(labels))
    print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")
    return 0


# -- entry point --------------------------------------------------------------------------------------------
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo_cohort,
    _add_tile,
    _add_validate_config,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambamil",
        description="Whole-slide images to slide-level predictions and attention heatmaps with SR-Mamba MIL. "
        "Each command is one pipeline stage for one slide (or one fold); the Snakefile runs them for a cohort.",
        epilog="Run 'mambamil COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also MAMBAMIL_DEBUG=1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("MAMBAMIL_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: Handler = args.func
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print(f"mambamil {args.command}: interrupted", file=sys.stderr)
        return 130
    except MambamilError as exc:
        if debug:
            raise
        print(f"mambamil {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        print(
            f"mambamil {args.command}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
