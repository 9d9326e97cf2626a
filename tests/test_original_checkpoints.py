"""Original MambaMIL checkpoints (bare state dicts with isyangshu/MambaMIL's key layout): never guessed, converted
once into project checkpoints that reload exactly, and usable by predict and heatmap with CLAM features."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from mambamil.cli import main
from mambamil.errors import CheckpointError
from mambamil.inference import bag_outputs, load_bag, load_ensemble
from mambamil.models import create_model, load_checkpoint

IN_DIM, D_MODEL = 32, 64


def original_state_dict(layer: str, n_out: int, task: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict as the original code saves it: torch.save(model.state_dict()), keys ``_fc1.0.*``,
    ``layers.{i}.{0,1}.*``, ``norm.*``, ``attention.{0,2}.*``, ``classifier.*`` (optionally DataParallel's
    ``module.``), with non-trivial weights."""
    torch.manual_seed(3)
    src = create_model("mambamil", IN_DIM, n_out, task=task, layer=layer, rate=5, n_layers=2, d_model=D_MODEL)
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    assert {"_fc1.0.weight", "layers.1.0.weight", "norm.weight", "attention.2.weight", "classifier.bias"} <= set(state)
    return {prefix + k: v for k, v in state.items()}


@pytest.fixture
def srmamba_file(tmp_path: Path) -> Path:
    path = tmp_path / "s_0_checkpoint.pt"
    torch.save(original_state_dict("srmamba", 3, "classification", prefix="module."), path)
    return path


def reference(layer: str, n_out: int, task: str, rate: int = 5) -> torch.nn.Module:
    """The model the original weights belong to, loaded directly."""
    model = create_model("mambamil", IN_DIM, n_out, task=task, layer=layer, rate=rate, n_layers=2, d_model=D_MODEL)
    model.load_state_dict(original_state_dict(layer, n_out, task))
    return model.eval()


@pytest.mark.parametrize(
    ("given", "option"),
    [
        ({}, "--layer, --rate, --task"),
        ({"layer": "srmamba", "task": "classification", "classes": ["a", "b", "c"]}, "--rate"),
        ({"layer": "srmamba", "rate": 5, "task": "classification"}, "--classes"),
        ({"layer": "srmamba", "rate": 5, "task": "survival"}, "--n-bins"),
    ],
)
def test_missing_metadata_names_the_option(srmamba_file: Path, given: dict, option: str) -> None:
    with pytest.raises(CheckpointError, match=f"add {option} ") as err:
        load_checkpoint(srmamba_file, original=given)
    assert str(srmamba_file) in str(err.value) and "\n" not in str(err.value)


def test_inconsistent_metadata_is_an_error(srmamba_file: Path) -> None:
    full = {"layer": "srmamba", "rate": 5, "task": "classification", "classes": ["a", "b", "c"]}
    with pytest.raises(CheckpointError, match="--layer mamba does not fit the weights"):
        load_checkpoint(srmamba_file, original={**full, "layer": "mamba"})
    with pytest.raises(CheckpointError, match="--classes gives 2 classes but the classifier has 3"):
        load_checkpoint(srmamba_file, original={**full, "classes": ["a", "b"]})


@pytest.mark.parametrize(("layer", "task", "n_out"), [("srmamba", "classification", 3), ("bimamba", "survival", 4)])
def test_given_metadata_reproduces_the_model(tmp_path: Path, layer: str, task: str, n_out: int) -> None:
    path = tmp_path / "s_1_checkpoint.pt"
    torch.save(original_state_dict(layer, n_out, task), path)
    meta = {"layer": layer, "rate": 5, "task": task}
    meta.update({"classes": ["a", "b", "c"]} if task == "classification" else {"n_bins": n_out})
    model, extra = load_checkpoint(path, original=meta)
    assert extra["source"] == "isyangshu/MambaMIL" and extra["order"] == {"method": "stored", "seed": 0}
    x = torch.randn(300, IN_DIM)
    with torch.no_grad():
        out, ref = model(x), reference(layer, n_out, task)(x)
    assert torch.equal(out["logits"], ref["logits"]) and torch.equal(out["attention"], ref["attention"])
    if task == "survival":
        assert torch.equal(out["risk"], ref["risk"])
    # What the old loader guessed (srmamba, rate 10) is a different model: layer and rate matter.
    with torch.no_grad():
        assert not torch.allclose(reference("srmamba", n_out, task, rate=10)(x)["logits"], ref["logits"])


