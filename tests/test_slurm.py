"""The workflow on a real SLURM: profiles/slurm + snakemake-executor-plugin-slurm against a one-node cluster.

Needs a running SLURM with two (fake) GPUs and memory limits enforced, as set up by tests/slurm/start_slurm.sh.
Runs under the README's test command whenever `sinfo` reaches such a cluster (`.ci/run` starts one first, via
`.ci/slurm.sh start`), and is skipped otherwise, unless MAMBAMIL_REQUIRE_SLURM=1 (set by `.ci/run`), where a
missing cluster fails. On a machine of your own (root):

    .ci/slurm.sh                      # installs and starts SLURM, runs this file, stops SLURM
    .ci/slurm.sh start; pytest tests/test_slurm.py; .ci/slurm.sh stop

The cluster has no accounting database (status via squeue) and no account.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _workflow_checks import assert_heatmaps_drawn_by_test_fold_models

from mambamil import demo
from mambamil.h5layout import read_coords

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The smallest demo cohort (seed 1) whose 2 folds (training seed 0) each train on both classes; the first N_STAGE1
# slides go through the per-slide stages one SLURM job per slide, the rest in grouped jobs.
N_SLIDES = 7
N_STAGE1 = 3
EVALUATE_MEM_MB = 500  # below what the evaluate job needs (Snakemake + torch: ~750 MB measured), so attempt 1 runs out
# Settings of this test cluster, on top of profiles/slurm: no accounting → squeue; no account; fast polling.
CLUSTER_ARGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks",
    "3",
    "--slurm-keep-successful-logs",
    "--latency-wait",
    "10",
    "--retries",
    "0",
    "--verbose",  # logs every sbatch call
]


def _snakemake(repo_root: Path, workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Jobs run `python -m snakemake` / `python -m mambamil` on the "compute node" (sbatch --export=ALL):
    # put this interpreter first on PATH even when pytest was started without activating the venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in [v for v in env if v.startswith("SLURM_")]:
        del env[var]  # a test started inside a SLURM job must not leak its allocation into sbatch
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo_root / "Snakefile"),
        "--profile",
        str(repo_root / "profiles" / "slurm"),
        *CLUSTER_ARGS,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env)


def _sbatch_calls(log: str) -> list[str]:
    return re.findall(r"sbatch call: (sbatch .*)", log)


def _job_ids(log: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", log)


def _scontrol_job(job_id: str) -> str:
    """`scontrol show job` (finished jobs stay listed for MinJobAge = 300 s on the test cluster)."""
    res = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    return res.stdout


def _cluster_problem() -> str | None:
    """Why no usable test cluster is up (None when one is): sbatch and sinfo present, a node up with GPU gres."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "sbatch/sinfo not on PATH (.ci/slurm.sh start installs and starts a test cluster)"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%t %G"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if res.returncode != 0 or not re.search(r"^(idle|mix|alloc)\S* ", res.stdout, re.MULTILINE):
        return f"SLURM is not up: {(res.stdout + res.stderr).strip()[:300]}"
    if "gpu" not in res.stdout:
        return f"the cluster has no GPU gres (tests/slurm/start_slurm.sh makes two fake ones): {res.stdout.strip()}"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("MAMBAMIL_REQUIRE_SLURM") == "1":
            pytest.fail(f"MAMBAMIL_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def test_demo_workflow_on_slurm_with_gpu_requests_and_memory_retries(cluster, repo_root: Path, tmp_path: Path) -> None:
    # A small demo cohort (2048×1536 px slides) made here; the workflow's own demo_cohort rule makes full-size ones.
    demo.generate_cohort(tmp_path / "demo", n_slides=N_SLIDES, seed=1, size=(2048, 1536), progress=False)
    config = {
        "slides": str(tmp_path / "demo" / "slides.csv"),
        "labels": str(tmp_path / "demo" / "labels.csv"),
        "results": str(tmp_path / "results"),
        # Small and offline: a random-weight ResNet-18 on the CPU (the test cluster's GPUs are fake).
        # One slide per features job (rules features_batch0 … features_batch<N-1>), so jobs map to slides.
        "features": {
            "encoder": "timm:resnet18",
            "weights": "random",
            "device": "cpu",
            "num_workers": 0,
            "slides_per_job": 1,
        },
        "order": {"methods": ["raster"]},
        "tasks": {"subtype": {"type": "classification", "classes": ["normal", "tumor"]}},
        "models": {"mean": {"model": "mean"}},
        "training": {
            "seed": 0,
            "folds": 2,
            "epochs": 2,
            "min_epochs": 1,
            "patience": 1,
            "val_fraction": 0.25,
            "device": "cpu",
        },
        "heatmaps": {"mpp": 16.0, "top_k": 2},
        "resources": {
            "tile": {"threads": 1, "mem_mb": 1500, "runtime": 10},
            "features": {"threads": 1, "mem_mb": 3000, "runtime": 15, "gpu": 1},
            "train": {"threads": 1, "mem_mb": 3000, "runtime": 15, "gpu": 1},
            "evaluate": {"mem_mb": EVALUATE_MEM_MB, "runtime": 10},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    slides = [f"demo_{i:03d}" for i in range(N_STAGE1)]
    tiles = [tmp_path / "results" / "tiles" / f"{s}.h5" for s in slides]

    # 1. The per-slide stages (tile → features) of the first slides, one job per slide.
    feature_rules = [f"features_batch{i}" for i in range(N_STAGE1)]
    res = _snakemake(repo_root, tmp_path, "--jobs", "4", "--until", *feature_rules, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    for path in tiles:
        assert len(read_coords(path).coords) > 5, path
        assert path.with_suffix(".preview.png").exists()
    features = sorted((tmp_path / "results" / "features").glob("*/demo_*.h5"))
    assert [p.stem for p in features] == slides, features

    calls = _sbatch_calls(log)
    by_rule = {rule: [c for c in calls if f"--comment rule_{rule}_" in c] for rule in ("tile", "features")}
    assert len(by_rule["tile"]) == N_STAGE1 and len(by_rule["features"]) == N_STAGE1, calls
    assert len(calls) == 2 * N_STAGE1, calls  # `all` was not submitted
    for call in by_rule["features"]:  # the GPU rule asks SLURM for its GPU
        assert "--gpus=1" in call and "--mem 3000" in call and "-t 15" in call, call
    for call in by_rule["tile"]:
        assert "--gpus" not in call and "--gres" not in call and "--mem 1500" in call, call
    for call in calls:
        assert " -A " not in call, call
    job_ids = dict(zip(_job_ids(log), calls, strict=True))
    # SLURM itself recorded the GPU requests, and every job completed.
    for job_id, call in job_ids.items():
        info = _scontrol_job(job_id)
        assert "JobState=COMPLETED" in info, info
        has_gpu = re.search(r"TresPer(Job|Node)=gres:gpu:1", info) is not None
        assert has_gpu == ("--comment rule_features_" in call), info
    # The plugin's per-job logs (kept with --slurm-keep-successful-logs) are under .snakemake/slurm_logs/.
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    assert sum(len(list(d.rglob("*.log"))) for d in slurm_logs.glob("rule_features_batch*")) == N_STAGE1

    # 2. Grouping for large cohorts (docs/cluster.md): N_STAGE1 tile jobs in one SLURM job, two side by side. The
    #    next slides' tiles (not stage 1's again: redone tiles would make stage 3 redo their features and orders).
    grouped = [tmp_path / "results" / "tiles" / f"demo_{i:03d}.h5" for i in range(N_STAGE1, 2 * N_STAGE1)]
    res = _snakemake(
        repo_root,
        tmp_path,
        *map(str, grouped),
        "--jobs",
        "4",
        "--groups",
        "tile=tile_batch",
        "--group-components",
        f"tile_batch={N_STAGE1}",
        "--cores",
        "2",
        timeout=600,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    calls = _sbatch_calls(log)
    assert len(calls) == 1, calls
    # 3 jobs of 1 core, 2 at a time: 2 cores, 2 × 1500 MB, 2 layers × 10 min.
    assert "--cpus-per-task=2" in calls[0] and "--mem 3000" in calls[0] and "-t 20" in calls[0], calls[0]
    for path in grouped:
        assert len(read_coords(path).coords) > 5, path

    # 3. The rest of the study on SLURM: the other slides' per-slide stages (grouped per stage), splits, one
    #    training job per fold (asking for its GPU), evaluation and the heatmaps, with the profile's retries.
    #    The evaluate job's memory (EVALUATE_MEM_MB × attempt) is too small on attempt 1: SLURM kills it for
    #    memory, and Snakemake resubmits it with more.
    rest = range(N_STAGE1, N_SLIDES)
    res = _snakemake(
        repo_root,
        tmp_path,
        "--jobs",
        "4",
        "--retries",
        "2",
        "--cores",
        "2",
        "--groups",
        "tile=more_tiles",
        "order=orders",
        "heatmap=heatmaps",
        *[f"features_batch{i}=more_features" for i in rest],
        "--group-components",
        *[f"{g}={N_SLIDES}" for g in ("more_tiles", "orders", "heatmaps", "more_features")],
        timeout=1200,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    results = tmp_path / "results"
    calls = _sbatch_calls(log)
    train_calls = [c for c in calls if "--comment rule_train_" in c]
    assert len(train_calls) == 2, calls  # one job per fold
    for call in train_calls:
        assert "--gpus=1" in call and "--mem 3000" in call, call
    evaluate_calls = [c for c in calls if "--comment rule_evaluate_" in c]
    mems = [int(re.search(r"--mem (\d+)", c).group(1)) for c in evaluate_calls]
    assert len(mems) >= 2 and mems == [EVALUATE_MEM_MB * k for k in range(1, len(mems) + 1)], evaluate_calls
    evaluate_logs = [p.read_text() for p in slurm_logs.glob("rule_evaluate*/**/*.log")]
    assert any("exceeded memory limit" in text for text in evaluate_logs), evaluate_logs
    metrics = results / "evaluation" / "subtype" / "mean" / "metrics.json"
    assert metrics.exists() and (results / "evaluation" / "summary.csv").exists()
    index = pd.read_csv(results / "heatmaps" / "index.csv", dtype=str, keep_default_na=False)
    assert (index["status"] == "drawn").sum() == N_SLIDES, index
    n = assert_heatmaps_drawn_by_test_fold_models(results, tmp_path / "demo" / "labels.csv", "subtype", "mean")
    assert n == N_SLIDES
    print(f"evaluate succeeded on attempt {len(mems)} with --mem {mems[-1]} (after {mems[:-1]})")
