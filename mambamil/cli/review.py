"""``mambamil review``: the heatmap review server over a finished results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambamil.cli.options import Subparsers, verb
from mambamil.errors import MambamilError
from mambamil.review import HOST, PORT


def add_review(sub: Subparsers) -> None:
    p = verb(
        sub,
        "review",
        run_review,
        help="start a local review server over a finished results folder (cohort table, slide viewer, verdicts)",
        description="Serve the cohort's slides in the browser: a sortable, filterable table of every slide "
        "(prediction, fold, correct or not, QC), a deep-zoom viewer of each slide read on demand through "
        "OpenSlide with the heatmap scores as an overlay, and per-slide verdicts saved to "
        "RESULTS/review/verdicts.csv as they are typed. Binds 127.0.0.1; on a cluster, forward the port with "
        "'ssh -L PORT:localhost:PORT host'. Binding another address needs an access token in "
        "MAMBAMIL_REVIEW_TOKEN (every request must then carry it; open the address printed at start).",
    )
    p.add_argument("results", type=Path, help="the workflow's results folder (e.g. results/)")
    p.add_argument("--port", type=int, default=PORT, help="TCP port (default: %(default)s)")
    p.add_argument("--host", default=HOST, help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--task", help="evaluation task the predictions come from (default: the heatmaps' own)")
    p.add_argument("--model", help="evaluation model the predictions come from (default: the heatmaps' own)")


def run_review(args: argparse.Namespace) -> int:
    try:
        from mambamil.review import ReviewData
        from mambamil.review_server import serve
    except ImportError as exc:
        hint = "the review server needs the 'review' extra: pip install 'mambamil[review]'"
        raise MambamilError(f"{hint} ({exc})") from exc
    serve(ReviewData(args.results, task=args.task, model=args.model), host=args.host, port=args.port)
    return 0
