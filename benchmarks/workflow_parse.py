"""Parse + plan time of the workflow (``snakemake -n``) on a fake 3,000-slide cohort, this checkout against a baseline
revision (default: the one before issue 28, whose ``retry_changed_slides()`` opened every stage output of every slide
when the Snakefile was parsed and backdated the tile outputs of changed excluded slides), in the same run.

    python benchmarks/workflow_parse.py [--slides 3000] [--baseline-rev 72b416e] [--repeat 2]

The cohort: one small file per slide (stat'ed, never opened by a dry run), a slide and a label sheet, and under
results/ every slide's tile outputs, features and raster order: 1 MiB sparse files (real outputs; too large to be a
QC stub, so never opened), except 1 % QC stubs (real ones, mambamil.qc.write_stub) of which a tenth record a slide
file that has changed since. Each variant parses the workflow alone (``snakemake --list-rules``), then runs
``snakemake -n`` on the default target; the table gives both wall times, their ratios to the baseline, and how many
files under results/ the two runs changed (mtime or size; the baseline's parse-time backdating shows there).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mambamil import paths  # noqa: E402
from mambamil.qc import QCOutcome, SlideStat, write_stub  # noqa: E402

ENCODER = {"encoder": "timm:resnet18", "weights": "random", "tag": None}


def make_cohort(root: Path, n: int) -> Path:
    """The fake cohort under ``root``; returns the config file."""
    slides_dir, results = root / "slides", root / "results"
    slides_dir.mkdir(parents=True)
    ids = [f"s{i:05d}" for i in range(n)]
    rows, labels = ["slide_id,path,case_id"], ["case_id,slide_id,label"]
    for i, sid in enumerate(ids):
        (slides_dir / f"{sid}.svs").write_bytes(b"\0" * 512)
        rows.append(f"{sid},{slides_dir / f'{sid}.svs'},p{i // 2:05d}")
        labels.append(f"p{i // 2:05d},{sid},{'tumor' if (i // 2) % 2 else 'normal'}")
    (root / "slides.csv").write_text("\n".join(rows) + "\n")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    tiles = paths.tiles_dir(results)
    feats = paths.features_dir(results, "timm-resnet18-random")
    order = paths.order_dir(feats, "raster")
    for d in (tiles, feats, order):
        d.mkdir(parents=True, exist_ok=True)
    for i, sid in enumerate(ids):
        outs = [*paths.tile_outputs(tiles, sid).values(), paths.feature_file(feats, sid), paths.order_file(order, sid)]
        if i % 100 == 7:  # 1 % excluded; every tenth of those with a slide file changed since
            slide = SlideStat.of(slides_dir / f"{sid}.svs")
            if i % 1000 == 7:
                slide = SlideStat(slide.file, slide.size + 1, slide.mtime_ns)
            for p in outs:
                write_stub(p, QCOutcome(sid, "tile", "not a slide format OpenSlide can read", slide))
        else:
            for p in outs:
                with open(p, "wb") as fh:
                    fh.truncate(1 << 20)
    config = {
        "slides": str(root / "slides.csv"),
        "labels": str(root / "labels.csv"),
        "results": str(results),
        "features": ENCODER,
        "order": {"methods": ["raster"]},
        "tasks": {"subtype": {"type": "classification", "classes": ["normal", "tumor"]}},
        "models": {"mean": {"model": "mean"}},
        "training": {"folds": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snapshot(results: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in results.rglob("*") if p.is_file()}


def dry_run(tree: Path, config: Path, workdir: Path) -> tuple[float, int, int, str, float]:
    """Wall seconds of ``snakemake -n``, tile jobs it plans, files under results/ it changed, its return code, and
    the wall seconds of parsing alone (``snakemake --list-rules``: the Snakefile is read, no job is planned)."""
    results = Path(yaml.safe_load(config.read_text())["results"])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(tree / "Snakefile"), "--configfile",
           str(config), "--replace-workflow-config", "--cores", "1", "--directory", str(workdir)]  # fmt: skip
    before = snapshot(results)
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--list-rules"], capture_output=True, env=env, cwd=workdir, check=False)
    parse = time.perf_counter() - t0
    cmd.append("-n")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, check=False)  # cwd: not on sys.path
    wall = time.perf_counter() - t0
    after = snapshot(results)
    changed = sum(after.get(k) != v for k, v in before.items())
    tile = 0
    for line in (res.stdout + res.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "tile" and parts[1].isdigit():
            tile = int(parts[1])
    status = "ok" if res.returncode == 0 else f"rc {res.returncode}: {(res.stderr or res.stdout)[-300:]}"
    return wall, tile, changed, status, parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=3000)
    ap.add_argument("--baseline-rev", default="72b416e", help="git revision of the baseline workflow")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mambamil-parse-") as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline"
        base.mkdir()
        git = ["git", "-C", str(ROOT), "archive", args.baseline_rev]
        archive = subprocess.run(git, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        t0 = time.perf_counter()
        config = make_cohort(tmp / "cohort", args.slides)
        print(f"# {args.slides} slides, fake cohort made in {time.perf_counter() - t0:.1f} s; "
              f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
        runs: dict[str, list[tuple[float, int, int, str, float]]] = {
            "this checkout": [],
            f"baseline {args.baseline_rev}": [],
        }
        for _ in range(args.repeat):  # this checkout first: the baseline's dry run backdates files
            for (name, tree), wd in zip([("this checkout", ROOT), (f"baseline {args.baseline_rev}", base)],
                                        ("wd_new", "wd_base"), strict=True):  # fmt: skip
                (tmp / wd).mkdir(exist_ok=True)
                runs[name].append(dry_run(tree, config, tmp / wd))
        base_wall = statistics.median(r[0] for r in runs[f"baseline {args.baseline_rev}"])
        base_parse = statistics.median(r[4] for r in runs[f"baseline {args.baseline_rev}"])
        print("| workflow | parse only (--list-rules) s, median (runs) | ratio | snakemake -n s, median (runs) | ratio "
              "| tile jobs planned | files under results/ changed by parse + dry run | status |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for name, rs in runs.items():
            wall, parse = statistics.median(r[0] for r in rs), statistics.median(r[4] for r in rs)
            print(f"| {name} | {parse:.1f} ({', '.join(f'{r[4]:.1f}' for r in rs)}) | {parse / base_parse:.2f} | "
                  f"{wall:.1f} ({', '.join(f'{r[0]:.1f}' for r in rs)}) | {wall / base_wall:.2f} | "
                  f"{rs[0][1]} | {', '.join(str(r[2]) for r in rs)} | {rs[0][3]} |")  # fmt: skip
        shutil.rmtree(tmp / "cohort", ignore_errors=True)


if __name__ == "__main__":
    main()
