"""Ensembling and explanation from their definitions: the ensemble's probabilities, risk and attention are the
mean of its members' (each member reading the bag in its own trained order, scores mapped back to the stored
instance order), and gradient × input is the input times the gradient of the explained output, checked against
the gradient written out by hand for a mean-pooling model and against autograd for MambaMIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mambamil.h5layout import CoordsAttrs, FeatureAttrs, write_features
from mambamil.inference import bag_outputs, forward, load_bag, load_ensemble
from mambamil.models import create_model, save_checkpoint

DIM, N = 5, 23
CLASSES = ["a", "b", "c"]


@pytest.fixture
def bag_path(tmp_path: Path) -> Path:
    """A bag stored in shuffled grid order, so its raster sequence is a real permutation of the stored order."""
    rng = np.random.default_rng(0)
    cells = rng.permutation(6 * 5)[:N]
    coords = np.stack([(cells % 6) * 256, (cells // 6) * 256], axis=1)
    feats = rng.normal(size=(N, DIM)).astype(np.float32)
    meta = CoordsAttrs(patch_size=256, patch_size_level0=256, step_level0=256)
    path = tmp_path / "slide.h5"
    write_features(path, feats, coords, FeatureAttrs(feature_dim=DIM), meta)
    return path


def raster(coords: np.ndarray) -> np.ndarray:
    """Row by row (y), left to right (x)."""
    return np.lexsort((coords[:, 0], coords[:, 1]))


def members(tmp_path: Path, task: str, orders: list[str], name: str = "mambamil") -> list[Path]:
    paths = []
    kwargs = {"d_model": 8, "n_layers": 1, "rate": 3} if name == "mambamil" else {"hidden": 6}
    n_out = len(CLASSES) if task == "classification" else 4
    for k, order in enumerate(orders):
        torch.manual_seed(10 + k)
        model = create_model(name, in_dim=DIM, n_classes=n_out, task=task, dropout=0.0, **kwargs)
        extra = {"task": "t", "task_kind": task, "in_dim": DIM, "order": {"method": order, "seed": 0}}
        extra["classes"] = CLASSES if task == "classification" else []
        paths.append(save_checkpoint(tmp_path / f"m{k}.pt", model, extra))
    return paths


def member_outputs(path: Path, x: torch.Tensor, perm: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """One member's outputs on the bag read in ``perm`` order; attention and gradient × input (by autograd)
    returned in the stored order."""
    payload = torch.load(path, weights_only=False)
    model = create_model(payload["model"], **{k: v for k, v in payload["config"].items() if k != "name"}).eval()
    model.load_state_dict(payload["state_dict"])
    xs = x[torch.as_tensor(perm)].clone().requires_grad_(True)
    out = model(xs)
    target = out["risk"][0] if task == "survival" else out["logits"][0, out["logits"][0].argmax()]
    (grad,) = torch.autograd.grad(target, xs)
    stored = np.empty(len(perm), dtype=np.int64)
    stored[perm] = np.arange(len(perm))  # sequence position of each stored instance
    res = {
        "attention": out["attention"].detach().reshape(-1).numpy()[stored],
        "gxi": (grad * xs).sum(-1).detach().numpy()[stored],
    }
    if task == "survival":
        res["risk"] = out["risk"].detach().numpy().reshape(-1)
    else:
        res["probs"] = torch.softmax(out["logits"], 1).detach().numpy()[0]
    return res


@pytest.mark.parametrize("task", ["classification", "survival"])
def test_ensemble_is_the_mean_of_its_members(tmp_path: Path, bag_path: Path, task: str) -> None:
    paths = members(tmp_path, task, ["raster", "stored", "raster"])
    bag = load_bag(bag_path)
    perms = [raster(bag.coords), np.arange(N), raster(bag.coords)]
    assert not np.array_equal(perms[0], perms[1])
    result = bag_outputs(load_ensemble(paths, device="cpu"), bag, gradients=True)
    each = [member_outputs(p, bag.features, perm, task) for p, perm in zip(paths, perms, strict=True)]
    if task == "classification":
        mean = np.mean([m["probs"] for m in each], axis=0)
        assert not np.allclose(each[0]["probs"], mean, atol=1e-3)  # the members differ
        got = np.array([result.prediction[f"prob_{c}"] for c in CLASSES])
        np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-7)
        assert result.prediction["predicted"] == CLASSES[int(mean.argmax())]
    else:
        mean_risk = np.mean([m["risk"] for m in each])
        assert abs(each[0]["risk"][0] - mean_risk) > 1e-4
        assert result.prediction["risk"] == pytest.approx(mean_risk, rel=1e-5)
    np.testing.assert_allclose(result.attention, np.mean([m["attention"] for m in each], axis=0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.gradxinput, np.mean([m["gxi"] for m in each], axis=0), rtol=1e-4, atol=1e-6)


def hand_gradient(model: torch.nn.Module, x: np.ndarray, task: str) -> np.ndarray:
    """d(explained output)/dx for mean pooling, written out: h_i = relu(W1 x_i + b1), logits = W2 mean(h) + b2;
    d/dx_i = W1ᵀ (mask_i ⊙ W2ᵀ g) / N with g = d(target)/d(logits): one-hot of the predicted class, or for the
    risk −Σ_k S_k (S_k = Π_{j≤k} (1 − σ(l_j))), g_j = σ(l_j) Σ_{k≥j} S_k."""
    w1, b1 = (t.detach().double().numpy() for t in (model.fc[0].weight, model.fc[0].bias))
    w2, b2 = (t.detach().double().numpy() for t in (model.classifier.weight, model.classifier.bias))
    pre = x @ w1.T + b1
    logits = w2 @ np.maximum(pre, 0).mean(0) + b2
    if task == "classification":
        g = np.eye(len(logits))[logits.argmax()]
    else:
        sig = 1 / (1 + np.exp(-logits))
        surv = np.cumprod(1 - sig)
        g = sig * np.cumsum(surv[::-1])[::-1]
    return ((pre > 0) * (w2.T @ g)) @ w1 / len(x)


@pytest.mark.parametrize("task", ["classification", "survival"])
def test_gradient_times_input_is_the_input_times_the_hand_written_gradient(tmp_path: Path, bag_path, task) -> None:
    (path,) = members(tmp_path, task, ["raster"], name="mean")
    ensemble = load_ensemble([path], device="cpu")
    bag = load_bag(bag_path)
    x = bag.features.double().numpy()
    expected = (x * hand_gradient(ensemble.models[0], x, task)).sum(-1)
    _, gxi = forward(ensemble.models[0], bag.features, torch.device("cpu"), "fp32", gradients=True)
    np.testing.assert_allclose(gxi.numpy(), expected, rtol=1e-4, atol=1e-6)
    plain = hand_gradient(ensemble.models[0], x, task).sum(-1)
    assert np.abs(expected).max() > 1e-3 and not np.allclose(expected, plain)  # not the gradient alone
    # Through bag_outputs (raster sequence, scores back in stored order): the same per-instance values.
    np.testing.assert_allclose(bag_outputs(ensemble, bag, gradients=True).gradxinput, expected, rtol=1e-4, atol=1e-6)
    assert bag_outputs(ensemble, bag).gradxinput is None  # no gradients unless asked for
