"""``mambamil qc`` (workflow/rules/qc.smk) and ``qc-retry``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambamil.cli.options import Subparsers, add_out, verb
from mambamil.errors import MambamilError


def add_qc(sub: Subparsers) -> None:
    p = verb(
        sub,
        "qc",
        run_qc,
        help="gather every slide's QC outcome into the cohort QC tables",
        description="Read each slide's stage outputs (QC stubs mark excluded slides) and write OUT/slides.csv "
        "(slide_id, case_id, status, stage, cause) and OUT/patients.csv (case_id, n_slides, n_usable, status, "
        "cause; a patient with no usable slide is excluded). Prints the excluded slides.",
    )
    p.add_argument("--slides", type=Path, required=True, help="slide sheet CSV")
    p.add_argument(
        "--stage-file",
        action="append",
        required=True,
        metavar="PATTERN",
        help="a stage output with {slide_id}, e.g. results/tiles/{slide_id}.h5; repeat in stage order",
    )
    add_out(p, "output folder")


def run_qc(args: argparse.Namespace) -> int:
    from mambamil.paths import qc_tables
    from mambamil.qc import collect_qc, exclusion_report, write_table
    from mambamil.sheets import read_slide_sheet

    sheet = read_slide_sheet(args.slides)
    cases = dict(zip(sheet["slide_id"], sheet["case_id"].astype(str), strict=True))
    files = {sid: [Path(p.format(slide_id=sid)) for p in args.stage_file] for sid in cases}
    slides, patients = collect_qc(cases, files)
    tables = qc_tables(args.out)
    write_table(tables["slides"], slides)
    write_table(tables["patients"], patients)
    report = exclusion_report(slides)
    print(report or f"QC: all {len(slides)} slides usable")
    return 0


def add_qc_retry(sub: Subparsers) -> None:
    p = verb(
        sub,
        "qc-retry",
        run_qc_retry,
        help="retry excluded slides: remove their QC stubs so the next workflow run redoes them",
        description="Remove the QC stubs, at every stage (tiles, features of every encoder, orders), of every slide "
        "excluded by QC under RESULTS, or of those whose cause matches --cause. The next 'snakemake' run redoes those "
        "slides and everything downstream (qc table, splits, training, heatmaps). A slide whose file changed since "
        "it was excluded (size or modification time) is retried without this command.",
    )
    p.add_argument("results", type=Path, help="the results folder (config 'results')")
    p.add_argument("--cause", metavar="PATTERN", help="only slides whose cause matches this regular expression")
    p.add_argument("-n", "--dry-run", action="store_true", help="list the slides, remove nothing")


def run_qc_retry(args: argparse.Namespace) -> int:
    from mambamil.qc import retry_excluded

    if not args.results.is_dir():
        raise MambamilError(f"{args.results}: results folder not found")
    retried = retry_excluded(args.results, args.cause, args.dry_run)
    doing = "would retry" if args.dry_run else "retrying"
    for sid, why in retried.items():
        print(f"{sid}: {doing} (was excluded at {why})")
    what = f" matching {args.cause!r}" if args.cause else ""
    print(f"QC: {doing} {len(retried)} excluded slide(s){what}" + ("; now run snakemake" if retried else ""))
    return 0
