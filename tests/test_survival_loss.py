"""The survival objective against values worked out by hand: the discrete-time NLL of a censored and an
uncensored patient with alpha ≠ 0 (as the training engine calls it), and time-bin edges as quantiles of the
observed-event times of patients (not of censored times, not of slides)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambamil.bags import Sample, TaskSpec, build_samples
from mambamil.config import default_section
from mambamil.train.engine import Objective, TrainSettings
from mambamil.train.losses import nll_survival_loss

# hazards h = (0.1, 0.2, 0.3, 0.4) → survival S = cumprod(1 − h) = (0.9, 0.72, 0.504, 0.3024)
HAZARDS = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
SURVIVAL = torch.cumprod(1 - HAZARDS, dim=1)
ALPHA = 0.4
# An event in bin 2: it survived bins 0-1 (S = 0.72) and died in bin 2 (h = 0.3): −ln 0.72 − ln 0.3.
UNCENSORED_BIN2 = 1.5324768712979722
# Censored in bin 1: it survived through bin 1 (S = 0.72): (1 − alpha)·(−ln 0.72) = 0.6 · 0.3285…
CENSORED_BIN1 = 0.19710244018322165


def loss(y: list[int], event: list[int], alpha: float = ALPHA) -> float:
    n = len(y)
    return float(
        nll_survival_loss(HAZARDS.repeat(n, 1), SURVIVAL.repeat(n, 1), torch.tensor(y), torch.tensor(event), alpha)
    )


def test_nll_equals_the_hand_computed_likelihood() -> None:
    assert SURVIVAL[0, 1].item() == pytest.approx(0.72) and SURVIVAL[0, 3].item() == pytest.approx(0.3024)
    assert pytest.approx(-math.log(0.72) - math.log(0.3), rel=1e-12) == UNCENSORED_BIN2
    assert loss([2], [1]) == pytest.approx(UNCENSORED_BIN2, rel=1e-9)
    assert loss([1], [0]) == pytest.approx(CENSORED_BIN1, rel=1e-9)
    assert loss([2, 1], [1, 0]) == pytest.approx((UNCENSORED_BIN2 + CENSORED_BIN1) / 2, rel=1e-9)  # batch mean
    # The edges of the bin range: an event in bin 0 has no survival term; censored in the last bin: −ln S(3).
    assert loss([0], [1]) == pytest.approx(-math.log(0.1), rel=1e-9)
    assert loss([3], [0]) == pytest.approx(-(1 - ALPHA) * math.log(0.3024), rel=1e-9)
    # alpha weights only the censored term's share: alpha = 0 gives the plain likelihood.
    assert loss([1], [0], alpha=0.0) == pytest.approx(-math.log(0.72), rel=1e-9)
    assert loss([2], [1], alpha=0.0) == pytest.approx(UNCENSORED_BIN2, rel=1e-9)
    default = nll_survival_loss(HAZARDS, SURVIVAL, torch.tensor([1]), torch.tensor([0]))  # alpha defaults to 0
    assert float(default) == pytest.approx(-math.log(0.72), rel=1e-9)


def test_the_engine_objective_uses_the_configured_alpha() -> None:
    task = TaskSpec("survival", "survival", n_bins=4)
    settings = TrainSettings.from_config({**default_section("training"), "alpha_surv": ALPHA})
    objective = Objective(task, settings, [])
    out = {"logits": torch.logit(HAZARDS).float(), "hazards": HAZARDS.float(), "S": SURVIVAL.float()}
    censored = Sample("p", "p", ["s"], label=1, time=5.0, event=0)
    uncensored = Sample("q", "q", ["t"], label=2, time=5.0, event=1)
    assert float(objective.loss(out, censored)) == pytest.approx(CENSORED_BIN1, rel=1e-6)
    assert float(objective.loss(out, uncensored)) == pytest.approx(UNCENSORED_BIN2, rel=1e-6)


def test_bin_edges_are_quantiles_of_patients_observed_event_times() -> None:
    rows = [(f"p{t}", f"s{t}", float(t), 1) for t in range(1, 8)]  # events at 1 … 7
    rows += [("p8", f"s8{k}", 8.0, 1) for k in "abc"]  # the event at 8: one patient with three slides
    rows += [("c1", "c1", 0.5, 0), ("c2", "c2", 100.0, 0), ("c3", "c3", 200.0, 0), ("c4", "c4", 300.0, 0)]
    labels = pd.DataFrame(rows, columns=["case_id", "slide_id", "time", "event"])
    features = {sid: Path(f"{sid}.h5") for sid in labels["slide_id"]}  # only their presence is read
    samples, meta = build_samples(labels, features, TaskSpec("os", "survival", n_bins=4), level="patient")
    # Quantiles (linear interpolation) of the patients' event times 1 … 8: positions 1.75, 3.5, 5.25 → 2.75, 4.5,
    # 6.25; the outer edges widened to every time (censored ones included).
    edges = np.array(meta["bin_edges"])
    np.testing.assert_allclose(edges[1:-1], [2.75, 4.5, 6.25], rtol=1e-12)
    assert edges[0] == pytest.approx(0.5, abs=1e-5) and edges[0] < 0.5
    assert edges[-1] == pytest.approx(300.0, abs=1e-5) and edges[-1] > 300.0
    bins = {s.case_id: s.label for s in samples}
    assert [bins[f"p{t}"] for t in range(1, 9)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (bins["c1"], bins["c2"], bins["c4"]) == (0, 3, 3)
    assert {s.case_id: s.slide_ids for s in samples}["p8"] == ["s8a", "s8b", "s8c"]
