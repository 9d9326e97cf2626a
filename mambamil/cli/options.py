"""What the verbs share: declaring a verb, the options several stages take, and reading them back."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mambamil.config import json_object, schema_choices
from mambamil.errors import MambamilError
from mambamil.order import METHODS as ORDER_METHODS
from mambamil.order import STORED
from mambamil.qc import MODES as ON_BAD_SLIDE_MODES

Handler = Callable[[argparse.Namespace], int | None]
Subparsers = argparse._SubParsersAction
T = TypeVar("T")


def verb(sub: Subparsers, name: str, run: Handler, help: str, description: str) -> argparse.ArgumentParser:
    """A verb's parser, with ``run`` as its handler."""
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(func=run)
    return p


def add_out(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """The required ``--out`` of a verb that writes one file or folder."""
    p.add_argument("--out", type=Path, required=True, help=what)


def add_settings(p: argparse.ArgumentParser, what: str) -> None:
    """``--settings``: the JSON object the workflow computes for one task (``--spec``: its former name)."""
    p.add_argument("--settings", "--spec", dest="spec", type=json_object, metavar="JSON", required=True, help=what)


def task_settings(args: argparse.Namespace) -> dict:
    """The ``--settings`` of splits/train/evaluate, its ``training`` validated over the schema defaults."""
    from mambamil.config import config_section

    return {**args.spec, "training": config_section("training", settings=args.spec.get("training"))}


def add_on_bad_slide(p: argparse.ArgumentParser) -> None:
    """The QC option of the per-slide stages (README "Bad slides and QC")."""
    p.add_argument(
        "--on-bad-slide",
        choices=list(ON_BAD_SLIDE_MODES),
        default="stop",
        help="on a bad slide (unreadable, no tissue, no patches, excluded upstream): 'stop' with an error, or "
        "'exclude': write QC stubs at the outputs, print the cause and exit 0 (default: %(default)s; the "
        "workflow passes qc.on_bad_slide)",
    )


def add_shard(p: argparse.ArgumentParser | argparse._ArgumentGroup, does: str) -> None:
    """``--shard i/k`` of the verbs that take a slide sheet (``--sheet``): ``does`` rows i, i+k, …"""
    p.add_argument("--shard", help=f"with --sheet: i/k {does} rows i, i+k, i+2k, … (0 <= i < k)")


def sheet_shard(args: argparse.Namespace, jobs: Sequence[T]) -> list[T]:
    """The --shard of ``jobs`` read from --sheet (all of them without --shard)."""
    from mambamil.slide_jobs import parse_shard, shard

    return shard(jobs, *parse_shard(args.shard)) if args.shard else list(jobs)


def refuse_shard_without_sheet(args: argparse.Namespace) -> None:
    if args.shard:
        raise MambamilError("--shard works with --sheet")


def add_cohort_args(p: argparse.ArgumentParser) -> None:
    """The label sheet, feature folder, task settings and QC table of splits/train/train-final."""
    p.add_argument("--labels", type=Path, required=True, help="label sheet CSV")
    p.add_argument("--features-dir", type=Path, required=True, help="folder of <slide_id>.h5 feature files")
    add_settings(
        p,
        "JSON with task_name, task, training (the validated 'training' section with the task's overrides) "
        "and for train order_seed, model_name and model",
    )
    p.add_argument("--qc", type=Path, help="QC table (results/qc/slides.csv); its excluded slides are left out")


def add_order_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--order-dir", type=Path, help="folder of <slide_id>.npy sequence orders (default: file order)")


# -- checkpoints: the order override and the metadata an original MambaMIL state dict lacks ------------------
def add_order_override(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--order",
        choices=[*ORDER_METHODS, STORED],
        help="override the sequence order stored in the checkpoint (a warning says so; 'stored': the bag's own "
        "order); default: the order the model was trained on",
    )


#: Mixer layers of an original MambaMIL checkpoint (mambamil.models.sr_mamba.LAYERS, which needs torch to import).
ORIGINAL_LAYERS = ("srmamba", "bimamba", "mamba")


def add_original_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group(
        "original MambaMIL checkpoints",
        "a bare state dict from isyangshu/MambaMIL (s_<fold>_checkpoint.pt) cannot tell these; give them all "
        "(nothing is guessed). Ignored, with a warning, for project checkpoints.",
    )
    g.add_argument("--layer", choices=list(ORIGINAL_LAYERS), required=required, help="mixer layer type")
    g.add_argument("--rate", type=int, required=required, help="SRMamba reorder rate (the training script's)")
    g.add_argument("--task", choices=schema_choices("tasks", "*", "type"), required=required, help="task type")
    g.add_argument("--classes", nargs="+", help="class names in output order (classification)")
    g.add_argument("--n-bins", type=int, help="number of survival time bins (survival)")


def original(args: argparse.Namespace) -> dict[str, Any]:
    """Original-checkpoint metadata given on the command line (None where not given)."""
    return {k: getattr(args, k) for k in ("layer", "rate", "task", "classes", "n_bins")}
