"""Original MambaMIL checkpoints against an independent restatement of the original forward pass.

``restated_forward`` below re-writes, in plain float64 torch, isyangshu/MambaMIL's ``models/MambaMIL.py``
``MambaMIL.forward`` (act='gelu', as its main scripts build it) and the fused path its SRMamba / BiMamba / Mamba
mixers take (``mamba_inner_fn_no_out_proj``: causal depthwise conv + SiLU, x_proj, dt_proj, softplus(Δ + bias),
the selective scan as ``selective_scan_ref`` loops it, the D skip and the SiLU(z) gate; SRMamba's
``TransposeTokenReEmbedding`` zero-padding and stride-``rate`` interleave; BiMamba's flip). Nothing of the project
is used to build the weights or the reference: the state dict is made from the original key layout and shapes,
and the project must load it (``load_checkpoint(..., original=...)``) and give the same logits and attention.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mambamil.inference import bag_outputs, load_bag, load_ensemble
from mambamil.models import load_checkpoint

IN_DIM, D_MODEL, D_STATE, D_CONV, EXPAND = 12, 16, 16, 4, 2
D_INNER, DT_RANK = EXPAND * D_MODEL, math.ceil(D_MODEL / 16)


def original_state(layer: str, n_layers: int, n_out: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the original's key layout (torch.save(model.state_dict()) of models/MambaMIL.py)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g)

    state = {"_fc1.0.weight": rnd(D_MODEL, IN_DIM), "_fc1.0.bias": rnd(D_MODEL, scale=0.1)}
    for i in range(n_layers):
        p = f"layers.{i}."
        state[p + "0.weight"], state[p + "0.bias"] = 1 + rnd(D_MODEL, scale=0.1), rnd(D_MODEL, scale=0.1)
        state[p + "1.in_proj.weight"] = rnd(2 * D_INNER, D_MODEL)
        state[p + "1.out_proj.weight"] = rnd(D_MODEL, D_INNER)
        for b in ("", "_b") if layer != "mamba" else ("",):
            state[f"{p}1.conv1d{b}.weight"] = rnd(D_INNER, 1, D_CONV)
            state[f"{p}1.conv1d{b}.bias"] = rnd(D_INNER, scale=0.1)
            state[f"{p}1.x_proj{b}.weight"] = rnd(DT_RANK + 2 * D_STATE, D_INNER)
            state[f"{p}1.dt_proj{b}.weight"] = rnd(D_INNER, DT_RANK)
            state[f"{p}1.dt_proj{b}.bias"] = -2.0 + rnd(D_INNER)
            s4d = torch.log(torch.arange(1, D_STATE + 1.0)).repeat(D_INNER, 1)
            state[f"{p}1.A{b}_log"] = s4d + rnd(D_INNER, D_STATE)
            state[f"{p}1.D{b}"] = 1 + rnd(D_INNER, scale=0.1)
    state["norm.weight"], state["norm.bias"] = 1 + rnd(D_MODEL, scale=0.1), rnd(D_MODEL, scale=0.1)
    state["attention.0.weight"], state["attention.0.bias"] = rnd(128, D_MODEL), rnd(128, scale=0.1)
    state["attention.2.weight"], state["attention.2.bias"] = rnd(1, 128), rnd(1, scale=0.1)
    state["classifier.weight"], state["classifier.bias"] = rnd(n_out, D_MODEL), rnd(n_out, scale=0.1)
    return state


def _inner(xz: torch.Tensor, w: dict[str, torch.Tensor], b: str) -> torch.Tensor:
    """mamba_inner_fn_no_out_proj on xz (1, 2·d_inner, L): the gated scan output (1, d_inner, L)."""
    L = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, w[f"conv1d{b}.weight"], w[f"conv1d{b}.bias"], padding=D_CONV - 1, groups=D_INNER)[..., :L])
    x_dbl = x[0].T @ w[f"x_proj{b}.weight"].T  # (L, dt_rank + 2n)
    dt, B, C = x_dbl[:, :DT_RANK], x_dbl[:, DT_RANK : DT_RANK + D_STATE], x_dbl[:, -D_STATE:]
    delta = F.softplus(dt @ w[f"dt_proj{b}.weight"].T + w[f"dt_proj{b}.bias"])  # (L, d_inner)
    A = -torch.exp(w[f"A{b}_log"])  # (d_inner, n)
    state, ys = torch.zeros(D_INNER, D_STATE, dtype=xz.dtype), []
    for t in range(L):  # x_t = exp(Δ_t A) x_{t-1} + Δ_t B_t u_t ;  y_t = C_t · x_t + D u_t
        state = torch.exp(delta[t, :, None] * A) * state + delta[t, :, None] * B[t][None, :] * x[0, :, t, None]
        ys.append(state @ C[t] + w[f"D{b}"] * x[0, :, t])
    return (torch.stack(ys, dim=-1) * F.silu(z[0]))[None]


def _mixer(h: torch.Tensor, w: dict[str, torch.Tensor], layer: str, rate: int) -> torch.Tensor:
    """SRMamba / BiMamba / Mamba forward (fast path) on h (1, L, d_model)."""
    L = h.shape[1]
    xz = (w["in_proj.weight"] @ h[0].T)[None]  # (1, 2·d_inner, L)
    out = _inner(xz, w, "")
    if layer == "srmamba":  # transpose_normal_padding: pad the end to k·rate, "(k w) -> (w k)"; then back
        k = -(-L // rate)
        padded = F.pad(xz, (0, k * rate - L))
        xz_b = padded.reshape(1, -1, k, rate).transpose(2, 3).reshape(1, -1, k * rate)
        out_b = _inner(xz_b, w, "_b").reshape(1, D_INNER, rate, k).transpose(2, 3).reshape(1, D_INNER, k * rate)
        out = out + out_b[..., :L]
    elif layer == "bimamba":
        out = out + _inner(xz.flip(-1), w, "_b").flip(-1)
    return out[0].T[None] @ w["out_proj.weight"].T


def restated_forward(state: dict[str, torch.Tensor], x: torch.Tensor, layer: str, rate: int):
    """models/MambaMIL.py MambaMIL.forward in float64: logits (1, C) and the attention softmax (1, N)."""
    w = {k: v.double() for k, v in state.items()}
    h = F.gelu(x.double()[None] @ w["_fc1.0.weight"].T + w["_fc1.0.bias"])
    n_layers = len({k.split(".")[1] for k in w if k.startswith("layers.")})
    for i in range(n_layers):
        p = f"layers.{i}."
        normed = F.layer_norm(h, (D_MODEL,), w[p + "0.weight"], w[p + "0.bias"])
        mixer = {k[len(p) + 2 :]: v for k, v in w.items() if k.startswith(p + "1.")}
        h = _mixer(normed, mixer, layer, rate) + h
    h = F.layer_norm(h, (D_MODEL,), w["norm.weight"], w["norm.bias"])
    a = torch.tanh(h @ w["attention.0.weight"].T + w["attention.0.bias"]) @ w["attention.2.weight"].T
    a = F.softmax(a.transpose(1, 2) + w["attention.2.bias"], dim=-1)  # (1, 1, N)
    logits = torch.bmm(a, h).squeeze(0) @ w["classifier.weight"].T + w["classifier.bias"]
    return logits, a[0]


@pytest.mark.parametrize(
    ("layer", "rate", "n", "task"),
    [("srmamba", 5, 27, "classification"), ("srmamba", 4, 24, "survival"), ("bimamba", 5, 17, "classification"),
     ("mamba", 5, 19, "survival")],
)  # fmt: skip
def test_original_state_dict_gives_the_original_forward(tmp_path: Path, layer, rate, n, task) -> None:
    n_out = 3 if task == "classification" else 4
    state = original_state(layer, n_layers=2, n_out=n_out, seed=n)
    path = tmp_path / "s_0_checkpoint.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # as DataParallel saved it
    meta = {"layer": layer, "rate": rate, "task": task}
    meta.update({"classes": ["a", "b", "c"]} if task == "classification" else {"n_bins": n_out})
    model, _ = load_checkpoint(path, original=meta)
    x = torch.as_tensor(np.random.default_rng(n).normal(size=(n, IN_DIM)), dtype=torch.float32)
    with torch.no_grad():
        out = model.eval()(x)
    logits, attention = restated_forward(state, x, layer, rate)
    assert attention.std() > 1e-3 and logits.std() > 1e-2  # not a degenerate model
    torch.testing.assert_close(out["logits"].double(), logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["attention"].double(), attention, rtol=1e-4, atol=1e-6)
    if task == "survival":  # the original's survival head: hazards = σ(logits), S = cumprod(1 − hazards)
        torch.testing.assert_close(out["S"].double(), torch.cumprod(1 - torch.sigmoid(logits), 1), rtol=1e-4, atol=1e-6)
    # And through inference's bag path (stored order, the order of original checkpoints).
    bag = tmp_path / "bag.pt"
    torch.save(x, bag)
    result = bag_outputs(load_ensemble([path], device="cpu", original=meta), load_bag(bag))
    np.testing.assert_allclose(result.attention, attention[0].numpy(), rtol=1e-4, atol=1e-6)
