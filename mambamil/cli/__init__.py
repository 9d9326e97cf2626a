"""The ``mambamil`` command line: one verb per pipeline stage (the Snakemake rules call these).

Each stage's verbs live in the module named like its rule file (``cli/tiling.py`` ↔ ``workflow/rules/tiling.smk``:
an ``add_<verb>`` that declares the options and a ``run_<verb>`` that runs it); the options several stages share
are in :mod:`mambamil.cli.options`. This module builds the parser and runs a verb.

Errors caused by input (a bad slide, a missing file, an invalid config) print one line naming the file and
the cause, and exit 1; conditions of the environment (disk full, I/O errors, memory; :class:`FaultError`) print one
line ``failed, retry: ...`` and exit 75 (EX_TEMPFAIL), so a scheduler retries them. ``--debug`` (or
``MAMBAMIL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from mambamil import __version__
from mambamil.cli import config, demo, doctor, evaluate, external, features, heatmaps, order, qc, review, tiling, train
from mambamil.cli.options import Handler, Subparsers
from mambamil.errors import FAULT_EXIT, FaultError, MambamilError, fault_from, one_line

# -- entry point --------------------------------------------------------------------------------------------
#: The verbs, in the order ``mambamil --help`` lists them.
COMMANDS: list[Callable[[Subparsers], None]] = [
    demo.add_demo_cohort,
    tiling.add_tile,
    features.add_features,
    order.add_order,
    train.add_splits,
    train.add_train,
    evaluate.add_evaluate,
    train.add_train_final,
    evaluate.add_compare,
    evaluate.add_report,
    external.add_predict,
    heatmaps.add_heatmap,
    external.add_convert_checkpoint,
    qc.add_qc,
    qc.add_qc_retry,
    config.add_validate_config,
    features.add_encoders,
    review.add_review,
    doctor.add_doctor,
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
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's own choice); the workflow passes each rule's threads, so "
        "jobs running side by side do not oversubscribe the cores",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


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
    if args.threads:
        _set_threads(args.threads)
    try:
        return int(handler(args) or 0)
    except BrokenPipeError:  # the reader went away (`mambamil encoders | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except KeyboardInterrupt:
        print(f"mambamil {args.command}: interrupted", file=sys.stderr)
        return 130
    except FaultError as exc:
        if debug:
            raise
        print(f"mambamil {args.command}: failed, retry: {one_line(exc)}", file=sys.stderr)
        return FAULT_EXIT
    except MambamilError as exc:
        if debug:
            raise
        print(f"mambamil {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        fault = fault_from(exc)  # disk full, EIO, EMFILE, MemoryError ... where no stage named the path
        if fault is not None:
            print(f"mambamil {args.command}: failed, retry: {one_line(fault)}", file=sys.stderr)
            return FAULT_EXIT
        print(
            f"mambamil {args.command}: unexpected error: {type(exc).__name__}: {one_line(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
