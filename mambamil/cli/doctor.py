"""``mambamil doctor``: what this machine will use for each stage, and why (the checks: :mod:`mambamil.doctor`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambamil.cli.options import Subparsers, verb


def add_doctor(sub: Subparsers) -> None:
    p = verb(
        sub,
        "doctor",
        run_doctor,
        help="print what this machine will use and why (devices, scan backend and its self-check, OpenSlide, weights)",
        description="Devices; the selective-scan backend 'auto' picks on each and why (mamba-ssm, Triton, and the "
        "result of the Triton self-check, run here on every GPU); OpenSlide; the encoder weights found (the "
        "config's features.weights, each preset's release in the Hugging Face cache). Downloads nothing.",
    )
    p.add_argument("--config", type=Path, help="also check this config's features.weights and scan_selfcheck")
    p.add_argument("--no-selfcheck", action="store_true", help="do not run the Triton self-check on the GPUs")
    p.add_argument("--format", choices=("table", "json"), default="table", help="default: %(default)s")


def run_doctor(args: argparse.Namespace) -> int:
    from mambamil.doctor import diagnose

    config = None
    if args.config is not None:
        from mambamil.config import load_config
        from mambamil.ops import selfcheck

        config = load_config(args.config)
        selfcheck.set_enabled(config["training"]["scan_selfcheck"])
    rows = diagnose(config, run_check=not args.no_selfcheck)
    if args.format == "json":
        print(json.dumps([{"topic": t, "found": f, "why": w} for t, f, w in rows], indent=2, ensure_ascii=False))
        return 0
    width = max(len(t) for t, _, _ in rows)
    for topic, found, why in rows:
        print(f"{topic:<{width}}  {found}  — {why}")
    return 0
