"""Workflow plumbing: every rule's conda env, the profiles, lint, and dry runs with each profile.

No SLURM is needed: a dry run with profiles/slurm only plans the jobs (tests/test_slurm.py runs them for real).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES = ["local", "slurm"]

# Loads the workflow with Snakemake's API and prints each rule's conda env (resolved like Snakemake does: relative
# to the file that declares the rule), whether the rule runs anything, and its resources as declared.
_RULES_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

snakefile, configfile = map(Path, sys.argv[1:3])
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wapi = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[configfile]),
        snakefile=snakefile,
        workdir=configfile.parent,
    )
    wapi.dag()
    rules = {}
    for rule in wapi._workflow.rules:
        env = rule.conda_env
        gpu = getattr(rule.resources.get("gpu"), "value", rule.resources.get("gpu"))
        rules[rule.name] = {
            "conda": None if env is None else str(Path(rule.basedir) / str(env)) if not callable(env) else "<callable>",
            "norun": bool(rule.norun),
            "gpu": gpu if isinstance(gpu, int) else None,
        }
print("RULES_JSON " + json.dumps(rules))
"""


def _demo_config(tmp_path: Path, **extra) -> Path:
    config = {
        "slides": str(tmp_path / "demo" / "slides.csv"),
        "labels": str(tmp_path / "demo" / "labels.csv"),
        "results": str(tmp_path / "results"),
        "demo_cohort": {"dir": str(tmp_path / "demo"), "n_slides": 3, "seed": 1},
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _rules(tmp_path: Path, **extra) -> dict[str, dict]:
    cfg = _demo_config(tmp_path, **extra)
    res = subprocess.run(
        [sys.executable, "-c", _RULES_SCRIPT, str(REPO / "Snakefile"), str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    line = next((x for x in res.stdout.splitlines() if x.startswith("RULES_JSON ")), None)
    assert line, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(line.removeprefix("RULES_JSON "))


def _gpu_capable_rules() -> list[str]:
    """Rules whose portable resources in config.yaml have a `gpu` entry (features, train, …)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return sorted(name for name, res in (config.get("resources") or {}).items() if "gpu" in (res or {}))


@cache
def _snakemake_options() -> set[str]:
    res = subprocess.run([sys.executable, "-m", "snakemake", "--help"], capture_output=True, text=True, timeout=120)
    return set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", res.stdout))


def _snakemake(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_every_rule_has_a_conda_env_that_exists_and_parses(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    assert {"demo_cohort", "tile"} <= set(rules)
    for name, rule in rules.items():
        if rule["norun"]:
            continue  # target rules like `all` run nothing
        assert rule["conda"], f"rule {name} declares no conda: env"
        assert rule["conda"] != "<callable>", f"rule {name}: use a path (conda_env() in common.smk), not a function"
        path = Path(rule["conda"]).resolve()
        assert path.is_file(), f"rule {name}: conda env {path} does not exist"
        assert path.parent == REPO / "envs", f"rule {name}: conda env {path} is not under envs/"
        env = yaml.safe_load(path.read_text())
        assert isinstance(env, dict) and env.get("dependencies"), f"{path} has no dependencies"


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_files_match_pyproject(env_file: Path) -> None:
    """Every env pins the package's dependencies; the GPU env names the optional `gpu` extra (commented out:
    GPUs run the Triton scan without it, and a failed mamba-ssm build must not break the env)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load(env_file.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    missing = [d for d in project["dependencies"] if d not in pip]
    assert not missing, f"{env_file.name} lacks {missing}"
    if "gpu" in env_file.stem:
        text = env_file.read_text()
        assert all(f"# - {d}" in text for d in project["optional-dependencies"]["gpu"]), "gpu extra not offered"


def test_gpu_rules_get_the_gpu_env_and_a_gpu_request(tmp_path: Path) -> None:
    gpu_rules = _gpu_capable_rules()
    assert gpu_rules, "config.yaml resources declare no GPU-capable rule"
    rules = _rules(tmp_path, resources={name: {"gpu": 1} for name in gpu_rules})
    for resource_name in gpu_rules:
        names = _rules_of(rules, resource_name)  # features runs as batch rules features_batch<i>
        assert names, f"config.yaml resources.{resource_name} asks for a GPU but configures no rule"
        for name in names:
            assert rules[name]["gpu"] == 1, f"rule {name} does not pass config resources.{name}.gpu to `resources: gpu`"
            assert rules[name]["conda"].endswith("envs/mambamil-gpu.yaml"), (
                f"rule {name} asks for a GPU but uses {rules[name]['conda']}; declare  conda: conda_env({name!r})"
            )
    assert _rules_of(rules, "features"), "no features rule"
    cpu = _rules(tmp_path / "cpu")
    for resource_name in gpu_rules:
        names = _rules_of(cpu, resource_name)
        assert names, f"config.yaml resources.{resource_name} configures no rule without a GPU"
        for name in names:
            assert cpu[name]["conda"].endswith("envs/mambamil.yaml"), f"rule {name} without a GPU uses the GPU env"


def _rules_of(rules: dict[str, dict], resource_name: str) -> list[str]:
    """The rules configured by ``resources.<resource_name>``: the rule of that name, or its batch rules."""
    return [n for n in rules if n == resource_name or re.fullmatch(rf"{resource_name}_batch\d+", n)]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_parses_and_uses_real_options(profile: str) -> None:
    config = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())
    assert isinstance(config, dict) and config
    unknown = sorted(set(config) - _snakemake_options())
    assert not unknown, f"profiles/{profile}: not Snakemake options: {unknown}"
    assert config["keep-going"] is True and config["rerun-incomplete"] is True
    if profile == "slurm":
        assert config["executor"] == "slurm"
        assert config["retries"] >= 1 and config["latency-wait"] >= 5
        assert {"mem_mb", "runtime"} <= set(config["default-resources"])
        # Site-specific settings stay commented out: the profile runs as-is on any SLURM.
        assert "slurm_account" not in config["default-resources"]


def test_lint_is_clean(tmp_path: Path) -> None:
    res = _snakemake("--lint", "--configfile", str(_demo_config(tmp_path)), cwd=REPO)
    out = res.stdout + res.stderr
    assert "Congratulations" in out, out[-4000:]


@pytest.mark.parametrize("profile", PROFILES)
def test_dry_run_with_profile(profile: str, tmp_path: Path) -> None:
    cfg = _demo_config(tmp_path)
    res = _snakemake("-n", "--profile", str(REPO / "profiles" / profile), "--configfile", str(cfg), cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "demo_cohort" in out and "tile" in out
    assert "This was a dry-run" in out
