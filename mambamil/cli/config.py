"""``mambamil validate-config``: the config file against the schema (and, with --sheets, its sheets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambamil.cli.options import Subparsers, verb


def add_validate_config(sub: Subparsers) -> None:
    p = verb(
        sub,
        "validate-config",
        run_validate_config,
        help="check a config file against the schema and print it with defaults filled in",
        description="Validate a config file against workflow/schemas/config.schema.yaml; errors name the key "
        "path (e.g. tiling.target_mpp). With --sheets, also read the slide and label sheets it names.",
    )
    p.add_argument("config", type=Path, nargs="?", default=Path("config.yaml"), help="default: %(default)s")
    p.add_argument("--sheets", action="store_true", help="also validate the slide and label sheets")


def run_validate_config(args: argparse.Namespace) -> int:
    import yaml

    from mambamil.config import load_config
    from mambamil.sheets import check_sheets

    config = load_config(args.config)
    if args.sheets:
        check_sheets(config)
    print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), end="")
    return 0
