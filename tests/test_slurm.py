"""The workflow on a real SLURM: profiles/slurm + snakemake-executor-plugin-slurm against a one-node cluster.

Needs a running SLURM with two (fake) GPUs as set up by tests/slurm/start_slurm.sh; .ci/slurm.sh installs SLURM,
starts it, runs this file and stops it again:

    .ci/slurm.sh                                   # or, with SLURM already up:
    MAMBAMIL_SLURM=1 pytest -m slurm tests/test_slurm.py

Skipped unless MAMBAMIL_SLURM=1. The cluster has no accounting database (status via squeue) and no account.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mambamil.h5layout import read_coords

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("MAMBAMIL_SLURM") != "1", reason="needs a SLURM cluster; set MAMBAMIL_SLURM=1"),
]

N_SLIDES = 3
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


@pytest.fixture(scope="module")
def cluster() -> None:
    if shutil.which("sbatch") is None:
        pytest.fail("MAMBAMIL_SLURM=1 but sbatch is not on PATH (run tests/slurm/start_slurm.sh)")
    res = subprocess.run(["sinfo", "-h", "-o", "%t %G"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "idle" in res.stdout, f"SLURM is not up: {res.stdout}{res.stderr}"
    assert "gpu" in res.stdout, f"the test cluster has no GPU gres: {res.stdout}"


def test_demo_workflow_on_slurm_with_gpu_requests(cluster, repo_root: Path, tmp_path: Path) -> None:
    config = {
        "slides": str(tmp_path / "demo" / "slides.csv"),
        "labels": str(tmp_path / "demo" / "labels.csv"),
        "results": str(tmp_path / "results"),
        "demo_cohort": {"dir": str(tmp_path / "demo"), "n_slides": N_SLIDES, "seed": 1},
        # Small and offline: a random-weight ResNet-18 on the CPU (the test cluster's GPUs are fake).
        # One slide per features job (rules features_batch0 … features_batch<N-1>), so jobs map to slides.
        "features": {
            "encoder": "timm:resnet18",
            "weights": "random",
            "device": "cpu",
            "num_workers": 0,
            "slides_per_job": 1,
        },
        "resources": {
            "tile": {"threads": 1, "mem_mb": 1500, "runtime": 10},
            "features": {"threads": 1, "mem_mb": 3000, "runtime": 15, "gpu": 1},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    slides = [f"demo_{i:03d}" for i in range(N_SLIDES)]
    tiles = [tmp_path / "results" / "tiles" / f"{s}.h5" for s in slides]

    # 1. The per-slide stages of the demo workflow (demo cohort → tile → features); later stages are left out to
    #    keep the test short (--until). demo_cohort is a local rule: it runs here, not via sbatch.
    feature_rules = [f"features_batch{i}" for i in range(N_SLIDES)]
    res = _snakemake(repo_root, tmp_path, "--jobs", "4", "--until", *feature_rules)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    for path in tiles:
        assert len(read_coords(path).coords) > 5, path
        assert path.with_suffix(".preview.png").exists()
    features = sorted((tmp_path / "results" / "features").glob("*/demo_*.h5"))
    assert [p.stem for p in features] == slides, features
    assert (tmp_path / "results" / "logs" / "demo_cohort.log").exists()

    calls = _sbatch_calls(log)
    by_rule = {rule: [c for c in calls if f"--comment rule_{rule}_" in c] for rule in ("tile", "features")}
    assert len(by_rule["tile"]) == N_SLIDES and len(by_rule["features"]) == N_SLIDES, calls
    assert len(calls) == 2 * N_SLIDES, calls  # demo_cohort and `all` were not submitted
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
    assert sum(len(list(d.rglob("*.log"))) for d in slurm_logs.glob("rule_features_batch*")) == N_SLIDES

    # 2. Grouping for large cohorts (docs/cluster.md): all tile jobs in one SLURM job, two side by side.
    res = _snakemake(
        repo_root,
        tmp_path,
        *map(str, tiles),
        "--forcerun",
        "tile",
        "--jobs",
        "4",
        "--groups",
        "tile=tile_batch",
        "--group-components",
        f"tile_batch={N_SLIDES}",
        "--cores",
        "2",
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    calls = _sbatch_calls(log)
    assert len(calls) == 1, calls
    # 3 jobs of 1 core, 2 at a time: 2 cores, 2 × 1500 MB, 2 layers × 10 min.
    assert "--cpus-per-task=2" in calls[0] and "--mem 3000" in calls[0] and "-t 20" in calls[0], calls[0]
    for path in tiles:
        assert len(read_coords(path).coords) > 5, path
