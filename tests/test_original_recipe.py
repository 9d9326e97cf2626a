"""The original MambaMIL recipe as per-task settings: config/mambamil_original.yaml validates and gives each task
the original's settings; project defaults stay as they were (fp32 is the new default precision)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mambamil.bags import Sample, TaskSpec
from mambamil.config import default_section, load_config, task_model, task_training
from mambamil.errors import ConfigError
from mambamil.train.engine import TrainSettings, sampling_groups

REPO = Path(__file__).resolve().parents[1]


def test_original_config_gives_each_task_the_original_settings() -> None:
    config = load_config(REPO / "config" / "mambamil_original.yaml")
    sub, surv = task_training(config, "subtype"), task_training(config, "survival")
    assert (sub["folds"], sub["min_epochs"], sub["monitor"], sub["grad_accum"]) == (10, 50, "loss", 1)
    assert (surv["folds"], surv["min_epochs"], surv["monitor"], surv["grad_accum"]) == (5, 40, "metric", 32)
    for t in (sub, surv):
        assert (t["epochs"], t["patience"], t["sampler"], t["precision"]) == (200, 20, "weighted", "fp32")
        assert t["standardize_features"] is False and t["order"] == "raster"
    assert task_model(config, "subtype", "mambamil")["dropout"] == 0.0
    assert task_model(config, "survival", "mambamil") == {
        "model": "mambamil", "layer": "srmamba", "rate": 5, "n_layers": 2, "dropout": 0.25
    }  # fmt: skip


def test_project_defaults() -> None:
    training = default_section("training")
    assert (training["precision"], training["monitor"], training["grad_accum"], training["sampler"]) == (
        "fp32", "auto", 1, "none"
    )  # fmt: skip
    settings = TrainSettings.from_config(training)
    assert settings.precision == "fp32" and settings.monitor == "auto"


def test_per_task_training_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("slides: s.csv\nlabels: l.csv\ntasks: {survival: {type: survival, training: {grad_accum: 0}}}\n")
    with pytest.raises(ConfigError, match=r"tasks\.survival\.training: training\.grad_accum: 0 is less than"):
        load_config(path)
    path.write_text("slides: s.csv\nlabels: l.csv\ntraining: {precision: fp16}\n")
    with pytest.raises(ConfigError, match=r"training\.precision"):
        load_config(path)


def test_weighted_sampling_groups_survival_by_bin_and_event() -> None:
    samples = [Sample(str(i), str(i), [str(i)], label=b, event=e) for i, (b, e) in enumerate([(0, 1), (0, 0), (3, 1)])]
    groups = sampling_groups(samples, TaskSpec("s", "survival", n_bins=4))
    np.testing.assert_array_equal(groups, [1, 0, 7])
    classes = sampling_groups(samples, TaskSpec("c", "classification", classes=("a", "b", "c", "d")))
    np.testing.assert_array_equal(classes, [0, 0, 3])


def test_balanced_class_weights_change_the_loss_and_gradient() -> None:
    """One bag per step: ``balanced`` weights scale each bag's loss (and gradient) by its class weight, so the
    rare class counts more; a mean-reduced weighted cross-entropy over one bag would cancel them."""
    import torch

    from mambamil.train.engine import Objective

    task = TaskSpec("subtype", "classification", classes=("a", "b"))
    train = [Sample(str(i), str(i), [str(i)], label=int(i == 0)) for i in range(4)]  # 3 x "a", 1 x "b"
    logits = torch.tensor([[0.3, -0.2]])

    def loss_and_grad(class_weights: str, sample: Sample) -> tuple[float, torch.Tensor]:
        objective = Objective(task, TrainSettings.from_config(class_weights=class_weights), train)
        x = logits.clone().requires_grad_(True)
        loss = objective.loss({"logits": x}, sample)
        loss.backward()
        return float(loss), x.grad

    for sample, weight in ((train[0], 4 / (2 * 1)), (train[1], 4 / (2 * 3))):  # n / (n_classes * count)
        plain, g_plain = loss_and_grad("none", sample)
        weighted, g_weighted = loss_and_grad("balanced", sample)
        assert weighted == pytest.approx(weight * plain)
        assert torch.allclose(g_weighted, weight * g_plain)
        assert weighted != pytest.approx(plain)
