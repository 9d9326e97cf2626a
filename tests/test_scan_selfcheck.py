"""The Triton self-check (issue 28): a planted wrong result under Triton's interpreter makes ``auto`` fall back with
one warning and the study's numbers equal ``chunked``'s; the kernels as they are pass; the check runs once per device
and dtype and is switched off by the setting or the environment; ``mambamil doctor`` says what the machine uses."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mambamil.ops import selfcheck
from mambamil.ops.selfcheck import SelfCheck

HERE = Path(__file__).resolve().parent
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


def child(case: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    env.pop(selfcheck.ENV, None)
    res = subprocess.run([sys.executable, str(HERE / "_triton_selfcheck_cases.py"), case], capture_output=True,
                         text=True, env=env, timeout=900, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_triton
def test_planted_wrong_result_falls_back_with_one_warning_and_chunked_numbers():
    r = child("planted")
    assert not r["passed"] and r["checks"] == 1  # once for (cpu, float32), over every scan of the study
    assert len(r["warnings"]) == 1, r["warnings"]
    msg = r["warnings"][0]
    assert "cpu" in msg and f"Triton {r['triton']}" in msg and "largest relative error 1.00e-03 in output" in msg
    assert abs(r["max_error"] - 1e-3) < 1e-5 and r["worst"] == "output"
    assert r["auto"] == r["chunked"]  # losses, predictions and the RNG state after: exactly chunked's


@pytest.mark.slow
@needs_triton
def test_kernels_as_they_are_pass_and_auto_uses_them():
    r = child("healthy")
    assert r["passed"] and r["backend"] == r["again"] == "triton"
    assert r["max_error"] <= selfcheck.FWD_TOL
    print(f"self-check under the interpreter: {r['seconds']:.1f} s; cached call {r['cached_call_s'] * 1e6:.0f} µs")


@pytest.fixture
def fresh_selfcheck(monkeypatch):
    """An empty cache and the default setting; runs of the check recorded instead of executed."""
    monkeypatch.setattr(selfcheck, "_RESULTS", {})
    monkeypatch.setattr(selfcheck, "_configured", True)
    monkeypatch.delenv(selfcheck.ENV, raising=False)
    calls = []

    def fake_run(device, dtype):
        calls.append((str(device), dtype))
        return SelfCheck(str(device), str(dtype), False, 0.5, "dB", 1e-4, 0.01, "9.9")

    monkeypatch.setattr(selfcheck, "run_selfcheck", fake_run)
    return calls


def test_a_failed_check_warns_once_per_device_and_dtype(fresh_selfcheck):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdicts = [selfcheck.triton_passes(torch.device("cpu"), torch.float32) for _ in range(3)]
        verdicts.append(selfcheck.triton_passes(torch.device("cpu"), torch.bfloat16))
    assert verdicts == [False] * 4
    assert fresh_selfcheck == [("cpu", torch.float32), ("cpu", torch.bfloat16)]
    assert len(caught) == 2 and "largest relative error 5.00e-01 in dB" in str(caught[0].message)
    assert "Triton 9.9" in str(caught[0].message) and "'chunked'" in str(caught[0].message)


@pytest.mark.parametrize("how", ["env", "setting"])
def test_the_check_can_be_switched_off(fresh_selfcheck, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(selfcheck.ENV, "0")
    else:
        selfcheck.set_enabled(False)
    assert not selfcheck.enabled()
    assert selfcheck.triton_passes(torch.device("cpu"), torch.float32) and fresh_selfcheck == []


def test_training_setting_reaches_the_check(monkeypatch):
    from mambamil.train.engine import TrainSettings

    assert TrainSettings.from_config().scan_selfcheck is True  # the schema's default
    assert TrainSettings.from_config({"scan_selfcheck": False}).scan_selfcheck is False


def test_doctor_says_what_the_machine_uses(tmp_path: Path):
    """Devices, mamba-ssm, Triton, the scan backend auto picks, OpenSlide's version (as openslide-python reports
    it), the configured weights and a preset's release found in a Hugging Face cache (a cache laid out as
    huggingface_hub writes it: refs/main → snapshots/<commit>/<file>)."""
    import openslide

    from mambamil.features.presets import PRESETS

    p = PRESETS["uni_v1"]
    repo = tmp_path / "hf" / ("models--" + p.hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "snapshots" / "0123abc" / p.files[0]).write_bytes(b"x")
    weights = tmp_path / "my_encoder.pth"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"slides": "s.csv", "labels": "l.csv", "features": {"weights": str(weights)}}))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "PYTHONPATH": str(HERE.parent)}
    cmd = [sys.executable, "-m", "mambamil", "doctor", "--config", str(config), "--format", "json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    rows = {r["topic"]: r for r in json.loads(res.stdout)}
    assert {"device cpu", "mamba-ssm", "triton", "scan self-check", "scan auto on cpu", "openslide"} <= set(rows)
    assert rows["openslide"]["found"] == f"library {openslide.__library_version__}"
    assert rows["scan auto on cpu"]["found"] == "chunked"
    assert rows["weights (config)"]["found"] == f"{weights} (MISSING)"
    assert rows["weights uni_v1"]["found"] == str(repo / "snapshots" / "0123abc" / p.files[0])
    if not torch.cuda.is_available():
        assert rows["device cuda"]["found"] == "none"


@pytest.mark.cuda
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_cuda_kernels_pass_their_selfcheck(dtype):
    """On a GPU the compiled kernels pass the check that `auto` runs (what `mambamil doctor` shows)."""
    res = selfcheck.run_selfcheck("cuda", dtype)
    print(res.describe())
    assert res.passed, res.describe()
