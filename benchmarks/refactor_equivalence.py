"""Behaviour-unchanged check for refactors: run a reduced demo study through the Snakemake workflow of a given
checkout (its demo-cohort verb writes the cohort) and write a digest of its numbers (predictions, metrics, model
comparison, heatmap scores, QC tables, external-cohort predictions, sequence orders and the trained weights).
Two checkouts that behave the same write identical digests.

    python benchmarks/refactor_equivalence.py --repo /work/wt/30-base --out /tmp/base   # before
    python benchmarks/refactor_equivalence.py --repo .               --out /tmp/after  # after
    diff /tmp/base/digest.json /tmp/after/digest.json && echo identical

``--repo`` is the checkout whose Snakefile and package run (it is put first on PYTHONPATH). The study: 12 demo
slides at a reduced size, 2 folds, 3 epochs, mambamil and abmil on both demo tasks, the final models, heatmaps,
and the same cohort once more as an external cohort (predict with labels). About 5–10 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

DEMO = ["--n-slides", "12", "--seed", "3", "--size", "3072", "2304"]
STUDY = {
    "features": {"encoder": "timm:resnet18", "weights": "random", "batch_size": 64, "num_workers": 0},
    "order": {"methods": ["raster", "hilbert"], "seed": 0},
    "tasks": {
        "subtype": {"type": "classification", "classes": ["normal", "tumor"], "label_column": "label"},
        "survival": {"type": "survival", "n_bins": 2},
    },
    "models": {
        "mambamil": {"model": "mambamil", "layer": "srmamba", "rate": 5, "n_layers": 1, "dropout": 0.25},
        "abmil": {"model": "abmil", "dropout": 0.25},
    },
    "training": {
        "folds": 2,
        "val_fraction": 0.25,
        "epochs": 3,
        "min_epochs": 1,
        "patience": 2,
        "device": "cpu",
        "standardize_features": True,
        "final_model": True,
    },
    "evaluation": {"n_resamples": 1000, "seed": 0, "min_patients": 4},
    "heatmaps": {"task": "subtype", "model": "mambamil", "mpp": 16.0, "top_k": 2},
    "qc": {"on_bad_slide": "exclude"},
}


def _numbers(obj, run_dir: str):
    """JSON content with the run folder's path removed (it differs between runs) and floats kept exactly."""
    if isinstance(obj, dict):
        return {k: _numbers(v, run_dir) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [_numbers(v, run_dir) for v in obj]
    if isinstance(obj, float):
        return "nan" if math.isnan(obj) else obj.hex()
    if isinstance(obj, str):
        return obj.replace(run_dir, "<run>")
    return obj


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def digest(results: Path, run_dir: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of every file whose numbers the study's outcome is made of."""
    import torch

    out: dict[str, str] = {}
    run = str(run_dir)
    for path in sorted(results.rglob("*")):
        rel = str(path.relative_to(results))
        if path.suffix == ".csv" and not rel.startswith("logs"):
            out[rel] = _sha(path.read_bytes().replace(run.encode(), b"<run>"))
        elif path.name in ("metrics.json", "summary.json") or path.name.endswith("metrics.json"):
            out[rel] = _sha(json.dumps(_numbers(json.loads(path.read_text()), run), sort_keys=True).encode())
        elif path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
            h = hashlib.sha256()
            for key in sorted(state):
                h.update(key.encode())
                h.update(state[key].numpy().tobytes())
            out[rel] = h.hexdigest()[:16]
        elif path.suffix == ".npy":
            out[rel] = _sha(path.read_bytes())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to run")
    parser.add_argument("--out", type=Path, required=True, help="run folder (digest.json is written into it)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--digest-only", action="store_true", help="digest the results already in --out again")
    args = parser.parse_args()
    repo, run_dir = args.repo.resolve(), args.out.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    def config_sheet(name: str) -> str:
        return str(run_dir / "demo" / f"{name}.csv")

    config = {
        "slides": config_sheet("slides"),
        "labels": config_sheet("labels"),
        "results": str(run_dir / "results"),
        **STUDY,
        "external": {"again": {"slides": config_sheet("slides"), "labels": config_sheet("labels")}},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if args.digest_only:
        return write_digest(run_dir)
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONHASHSEED": "0"}
    if not (run_dir / "demo" / "slides.csv").exists():  # a second call resumes the run (snakemake's own rules)
        demo = [sys.executable, "-m", "mambamil", "--quiet", "demo-cohort", str(run_dir / "demo"), *DEMO]
        subprocess.run(demo, check=True, env=env, cwd=run_dir)
    # --keep-going: a job that fails (in both checkouts alike) leaves the rest of the study to compare; which
    # outputs are missing is part of the digest (the file list) and snakemake's exit status is recorded.
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(run_dir),
           "--configfile", str(run_dir / "config.yaml"), "--cores", str(args.cores), "--keep-going"]  # fmt: skip
    rc = subprocess.run(cmd, env=env, cwd=run_dir).returncode
    (run_dir / "snakemake_rc").write_text(f"{rc}\n")
    return write_digest(run_dir)


def write_digest(run_dir: Path) -> int:
    result = digest(run_dir / "results", run_dir)
    rc_file = run_dir / "snakemake_rc"
    result["snakemake exit status"] = rc_file.read_text().strip() if rc_file.exists() else "not recorded"
    (run_dir / "digest.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{len(result)} files digested → {run_dir / 'digest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
