"""The Triton scan proves itself where it runs: a self-check before ``auto`` uses it on a device.

The first time ``selective_scan(backend="auto")`` would run the project's Triton kernels on a device, for a dtype
(once per process, per device, per dtype), :func:`triton_passes` runs one small forward + backward of them against
the exact ``chunked`` scan in float64 on that same device: 2 sequences, 12 channels with d_state 16 (two channel
blocks, the second partial), 37 steps in segments of 16 (three segments, the last partial), 3 persistent gradient
programs for 12 work items, every option on (D, z, delta_bias, softplus), last state returned. ``auto`` uses Triton
there only if the output, the last state and every gradient agree within the tolerances the tests hold the kernels
to (:data:`FWD_TOL`, :data:`GRAD_TOL`, :data:`LOW_PRECISION_TOL`, :data:`LOW_PRECISION_GRAD_TOL`;
tests/test_triton_scan.py reads them from here); otherwise it warns once, naming the device, the Triton version
and the largest error, and runs ``chunked``.

The check uses its own random generator (the global RNG, and so a study's numbers, are untouched), logs its cost
(INFO), and is switched off by ``training.scan_selfcheck: false`` or ``MAMBAMIL_SCAN_SELFCHECK=0``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: relative error (max |x - ref| / max |ref|) of the output and last state, float32 inputs
FWD_TOL = 1e-5
#: relative error of every gradient, float32 inputs
GRAD_TOL = 1e-4
#: relative error of the output with bf16/fp16 inputs (their rounding, 2^-8; the state stays float32)
LOW_PRECISION_TOL = 1e-2
#: relative error of every gradient with bf16/fp16 inputs
LOW_PRECISION_GRAD_TOL = 2e-2
#: the check's case (see the module docstring): batch, channels, d_state, steps, segment length, gradient programs
CASE = {"b": 2, "d": 12, "n": 16, "L": 37, "seg_len": 16, "nprog": 3}
#: environment variable that switches the check off ("0", "false", "no", "off")
ENV = "MAMBAMIL_SCAN_SELFCHECK"
_OFF = ("0", "false", "no", "off")


@dataclass(frozen=True)
class SelfCheck:
    """The outcome of one self-check on one device for one dtype."""

    device: str
    dtype: str
    passed: bool
    max_error: float  #: largest relative error over output, last state and gradients (inf when the kernels failed)
    worst: str  #: which of them (or the exception the kernels raised)
    tolerance: float  #: the tolerance of ``worst``
    seconds: float
    triton: str  #: Triton's version

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        err = f"largest relative error {self.max_error:.2e} in {self.worst} (tolerance {self.tolerance:g})"
        if self.max_error == float("inf"):
            err = f"the kernels raised {self.worst}"
        where = f"on {self.device} ({self.dtype})"
        return f"Triton {self.triton} self-check {where} {verdict} in {self.seconds:.3f} s: {err}"


_RESULTS: dict[tuple[str, torch.dtype], SelfCheck] = {}
_LOCK = threading.Lock()
_configured = True


def set_enabled(enabled: bool) -> None:
    """The config's ``training.scan_selfcheck`` (the environment variable can still switch it off)."""
    global _configured
    _configured = bool(enabled)


def enabled() -> bool:
    """Whether ``auto`` checks the Triton kernels before using them (setting and environment variable)."""
    return _configured and os.environ.get(ENV, "1").strip().lower() not in _OFF


def results() -> dict[tuple[str, torch.dtype], SelfCheck]:
    """The checks run in this process so far, by (device, dtype)."""
    return dict(_RESULTS)


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({name}, sm_{major}{minor})"
    return f"{device} (Triton interpreter)"


