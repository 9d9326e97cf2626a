"""The command line keeps every verb and option: the parser against a snapshot taken before cli.py became the
``mambamil.cli`` package (tests/data/cli_options.json: verb → option → [dest, required, nargs, choices, default]).
A verb or option added on purpose is added to the snapshot in the same change."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from mambamil.cli import build_parser, main

SNAPSHOT = Path(__file__).parent / "data" / "cli_options.json"


def describe(parser: argparse.ArgumentParser) -> dict[str, list]:
    return {
        " ".join(a.option_strings) or a.dest: [
            a.dest,
            a.required,
            a.nargs,
            list(a.choices) if a.choices is not None else None,
            repr(a.default),
        ]
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction)
    }


def test_every_verb_keeps_every_option() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    now = {"": describe(parser)} | {name: describe(p) for name, p in sub.choices.items()}
    expected = json.loads(SNAPSHOT.read_text())
    assert sorted(now) == sorted(expected)
    for verb in expected:
        assert now[verb] == expected[verb], verb


def test_every_verb_has_a_handler_and_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helped = {a.dest for a in sub._choices_actions}
    for name, p in sub.choices.items():
        assert callable(p.get_default("func")), name
        assert name in helped and p.description, name


def test_entry_points() -> None:
    """``mambamil = "mambamil.cli:main"`` (pyproject) and ``python -m mambamil`` reach the same parser."""
    script = next(ep for ep in entry_points(group="console_scripts") if ep.name == "mambamil")
    assert script.value == "mambamil.cli:main" and script.load() is main
    out = subprocess.run(
        [sys.executable, "-m", "mambamil", "qc-retry", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--dry-run" in out and "--cause" in out
