"""The generators of benchmarks/aggregators_synthetic.py produce what the benchmark claims they do.

Raff & Holt's tests (NeurIPS 2023, "Reproducibility in Multiple Instance Learning: A Case For Algorithmic Unit
Tests", Algorithms 1–3) come from torchmil's generators; the facts checked here are the paper's: the poison instance
N(−10, 0.1) sits in the training negatives and the test positives; the concepts are N(2, 0.1) and N(3, 0.1); false-
frequency test negatives carry 35–45 instances of one concept (torchmil.datasets.FalseFrequencyMILDataset).
Those tests are marked slow: importing torchmil (torchmetrics, tensordict) alone takes 20–35 s on 2 shared cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import aggregators_synthetic as syn


def lesion_grid(bag: syn.Bag) -> np.ndarray:
    """The bag's lesion patches as a grid mask (from its coordinates)."""
    pos = bag.coords // syn.PATCH
    grid = np.zeros((pos[:, 1].max() + 1, pos[:, 0].max() + 1), bool)
    grid[pos[bag.kind == 1, 1], pos[bag.kind == 1, 0]] = True
    return grid


def concept(x: np.ndarray) -> np.ndarray:
    """Which of Raff & Holt's concepts (2 or 3, poison −10, background ~0) an instance is drawn from."""
    return np.rint(x.mean(axis=1)).astype(int)


# -- the spatial task -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_spatial_classes_differ_only_in_the_arrangement(seed):
    """One seed, both labels: the same tissue cells and the same multiset of patch features; only where the lesion
    patches lie differs — so the two classes' bags have one distribution as sets of features."""
    pos, neg = syn.spatial_bag(seed, True), syn.spatial_bag(seed, False)
    assert (pos.label, neg.label) == (1, 0)
    np.testing.assert_array_equal(np.sort(pos.features, axis=0), np.sort(neg.features, axis=0))
    assert set(map(tuple, pos.coords)) == set(map(tuple, neg.coords))
    assert pos.kind.sum() == neg.kind.sum() >= syn.MIN_CLUSTER
    # the lesion features are the lesion-type rows (mean shift on the signal dims), wherever they are placed
    for bag in (pos, neg):
        shift = bag.features[:, : syn.SIGNAL_DIMS].mean(axis=1)
        assert shift[bag.kind == 1].mean() > syn.LESION_MEAN - 0.6 > shift[bag.kind == 0].mean() + 1
    assert not np.array_equal(lesion_grid(pos), lesion_grid(neg))


@pytest.mark.parametrize("seed", range(30))
def test_spatial_label_is_one_contiguous_lesion_above_the_size(seed):
    """Positive: the lesion patches are one 4-connected cluster of ≥ MIN_CLUSTER; negative: no cluster over
    MAX_SMALL (and clusters never touch, diagonals included)."""
    pos, neg = syn.spatial_bag(seed, True), syn.spatial_bag(seed, False)
    labels, n = ndimage.label(lesion_grid(pos))
    assert n == 1 and (labels > 0).sum() >= syn.MIN_CLUSTER
    assert syn.largest_cluster(lesion_grid(neg)) <= syn.MAX_SMALL
    _, n8 = ndimage.label(lesion_grid(neg), structure=np.ones((3, 3)))
    assert n8 == ndimage.label(lesion_grid(neg))[1] >= syn.MIN_CLUSTER // syn.MAX_SMALL


def test_spatial_dataset_balances_labels_and_lesion_counts():
    bags = syn.grid_bags("spatial", 40, seed=3)
    labels = np.array([b.label for b in bags])
    assert labels.sum() == 20
    k = np.array([b.kind.sum() for b in bags])
    assert k.min() >= syn.MIN_CLUSTER and k.max() <= syn.MAX_LESION
    # k is drawn before the label: both classes span the range (no class-dependent count)
    assert abs(k[labels == 1].mean() - k[labels == 0].mean()) < 2.5


def test_demo_analogue_lesion_only_in_positives():
    for b in syn.grid_bags("demo", 6, seed=1):
        share = b.kind.mean()
        assert (share > 0.02) if b.label else share == 0


