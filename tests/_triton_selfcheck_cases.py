"""The Triton self-check under Triton's interpreter on CPU; run as a script (``planted`` or ``healthy``), prints one
JSON line. ``TRITON_INTERPRET=1`` must be set before Triton is imported, so tests/test_scan_selfcheck.py runs this
file in a subprocess. ``auto`` is let treat CPU tensors as CUDA ones (``_AUTO_INTERPRETED``): that is the only
difference from a GPU machine.

planted: the Triton scan's output is off by 0.1 % (a planted wrong result): a small MambaMIL study (training steps,
then predictions) with ``scan_backend: auto`` must fall back with exactly one warning and give exactly the numbers
of the same study with ``chunked``.
healthy: the kernels as they are pass, and ``auto`` then uses them; the check's cost under the interpreter.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import importlib
import json
import sys
import time
import warnings

import torch

from mambamil.models import create_model
from mambamil.ops import selfcheck, triton_scan

scan = importlib.import_module("mambamil.ops.selective_scan")  # the module (the package exports the function)
scan._AUTO_INTERPRETED = True


def study(backend: str) -> dict:
    """A few optimiser steps of a 1-layer SR-Mamba MIL model on three random bags, then its predictions."""
    torch.manual_seed(0)
    model = create_model("mambamil", in_dim=8, n_classes=2, n_layers=1, d_model=16, rate=2, scan_backend=backend)
    bags = [torch.randn(n, 8) for n in (23, 17, 30)]
    labels = [torch.tensor([i % 2]) for i in range(3)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        for x, y in zip(bags, labels, strict=True):
            loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    with torch.inference_mode():
        logits = [model(x)["logits"].tolist() for x in bags]
    return {"losses": losses, "logits": logits, "rng": torch.rand(1).item()}


def planted() -> dict:
    real = triton_scan.selective_scan_triton

    def wrong(*args, **kwargs):
        out = real(*args, **kwargs)
        return (out[0] * 1.001, out[1]) if isinstance(out, tuple) else out * 1.001

    triton_scan.selective_scan_triton = wrong
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = study("auto")
    chunked = study("chunked")
    res = selfcheck.results()[("cpu", torch.float32)]
    return {
        "warnings": [str(w.message) for w in caught if "self-check" in str(w.message)],
        "other_warnings": [str(w.message) for w in caught if "self-check" not in str(w.message)],
        "auto": auto,
        "chunked": chunked,
        "passed": res.passed,
        "worst": res.worst,
        "max_error": res.max_error,
        "checks": len(selfcheck.results()),
        "triton": triton_scan.triton.__version__,
    }


def healthy() -> dict:
    u = torch.zeros(1, 4, 8)
    t0 = time.perf_counter()
    with torch.inference_mode():  # first met at prediction time: the check still runs its backward
        backend = scan._auto_backend(u)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = scan._auto_backend(u)
    cached = time.perf_counter() - t0
    res = selfcheck.results()[("cpu", torch.float32)]
    return {"backend": backend, "again": again, "passed": res.passed, "max_error": res.max_error,
            "worst": res.worst, "seconds": res.seconds, "first_call_s": first, "cached_call_s": cached}  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps({"planted": planted, "healthy": healthy}[sys.argv[1]]()))
