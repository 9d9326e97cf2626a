"""Triton selective scan: interpreter runs on CPU (in a subprocess) and CUDA checks against float64 and mamba-ssm.

The interpreter cases live in tests/_triton_interp_cases.py: ``TRITON_INTERPRET=1`` only works when set before
Triton is imported, so they run in one child process; this process (and the compiled kernels that the
``cuda`` tests use on a GPU machine) never sees the setting.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_scan import OPTS, call, make_inputs, rel_err

from mambamil.ops import available_backends, selective_scan, selective_scan_chunked
from mambamil.ops.selfcheck import (  # the self-check holds the kernels on the user's GPU to the same tolerances
    FWD_TOL,
    GRAD_TOL,
    LOW_PRECISION_GRAD_TOL,
    LOW_PRECISION_TOL,
)

HERE = Path(__file__).resolve().parent
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
CASES = ["L1-plain", "L37-all-n16", "L41-D-softplus-n3", "L40-z-bias-n5", "L107-all-seg48", "L70-strong", "L29-n1"]
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def interp() -> dict:
    """Results of every interpreter case (one child process, ~2 min of CPU: the tests using it are marked slow)."""
    if not HAS_TRITON:
        pytest.skip("needs triton")
    res = subprocess.run(
        [sys.executable, str(HERE / "_triton_interp_cases.py")], capture_output=True, text=True, env=_env(), check=False
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_interpreter_matches_float64_reference(interp, case):
    r = interp[case]
    assert r["dtype"] == r["last_dtype"] == "torch.float32"
    assert r["fwd"] <= FWD_TOL and r["last"] <= FWD_TOL
    for name, err in r["grads"].items():
        assert err <= GRAD_TOL, (name, err)
    assert set(r["grads"]) >= {"u", "delta", "A", "B", "C"}


@pytest.mark.slow
def test_interpreter_bf16_inputs(interp):
    """bf16 in, bf16 out and bf16 gradients (A, D, delta_bias float32), float32 math inside."""
    r = interp["L30-bf16"]
    assert r["dtype"] == "torch.bfloat16" and r["last_dtype"] == "torch.float32"
    assert r["grad_dtypes"]["u"] == r["grad_dtypes"]["z"] == "torch.bfloat16"
    assert r["grad_dtypes"]["A"] == r["grad_dtypes"]["D"] == "torch.float32"
    assert r["last"] <= FWD_TOL  # the state is float32 and not rounded
    assert r["fwd"] <= LOW_PRECISION_TOL and max(r["grads"].values()) <= LOW_PRECISION_TOL  # bf16 rounding (2^-8)


@pytest.mark.slow
def test_interpreter_dispatch(interp):
    r = interp["dispatch"]
    assert r["backends"][0] == "triton" and "chunked" in r["backends"]
    assert r["auto_is_chunked"]  # auto never picks triton for CPU tensors
    assert r["triton_vs_chunked"] <= FWD_TOL


@pytest.mark.slow
def test_interpreter_saves_no_per_state_tensors(interp):
    """Saved for backward: the inputs (O(b*d*L + b*n*L)) and the segment start states (b*d*n*ceil(L/seg_len))."""
    r = interp["memory"]
    assert r["starts"] in r["saved"]
    assert max(r["saved"]) <= max(r["bdl"], r["bnl"])
    assert sum(r["saved"]) <= 4 * r["bdl"] + 2 * r["bnl"] + r["starts"] + 1000


@pytest.mark.slow
def test_interpreter_strided_inputs_used_without_copy(interp):
    """Slices of larger tensors (unit time stride) go to the kernels as they are and give the same results."""
    r = interp["strided"]
    assert r["non_contiguous"] and r["u_not_copied"]
    assert r["fwd"] <= 1e-6 and r["grad"] <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("n", ["1", "4", "16", "32", "64"])
def test_interpreter_d_state_sweep(interp, n):
    """d_state <= 16 runs the kernels; larger falls back to chunked with one warning (two calls)."""
    r = interp["n_sweep"][n]
    assert r["err"] <= FWD_TOL
    if int(n) <= 16:
        assert r["warnings"] == [] and not r["equals_chunked"]
    else:
        assert len(r["warnings"]) == 1 and "d_state <= 16" in r["warnings"][0] and r["equals_chunked"]


def test_available_backends_does_not_initialise_cuda():
    """Without a GPU ``torch.cuda.is_initialized()`` is always False, so the child records every call of
    ``torch.cuda._lazy_init`` (what any CUDA-initialising query runs first, GPU or not) instead."""
    code = (
        "import json, torch; calls = []; init = torch.cuda._lazy_init\n"
        "torch.cuda._lazy_init = lambda: (calls.append(1), init())[1]\n"
        "from mambamil.ops import available_backends as a; from mambamil.ops.selective_scan import _triton_usable\n"
        "b = a(); _triton_usable()\n"
        "print(json.dumps([b, torch.cuda.is_initialized(), len(calls)]))"
    )
    env = {k: v for k, v in _env().items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    backends, initialised, lazy_init_calls = json.loads(res.stdout.strip().splitlines()[-1])
    assert not initialised and lazy_init_calls == 0
    assert ("triton" in backends) == (HAS_CUDA and HAS_TRITON)
    assert backends == available_backends() or os.environ.get("TRITON_INTERPRET") == "1"


@needs_triton
@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only error")
def test_triton_on_cpu_tensors_needs_cuda():
    inp = {k: v.float() for k, v in make_inputs(1, 4, 2, 10).items()}
    with pytest.raises(RuntimeError, match="'triton' needs CUDA tensors"):
        selective_scan(*(inp[k] for k in ("u", "delta", "A", "B", "C")), backend="triton")


@pytest.mark.slow
@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="kernels are interpreted in this process")
def test_kernels_compile_for_sm90_without_gpu():
    """The CUDA code path (every kernel variant, all options on, the JIT's specialisation) compiles for H100/H200
    without spills, within 128 registers, without a reverse scan and, outside the gradient pass, without shuffles
    in the time scans (SASS of Triton's bundled cuobjdump)."""
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    from triton_compile import stats

    from mambamil.ops import triton_scan
    from mambamil.ops.triton_scan import compile_kernels

    assert "reverse=True" not in Path(triton_scan.__file__).read_text()
    kernels = compile_kernels(arch=90, dtype="bf16")
    assert [k.split()[0] for k in kernels] == ["F1", "F2", "F3", "B1", "B2", "B3"]
    for name, k in kernels.items():
        s = stats(k, 90)
        assert s["spill"] == 0 and 0 < s["regs"] <= 128, (name, s)
        if name.split()[0] in ("F1", "F2", "B1", "B2"):
            assert s["shfl"] == 0, (name, s)


# ----------------------------------------------------------------------------------------------
# CUDA (compiled kernels); the float64 reference is the chunked scan in float64 on the GPU
# ----------------------------------------------------------------------------------------------
cuda_only = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")


def _grads_vs_float64(b, d, n, L, opts, dtype=torch.float32, seed=0, strong=False):
    inp = make_inputs(b, d, n, L, seed=seed, device="cuda", strong=strong)
    names = ["u", "delta", "A", "B", "C"] + [k for k in ("D", "z", "delta_bias") if opts.get(k)]
    small = {k: v.to(dtype if k not in ("A", "D", "delta_bias") else torch.float32) for k, v in inp.items()}
    low = {k: v.clone().requires_grad_() for k, v in small.items()}
    f64 = {k: v.double().requires_grad_() for k, v in small.items()}
    out, last = call(selective_scan, low, opts, backend="triton", return_last_state=True)
    ref, ref_last = call(selective_scan_chunked, f64, opts, return_last_state=True)
    g = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, [low[k] for k in names], g)
    grads_ref = torch.autograd.grad(ref, [f64[k] for k in names], g.double())
    return (
        out,
        rel_err(out, ref),
        rel_err(last, ref_last),
        {k: rel_err(x, r) for k, x, r in zip(names, grads, grads_ref, strict=True)},
    )


@pytest.mark.parametrize("opts", [OPTS[0], OPTS[1]], ids=["plain", "all"])
@pytest.mark.parametrize("L", [1, 63, 4099, 16_384])
@pytest.mark.cuda
@cuda_only
def test_cuda_triton_matches_float64(L, opts):
    _, fwd, last, grads = _grads_vs_float64(2, 64, 16, L, opts, seed=L)
    assert fwd <= FWD_TOL and last <= FWD_TOL
    assert max(grads.values()) <= GRAD_TOL, grads


@pytest.mark.cuda
@cuda_only
def test_cuda_triton_400k_strong_decays():
    """L = 400k (hundreds of segments) with decays down to exp(-48): forward, last state, every gradient."""
    _, fwd, last, grads = _grads_vs_float64(1, 32, 16, 400_000, OPTS[1], seed=3, strong=True)
    assert fwd <= FWD_TOL and last <= FWD_TOL
    assert max(grads.values()) <= GRAD_TOL, grads


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.cuda
@cuda_only
def test_cuda_triton_half_inputs(dtype):
    out, fwd, last, grads = _grads_vs_float64(2, 64, 16, 1000, OPTS[1], dtype=dtype, seed=4)
    assert out.dtype == dtype
    assert fwd <= LOW_PRECISION_TOL and last <= FWD_TOL and max(grads.values()) <= LOW_PRECISION_GRAD_TOL, grads


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON and HAS_MAMBA_SSM), reason="needs CUDA, triton and mamba_ssm")
def test_cuda_triton_matches_mamba_ssm():
    inp = {k: v.float() for k, v in make_inputs(2, 256, 16, 5000, seed=9, device="cuda").items()}
    a = {k: v.clone().requires_grad_() for k, v in inp.items()}
    b = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y_t = call(selective_scan, a, OPTS[1], backend="triton")
    y_k = call(selective_scan, b, OPTS[1], backend="cuda")
    assert rel_err(y_t, y_k) <= 1e-5
    g = torch.randn_like(y_t)
    for k, gt, gk in zip(
        a, torch.autograd.grad(y_t, list(a.values()), g), torch.autograd.grad(y_k, list(b.values()), g), strict=True
    ):
        assert rel_err(gt, gk) <= 1e-4, k


