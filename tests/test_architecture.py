"""docs/architecture.md stays true: every import inside the package (deferred ones and TYPE_CHECKING ones too)
goes down the layer list or stays within a layer, and every module belongs to a layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mambamil"
DOC = ROOT / "docs" / "architecture.md"


def layers(text: str) -> dict[str, int]:
    """Name (relative to mambamil) → layer number, from the numbered list of the document (bottom first)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"(\d+)\. [^`]*?—((?: `[\w.]+`)+)", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                out[name] = int(m.group(1))
    return out


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1]) or "__init__" if parts[-1] == "__init__" else ".".join(parts)


def is_module(name: str) -> bool:
    """Whether ``mambamil.<name>`` is a module or package of the tree (not a name defined in one)."""
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, relative to mambamil (``__init__`` for the package root)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}"[9:]) else node.module
                     for a in node.names]  # fmt: skip
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: relative import; the layer check reads absolute ones")
        else:
            continue
        found |= {
            "__init__" if n == "mambamil" else n[len("mambamil.") :] for n in names if n.split(".")[0] == "mambamil"
        }
    return found


def layer_of(name: str, table: dict[str, int]) -> int | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in table:
            return table[".".join(parts[:i])]
    return None


def violations(table: dict[str, int], package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        here = module_name(path, package)
        own = layer_of(here, table)
        if own is None:
            problems.append(f"{here}: in no layer of docs/architecture.md")
            continue
        for target in sorted(imports(path)):
            if target.split(".")[0] == here.split(".")[0] and here != "__init__":
                continue  # within its own subpackage: a layer's inside
            theirs = layer_of(target, table)
            if theirs is None or theirs > own:
                problems.append(f"{here} (layer {own}) imports {target} (layer {theirs})")
    return problems


def test_the_document_lists_layers_bottom_to_top() -> None:
    table = layers(DOC.read_text())
    assert sorted(set(table.values())) == list(range(1, max(table.values()) + 1))
    assert table["errors"] == 1 and table["cli"] == max(table.values())
    assert table["evaluation"] < table["inference"] < table["train"]  # issue 26's package, whether made yet or not


def test_every_import_goes_down_or_sideways() -> None:
    assert violations(layers(DOC.read_text())) == []


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("def f():\n    from mambamil.cli import main\n", "deferred import up"),
        ("from mambamil import train\n", "from-import of a module up"),
        ("import mambamil.heatmaps as h\n", "plain import up"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, source: str, why: str) -> None:
    fake = tmp_path / "mambamil"
    fake.mkdir()
    (fake / "errors.py").write_text(source)
    problems = violations(layers(DOC.read_text()), fake)
    assert problems and problems[0].startswith("errors (layer 1) imports"), why
