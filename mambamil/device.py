"""Devices and compute precisions: one ``resolve_device`` for every stage, and the two autocast policies.

There are two autocast helpers because the stages differ on purpose: the frozen feature encoders run in half
precision on CUDA by default (``auto`` -> bf16 where supported, else fp16), while the MIL stages (training,
prediction, heatmaps) compute in fp32, as MambaMIL did, unless a model is trained in bf16. CPU always
computes in fp32.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from mambamil.errors import MambamilError

__all__ = [
    "MIL_PRECISIONS",
    "encoder_autocast",
    "mil_autocast",
    "resolve_device",
    "resolve_encoder_precision",
]

log = logging.getLogger(__name__)

#: Compute precisions of the MIL stages (training, validation, prediction); fp32 is what MambaMIL used.
MIL_PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a bad name, or CUDA without one, is a :class:`MambamilError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise MambamilError(f"device {device!r}: not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MambamilError(f"device {device!r}: CUDA is not available on this machine (use --device cpu or auto)")
    return dev


def mil_autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager[Any]:
    """MIL stages: bf16 autocast on CUDA when ``precision`` is ``bf16``; fp32 otherwise (the default)."""
    if precision not in MIL_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {MIL_PRECISIONS}")
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_encoder_precision(precision: str, device: torch.device) -> str:
    """Encoder autocast dtype actually used: ``fp32`` on CPU; on CUDA ``auto`` → bf16 where supported, else fp16."""
    if device.type != "cuda":
        if precision not in ("auto", "fp32"):
            log.info("precision %s applies on CUDA only; computing in fp32 on %s", precision, device)
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def encoder_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Feature encoders: bf16 or fp16 autocast on CUDA for a resolved ``precision``; fp32 otherwise."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()