def test_convert_verb_then_exact_reload(srmamba_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "converted.pt"
    argv = ["convert-checkpoint", str(srmamba_file), "--out", str(out), "--layer", "srmamba", "--rate", "5"]
    assert main([*argv, "--task", "classification", "--classes", "a", "b", "c"]) == 0
    model, extra = load_checkpoint(out)  # no options needed any more
    assert (extra["task_kind"], extra["classes"], model.config["rate"]) == ("classification", ["a", "b", "c"], 5)
    x = torch.randn(257, IN_DIM)
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], reference("srmamba", 3, "classification")(x)["logits"])
    capsys.readouterr()
    assert main(["convert-checkpoint", str(srmamba_file), "--out", str(out), "--layer", "srmamba", "--rate", "5",
                 "--task", "classification"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "add --classes" in err


def write_clam(root: Path, slide_id: str, n: int, seed: int) -> tuple[Path, Path]:
    """A CLAM layout: h5_files/<id>.h5 (features + coords with CLAM's attributes) and pt_files/<id>.pt."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, IN_DIM)).astype(np.float32)
    cols = 8
    coords = np.stack([(np.arange(n) % cols) * 256, (np.arange(n) // cols) * 256], axis=1).astype(np.int64)
    h5 = root / "h5_files" / f"{slide_id}.h5"
    pt = root / "pt_files" / f"{slide_id}.pt"
    h5.parent.mkdir(parents=True, exist_ok=True)
    pt.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(h5, "w") as f:
        f["features"] = feats
        f["coords"] = coords
        f["coords"].attrs.update({"patch_level": 0, "patch_size": 256})
    torch.save(torch.from_numpy(feats), pt)
    return h5, pt


def test_predict_and_heatmap_with_clam_features(srmamba_file: Path, tmp_path: Path, real_slide: Path, capsys) -> None:
    h5, pt = write_clam(tmp_path / "clam", "CMU-1", n=80, seed=1)
    capsys.readouterr()
    # A bare state dict without its metadata: one line naming the options, not an IndexError.
    assert main(["predict", str(pt), "--checkpoint", str(srmamba_file), "--out", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "add --layer, --rate, --task" in err and "unexpected" not in err

    meta = ["--layer", "srmamba", "--rate", "5", "--task", "classification", "--classes", "a", "b", "c"]
    direct = tmp_path / "direct.csv"
    assert main(["predict", str(pt), str(h5), "--checkpoint", str(srmamba_file), "--out", str(direct), *meta]) == 0
    converted = tmp_path / "converted.pt"
    assert main(["convert-checkpoint", str(srmamba_file), "--out", str(converted), *meta]) == 0
    via = tmp_path / "via.csv"
    assert main(["predict", str(pt), str(h5), "--checkpoint", str(converted), "--out", str(via)]) == 0
    a, b = pd.read_csv(direct), pd.read_csv(via)
    pd.testing.assert_frame_equal(a, b)
    # .pt and .h5 hold the same bag in the same (stored) order: the same prediction; and it is the model's.
    probs = a[["prob_a", "prob_b", "prob_c"]].to_numpy()
    np.testing.assert_array_equal(probs[0], probs[1])
    with torch.no_grad():
        ref = torch.softmax(reference("srmamba", 3, "classification")(load_bag(pt).features)["logits"], 1)[0]
    np.testing.assert_allclose(probs[0], ref.numpy(), rtol=0, atol=1e-6)

    out = tmp_path / "heat"
    assert main(["heatmap", str(real_slide), "--features", str(h5), "--checkpoint", str(converted),
                 "--out", str(out), "--slide-id", "CMU-1"]) == 0  # fmt: skip
    scores = pd.read_csv(out / "CMU-1.scores.csv")
    result = bag_outputs(load_ensemble([converted]), load_bag(h5))
    np.testing.assert_allclose(scores["attention"].to_numpy(), result.attention, rtol=1e-5, atol=1e-7)
    assert (out / "CMU-1.attention.png").is_file() and (out / "CMU-1.gradxinput.png").is_file()