@pytest.mark.cuda
@cuda_only
def test_cuda_auto_and_model_with_triton():
    from mambamil.models import create_model
    from mambamil.ops.selective_scan import _auto_backend

    x = torch.randn(1, 4, 8, device="cuda")
    assert _auto_backend(x) == ("cuda" if HAS_MAMBA_SSM else "triton")
    assert _auto_backend(x.cpu()) == "chunked"
    torch.manual_seed(0)
    feats = torch.randn(3000, 64, device="cuda")
    outs = {}
    for backend in ("triton", "chunked"):
        torch.manual_seed(1)
        model = create_model("mambamil", 64, 2, layer="srmamba", rate=5, scan_backend=backend).cuda().train()
        model.eval()  # no dropout: both runs see the same function
        logits = model(feats)["logits"]
        logits.sum().backward()
        outs[backend] = (logits.detach(), model._fc1[0].weight.grad.detach())
    assert rel_err(outs["triton"][0], outs["chunked"][0]) <= 1e-4
    assert rel_err(outs["triton"][1], outs["chunked"][1]) <= 1e-3


def test_config_and_model_accept_scan_backend_triton(tmp_path):
    """``models.<name>.scan_backend: triton`` validates and reaches the Mamba layers; a typo fails early."""
    import yaml

    from mambamil.config import ConfigError, load_config
    from mambamil.models import create_model

    repo = HERE.parent
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["models"]["mambamil"]["scan_backend"] = "triton"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_config(path)
    assert loaded["models"]["mambamil"]["scan_backend"] == "triton"
    assert "scan_backend" not in loaded["models"]["abmil"]
    kwargs = {k: v for k, v in loaded["models"]["mambamil"].items() if k != "model"}
    model = create_model("mambamil", 32, 2, **kwargs)
    assert {m.scan_backend for m in model.modules() if hasattr(m, "d_inner")} == {"triton"}
    cfg["models"]["mambamil"]["scan_backend"] = "tritn"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="scan_backend"):
        load_config(path)
    with pytest.raises(ValueError, match="unknown scan_backend"):
        create_model("mambamil", 32, 2, scan_backend="tritn")