# -- Raff & Holt's tests through torchmil ------------------------------------------------------------------------
@pytest.mark.slow
def test_single_concept_poison_is_negative_evidence_in_training_and_moves_at_test():
    """Training negatives carry one poison instance and positives none; at test time it is in the positives:
    a model that learned "positive = no poison" fails."""
    for train, poisoned_label in ((True, 0), (False, 1)):
        for b in syn.raff_holt_bags("single_concept", 20, train, seed=0):
            poison = (b.kind == syn.POISON).sum()
            assert poison == (b.label == poisoned_label)
            if poison:
                assert concept(b.features[b.kind == syn.POISON]) == [-10]
            if b.label == 1:
                assert 1 <= (b.kind == 1).sum() <= 3


@pytest.mark.slow
def test_multi_concept_positives_hold_both_concepts_negatives_one():
    for b in syn.raff_holt_bags("multi_concept", 20, True, seed=0):
        c = concept(b.features[b.kind == 1])
        if b.label:
            assert {2, 3} <= set(c)
        else:
            assert len(c) == 1 and c[0] in (2, 3) and (b.kind == syn.POISON).sum() == 1


@pytest.mark.slow
def test_false_frequency_test_negatives_repeat_one_concept():
    for train, counts in ((True, {1}), (False, set(range(35, 45)))):
        for b in syn.raff_holt_bags("false_frequency", 20, train, seed=0):
            c = concept(b.features[b.kind == 1])
            if b.label:
                assert sorted(c) == [2, 3]
            else:
                assert len(c) in counts and set(c) == {2}


@pytest.mark.slow
def test_raff_holt_bags_are_seeded_and_shuffled():
    """The seed fixes the bags, whatever torch's generator did before (torchmil seeds NumPy but draws from torch's
    generator, which is seeded here); the poison is not at a fixed place in the sequence (torchmil stacks it
    first)."""
    a = syn.raff_holt_bags("single_concept", 10, True, seed=4)
    torch.rand(7)
    b = syn.raff_holt_bags("single_concept", 10, True, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.features, y.features)
    c = syn.raff_holt_bags("single_concept", 10, True, seed=5)
    assert not np.array_equal(a[0].features, c[0].features)
    places = {int(np.flatnonzero(x.kind == syn.POISON)[0]) for x in a if x.label == 0}
    assert len(places) > 1


# -- the harness ---------------------------------------------------------------------------------------------------
def test_orders_come_from_the_order_stage_and_2d_reads_coordinates():
    from mambamil.order import order_permutation

    bag = syn.spatial_bag(0, True)
    for order in ("raster", "snake", "hilbert", "random"):
        x, coords = syn.sequence(bag, order)
        perm = order_permutation(bag.coords, order, step=syn.PATCH, seed=bag.seed % 2**32)
        np.testing.assert_array_equal(x.numpy(), bag.features[perm])
        np.testing.assert_array_equal(coords.numpy(), bag.coords[perm])
    assert not syn.order_sensitive("abmil") and syn.order_sensitive("mambamil")


def test_2d_model_reads_the_grid_not_the_order():
    """mambamil_2d gets the coordinates (call_model), so its output does not depend on the order of the bag."""
    pytest.importorskip("mambamil.models.mambamil2d")
    assert syn.reads("mambamil_2d") == "2D grid"
    model = syn.build("mambamil_2d", 0).eval()
    bag = syn.spatial_bag(1, True)
    with torch.inference_mode():
        by_order = [syn.forward(model, *syn.sequence(bag, order)) for order in ("raster", "random")]
    torch.testing.assert_close(by_order[0], by_order[1], atol=1e-4, rtol=1e-4)


def test_harness_trains_predicts_and_evaluates(tmp_path):
    """A tiny run through the cache: the prediction frame is what the evaluation reads, and a cached run is read
    back, not retrained."""
    train, test = syn.grid_bags("spatial", 6, seed=0), syn.grid_bags("spatial", 12, seed=1)
    runs = syn.Runs(tmp_path, {"epochs": 1}, seed=0)
    frames, _ = runs.run("spatial", "abmil", "raster", train, {"test": test}, epochs=1)
    r = syn.auc_interval(frames["test"])
    assert 0 <= r["low"] <= r["auc"] <= r["high"] <= 1
    again, _ = runs.run("spatial", "abmil", "raster", [], {"test": test}, epochs=1)
    np.testing.assert_allclose(again["test"]["prob_positive"], frames["test"]["prob_positive"])