def _inputs(dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
    """The case's inputs, drawn from their own generator on the CPU (float64), rounded to ``dtype`` for u, delta, B,
    C, z (A, D, delta_bias stay float32, as the model passes them)."""
    g = torch.Generator().manual_seed(28)
    b, d, n, L = CASE["b"], CASE["d"], CASE["n"], CASE["L"]
    f64 = torch.float64
    raw = {
        "u": torch.randn(b, d, L, generator=g, dtype=f64),
        "delta": torch.randn(b, d, L, generator=g, dtype=f64),
        "A": -torch.exp(torch.randn(d, n, generator=g, dtype=f64)),
        "B": torch.randn(b, n, L, generator=g, dtype=f64),
        "C": torch.randn(b, n, L, generator=g, dtype=f64),
        "D": torch.randn(d, generator=g, dtype=f64),
        "z": torch.randn(b, d, L, generator=g, dtype=f64),
        "delta_bias": torch.rand(d, generator=g, dtype=f64) * 0.5,
        "grad": torch.randn(b, d, L, generator=g, dtype=f64),
    }
    fp32 = ("A", "D", "delta_bias")
    return {k: v.to(torch.float32 if k in fp32 else dtype).to(device) for k, v in raw.items()}


def _rel_err(x: Tensor, ref: Tensor) -> float:
    x, ref = x.double(), ref.double()
    err = ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    return err if err == err else float("inf")  # NaN counts as the worst error


def run_selfcheck(device: torch.device | str, dtype: torch.dtype = torch.float32) -> SelfCheck:
    """Run the check once on ``device`` for ``dtype`` (no caching, no warning); never raises for a kernel failure."""
    from mambamil.ops.selective_scan import _triton_scan, selective_scan_chunked

    mod = _triton_scan()
    if mod is None:
        raise RuntimeError("the Triton self-check needs Triton, which does not import here")
    import triton

    device = torch.device(device)
    low = dtype in (torch.float16, torch.bfloat16)
    tols = {"output": LOW_PRECISION_TOL if low else FWD_TOL, "last state": FWD_TOL}
    grad_tol = LOW_PRECISION_GRAD_TOL if low else GRAD_TOL
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        inp = _inputs(dtype, device)
        ref_in = {k: inp[k].double().requires_grad_() for k in names}
        ours_in = {k: inp[k].clone().requires_grad_() for k in names}
        ref, ref_last = selective_scan_chunked(**ref_in, delta_softplus=True, return_last_state=True)
        ref_grads = torch.autograd.grad(ref, [ref_in[k] for k in names], inp["grad"].double())
        errors: dict[str, tuple[float, float]] = {}
        try:
            out, last = mod.selective_scan_triton(
                **ours_in, delta_softplus=True, return_last_state=True, seg_len=CASE["seg_len"], nprog=CASE["nprog"]
            )
            grads = torch.autograd.grad(out, [ours_in[k] for k in names], inp["grad"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as exc:  # a launch or compile failure on this architecture is a failed check, not a crash
            first = (str(exc).strip().splitlines() or [""])[0]
            errors[f"{type(exc).__name__}: {first[:300]}"] = (float("inf"), 0.0)
        else:
            errors["output"] = (_rel_err(out, ref), tols["output"])
            errors["last state"] = (_rel_err(last, ref_last), tols["last state"])
            for k, x, r in zip(names, grads, ref_grads, strict=True):
                errors[f"d{k}"] = (_rel_err(x, r), grad_tol)
    seconds = time.perf_counter() - t0
    worst = max(errors, key=lambda k: errors[k][0] / errors[k][1] if errors[k][1] else float("inf"))
    passed = all(err <= tol for err, tol in errors.values())
    err, tol = errors[worst]
    return SelfCheck(_device_label(device), str(dtype).removeprefix("torch."), passed, err, worst, tol, seconds,
                     triton.__version__)  # fmt: skip


def triton_passes(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``auto`` may use the Triton kernels on ``device`` for ``dtype``: the cached self-check's verdict (run
    now the first time; its cost logged), True when the check is switched off. A failure warns once."""
    if not enabled():
        return True
    key = (str(device), dtype)
    done = _RESULTS.get(key)
    if done is not None:  # every later call: one dict lookup
        return done.passed
    with _LOCK:
        if key not in _RESULTS:
            res = _RESULTS[key] = run_selfcheck(device, dtype)
            log.info("scan: %s", res.describe())
            if not res.passed:
                warnings.warn(
                    f"selective_scan: {res.describe()}; backend 'auto' runs the exact 'chunked' scan on {device} "
                    f"instead (slower; set {ENV}=0 or training.scan_selfcheck: false to skip the check)",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return _RESULTS[key].passed
