"""``mambamil doctor``: what this machine will use and why.

Devices, the selective-scan backend ``auto`` picks on each (mamba-ssm, Triton and the Triton self-check's result,
:mod:`mambamil.ops.selfcheck`), OpenSlide, and the encoder weights found (a config's ``features.weights`` and every
preset's release files in the Hugging Face cache; nothing is downloaded). Each line: topic, finding, why.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

Finding = tuple[str, str, str]  # topic, what was found, why / what it means


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def software() -> list[Finding]:
    import torch

    from mambamil import __version__

    return [
        ("mambamil", __version__, sys.executable),
        ("python", platform.python_version(), platform.platform()),
        ("torch", torch.__version__, f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"),
    ]


def devices() -> list[Finding]:
    import torch

    out = [("device cpu", f"{os.cpu_count()} logical CPUs", f"torch uses {torch.get_num_threads()} threads")]
    if not torch.cuda.is_available():
        why = "no GPU visible (driver, CUDA_VISIBLE_DEVICES)" if torch.version.cuda else "torch has no CUDA build"
        return [*out, ("device cuda", "none", why)]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append((f"device cuda:{i}", p.name, f"sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
                    f"{p.multi_processor_count} SMs"))  # fmt: skip
    return out


def scan_backends(run_check: bool = True) -> list[Finding]:
    """mamba-ssm, Triton, the self-check setting and, per CUDA device, what ``auto`` picks and why."""
    import torch

    from mambamil.ops import selfcheck
    from mambamil.ops.selective_scan import _mamba_ssm_scan, _triton_scan

    out: list[Finding] = []
    mamba = _mamba_ssm_scan() is not None
    mamba_v = _version("mamba-ssm") or _version("mamba_ssm")
    if mamba:
        out.append(("mamba-ssm", mamba_v or "?", "imports: backend 'cuda' (its fused kernel) on GPUs"))
    else:
        out.append(("mamba-ssm", "not usable", "not installed" if mamba_v is None else f"{mamba_v} does not import"))
    triton_v = _version("triton")
    triton = _triton_scan()
    if triton is None:
        why = "not installed" if triton_v is None else f"{triton_v} installed but the kernels do not import"
        out.append(("triton", "not usable", why))
    else:
        mode = "interpreter (TRITON_INTERPRET=1: CPU tensors only)" if triton.INTERPRETED else "compiled kernels"
        out.append(("triton", triton_v or "?", mode))
    check = "on" if selfcheck.enabled() else f"off ({selfcheck.ENV}={os.environ.get(selfcheck.ENV, '')!r} or config)"
    out.append(("scan self-check", check, "auto checks the Triton kernels on each device before using them"))
    out.append(("scan auto on cpu", "chunked", "the exact PyTorch scan (auto never runs Triton on CPU tensors)"))
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        dev = torch.device("cuda", i)
        if mamba:
            out.append((f"scan auto on {dev}", "cuda", "mamba-ssm imports"))
        elif triton is None or triton.INTERPRETED:
            out.append((f"scan auto on {dev}", "chunked", "neither mamba-ssm nor compiled Triton kernels"))
        elif not run_check:
            out.append((f"scan auto on {dev}", "triton", "self-check not run here (--no-selfcheck)"))
        else:
            dtypes = [torch.float32] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
            for dtype in dtypes:
                res = selfcheck.run_selfcheck(dev, dtype)
                pick = "triton" if res.passed or not selfcheck.enabled() else "chunked"
                out.append((f"scan auto on {dev} ({res.dtype})", pick, res.describe()))
    return out


def openslide_info() -> list[Finding]:
    try:
        import openslide
    except Exception as exc:  # ImportError, or the C library missing (OSError)
        return [("openslide", "not usable", _first_line(exc))]
    lib = getattr(openslide, "__library_version__", "?")
    return [("openslide", f"library {lib}", f"openslide-python {openslide.__version__}")]


def encoder_weights(config: dict[str, Any] | None = None) -> list[Finding]:
    """The configured weights (if a config is given) and each preset's release files in the Hugging Face cache."""
    from mambamil.features.presets import PRESETS

    out: list[Finding] = []
    if config is not None:
        feats = config.get("features", {})
        weights = str(feats.get("weights", ""))
        where = f"features.encoder {feats.get('encoder')}"
        if weights in ("random", "hub", ""):
            out.append(("weights (config)", weights or "unset", where))
        else:
            p = Path(weights).expanduser()
            found = "found" if p.exists() else "MISSING"
            out.append(("weights (config)", f"{p} ({found})", where))
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError as exc:
        return [*out, ("weights (HF cache)", "not searched", f"huggingface_hub: {_first_line(exc)}")]
    for name, p in PRESETS.items():
        hits = [try_to_load_from_cache(p.hub_id, f) for f in p.files]
        paths = [h for h in hits if isinstance(h, str)]
        if paths:
            out.append((f"weights {name}", paths[0], f"{p.hub_id} in the Hugging Face cache (weights=hub, offline)"))
    if not any(t.startswith("weights ") and t != "weights (config)" for t, _, _ in out):
        out.append(("weights (HF cache)", "no preset's weights", f"searched {HF_HUB_CACHE}"))
    return out


def diagnose(config: dict[str, Any] | None = None, run_check: bool = True) -> list[Finding]:
    return [*software(), *devices(), *scan_backends(run_check), *openslide_info(), *encoder_weights(config)]
