"""Patient-level bootstrap, vectorised: one matrix of resampling weights and weighted estimators that evaluate
every resample at once.

A resample is a row of ``W`` (resamples × prediction rows): how many times each row's patient was drawn (all rows
of one patient share it). Each estimator below is the library's estimator with those counts as weights; with
``W`` a row of ones it equals the library's value (``tests/test_evaluation.py`` checks each against scikit-learn,
lifelines or scikit-survival on the same data). Survival estimators with inverse-probability-of-censoring weights
take the censoring distribution from the full sample (fixed over resamples).

Intervals (:func:`interval`): BCa by default (:func:`bca_interval`, scipy's, its jackknife over patients run
through the same weighted estimators) or percentile; resamples in which a metric is undefined are left out and
counted. ``benchmarks/interval_coverage.py`` measures their coverage on small cohorts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

#: How the intervals are made, written next to the numbers (metrics.json, summary.csv, the report).
METHOD = (
    "{level:g} % {interval} bootstrap interval: {n} resamples of patients with replacement (seed {seed}) on the "
    "pooled out-of-fold test predictions; resamples in which a metric cannot be computed (e.g. one class only) "
    "are left out and the usable ones counted"
)
#: The interval methods (``evaluation.interval``), in words.
INTERVALS = {
    "bca": "bias-corrected and accelerated (BCa: scipy.stats.bootstrap, acceleration from the leave-one-patient-out "
    "jackknife)",
    "percentile": "percentile",
}


def bootstrap_weights(groups: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Resampling counts (``n_resamples`` × rows, float): each resample draws as many patients as there are, with
    replacement, and every row of a patient (``groups``: its case id) gets the patient's count. Seeded."""
    _, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n = int(index.max()) + 1 if len(index) else 0
    if n == 0:
        return np.zeros((n_resamples, 0))
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
    return counts[:, index].astype(float)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float, int]:
    """(low, high, resamples used) from bootstrap replicates (NaN replicates, e.g. a resample with one class
    only, are left out)."""
    samples = np.asarray(samples, dtype=float)
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return float("nan"), float("nan"), 0
    alpha = (1 - level) / 2
    low, high = np.quantile(valid, [alpha, 1 - alpha])
    return float(low), float(high), int(valid.size)


def bca_interval(
    samples: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    groups: np.ndarray,
    level: float = 0.95,
    batch: int = 256,
) -> tuple[float, float, int]:
    """(low, high, resamples used) of the BCa interval (Efron & Tibshirani 1993, §14.3) computed by
    ``scipy.stats.bootstrap`` from the finite bootstrap ``samples``: ``statistic`` maps resampling weights
    (resamples × rows, as :func:`bootstrap_weights` makes them) to one value per row of weights; scipy evaluates it
    on the full sample (bias correction) and on every leave-one-patient-out sample (``groups``: each row's case
    id; the jackknife acceleration). NaN when BCa is undefined (a jackknife sample the metric cannot be computed
    on, or a degenerate bootstrap distribution)."""
    from scipy.stats import bootstrap

    samples = np.asarray(samples, dtype=float)
    valid = samples[np.isfinite(samples)]
    _, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n = int(index.max()) + 1 if len(index) else 0
    if valid.size == 0 or n < 2:
        return float("nan"), float("nan"), int(valid.size)

    def on_patients(i: np.ndarray, axis: int = -1) -> np.ndarray:
        """``statistic`` of samples of patient indices (… × drawn) via their counts as weights."""
        flat = np.asarray(i).reshape(-1, np.shape(i)[-1])
        counts = np.zeros((len(flat), n))
        np.add.at(counts, (np.arange(len(flat))[:, None], flat), 1.0)
        return np.asarray(statistic(counts[:, index]), dtype=float).reshape(np.shape(i)[:-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined interval comes back NaN (scipy warns why)
        with np.errstate(all="ignore"):
            ci = bootstrap(
                (np.arange(n),),
                on_patients,
                n_resamples=0,
                bootstrap_result=SimpleNamespace(bootstrap_distribution=valid),
                vectorized=True,
                confidence_level=level,
                method="BCa",
                batch=batch,
            ).confidence_interval
    low, high = float(ci.low), float(ci.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        return float("nan"), float("nan"), int(valid.size)
    return low, high, int(valid.size)


def interval(
    method: str,
    samples: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    groups: np.ndarray,
    level: float = 0.95,
) -> tuple[float, float, int, str]:
    """(low, high, resamples used, method used) by ``method`` (a key of :data:`INTERVALS`); a BCa interval that
    is undefined falls back to the percentile interval, and the method used says so."""
    if method == "bca":
        low, high, used = bca_interval(samples, statistic, groups, level)
        if np.isfinite(low) or used == 0:
            return low, high, used, "bca"
        return (*percentile_interval(samples, level), "percentile (BCa undefined)")
    if method != "percentile":
        raise ValueError(f"unknown interval method {method!r} (one of {sorted(INTERVALS)})")
    return (*percentile_interval(samples, level), "percentile")


def format_p_value(p: float, resamples: int, digits: int = 3) -> str:
    """A bootstrap p-value as text: NaN as "NaN"; 0 as "< 2/B" with B the usable resamples (no replicate fell on
    the far side of 0, so the two-sided p = 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)) is below 2/B, not zero)."""
    if p is None or not np.isfinite(p):
        return "NaN"
    if p == 0:
        return f"< {2 / resamples:.2g} (2/B, B = {resamples})" if resamples > 0 else "NaN"
    return f"{p:.{digits}f}"


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts ``score`` ascending and the start of each run of equal scores in it."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def weighted_mann_whitney(score: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """P(score of a positive > score of a negative) + ½ P(tie) per resample, positives and negatives weighted by
    ``w_pos`` / ``w_neg`` (resamples × rows, zero for rows of the other kind): the AUC as scikit-learn's
    ``roc_auc_score`` computes it (and, with inverse-probability weights on the cases, scikit-survival's
    cumulative/dynamic AUC)."""
    score = np.asarray(score, dtype=float)
    if score.size == 0:
        return np.full(w_pos.shape[0], np.nan)
    order, starts = _tie_groups(score)
    pos = np.add.reduceat(w_pos[:, order], starts, axis=1)
    neg = np.add.reduceat(w_neg[:, order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    return _ratio(num, pos.sum(axis=1) * neg.sum(axis=1))


def auc(score: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Binary ROC AUC per resample."""
    positive = np.asarray(positive, dtype=bool)
    return weighted_mann_whitney(score, W * positive, W * ~positive)


def macro_ovr_auc(y: np.ndarray, probs: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AUC of a binary task (class 1's probability), or the unweighted mean of one-vs-rest AUCs (multiclass; NaN
    when a class is missing from a resample), as ``roc_auc_score(multi_class="ovr", average="macro")``."""
    y = np.asarray(y, dtype=int)
    if probs.shape[1] == 2:
        return auc(probs[:, 1], y == 1, W)
    return np.mean([auc(probs[:, k], y == k, W) for k in range(probs.shape[1])], axis=0)


def average_precision(score: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision (step-wise area under the precision–recall curve, thresholds at every distinct score)
    per resample, as scikit-learn's ``average_precision_score``."""
    positive = np.asarray(positive, dtype=bool)
    order, starts = _tie_groups(-np.asarray(score, dtype=float))  # descending scores
    tp = np.cumsum(np.add.reduceat((W * positive)[:, order], starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat((W * ~positive)[:, order], starts, axis=1), axis=1)
    precision = _ratio(tp, tp + fp)
    total = tp[:, -1:]
    recall_step = np.diff(np.concatenate([np.zeros_like(total), tp], axis=1), axis=1)
    return _ratio(np.nansum(recall_step * precision, axis=1), total[:, 0])


def macro_average_precision(y: np.ndarray, probs: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision of class 1 (binary), or the mean over classes one-vs-rest (multiclass)."""
    y = np.asarray(y, dtype=int)
    if probs.shape[1] == 2:
        return average_precision(probs[:, 1], y == 1, W)
    return np.mean([average_precision(probs[:, k], y == k, W) for k in range(probs.shape[1])], axis=0)


def weighted_mean(values: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted mean of one value per row, per resample (Brier score from per-row squared errors, ...)."""
    return _ratio(W @ np.asarray(values, dtype=float), W.sum(axis=1))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int, W: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in the resample (``balanced_accuracy_score``)."""
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    recalls = np.array(
        [_ratio(W @ ((y == k) & (pred == k)).astype(float), W @ (y == k).astype(float)) for k in range(n_classes)]
    )
    present = np.isfinite(recalls)
    return _ratio(np.where(present, recalls, 0).sum(axis=0), present.sum(axis=0).astype(float))


def weighted_f1(y: np.ndarray, pred: np.ndarray, n_classes: int, W: np.ndarray) -> np.ndarray:
    """Per-class F1 averaged with the classes' supports as weights (``f1_score(average="weighted")``)."""
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    total = np.zeros(W.shape[0])
    for k in range(n_classes):
        tp = W @ ((y == k) & (pred == k)).astype(float)
        fp = W @ ((y != k) & (pred == k)).astype(float)
        fn = W @ ((y == k) & (pred != k)).astype(float)
        f1 = np.nan_to_num(_ratio(2 * tp, 2 * tp + fp + fn))
        total += f1 * (tp + fn)
    return _ratio(total, W.sum(axis=1))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int, W: np.ndarray) -> np.ndarray:
    """Σ over equal-width confidence bins of (bin share) × |observed frequency − mean confidence|.

    Binary tasks pass the positive class's probability and whether the patient is positive; multiclass tasks the
    top-class probability and whether the top class is right. No library computes it; the test checks it against
    scikit-learn's ``calibration_curve`` bins."""
    confidence = np.asarray(confidence, dtype=float)
    bins = np.clip((confidence * n_bins).astype(int), 0, n_bins - 1)
    onehot = np.eye(n_bins)[bins]
    gap = np.abs(W @ (onehot * np.asarray(correct, dtype=float)[:, None]) - W @ (onehot * confidence[:, None]))
    return _ratio(gap.sum(axis=1), W.sum(axis=1))


def recall(hit: np.ndarray, relevant: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Share of ``relevant`` rows that are ``hit`` (sensitivity: positives called positive; specificity:
    negatives called negative)."""
    relevant = np.asarray(relevant, dtype=bool)
    return _ratio(W @ (np.asarray(hit, dtype=bool) & relevant).astype(float), W @ relevant.astype(float))


def concordance(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    W: np.ndarray,
    row_weight: np.ndarray | None = None,
    block: int = 1024,
) -> np.ndarray:
    """Harrell's concordance index per resample (lifelines' ``concordance_index`` and scikit-survival's
    ``concordance_index_censored``): a pair is comparable when the earlier time is an event (or both times are
    equal, one an event and the other censored); concordant when that patient has the higher risk; risk ties
    count ½. ``row_weight`` weights pairs by their event patient (Uno's IPCW c-index: 1/G(tᵢ)², 0 beyond τ).

    O(resamples × events × rows) time; the pair matrix is built ``block`` events at a time."""
    time, risk = np.asarray(time, dtype=float), np.asarray(risk, dtype=float)
    event = np.asarray(event, dtype=bool)
    weight = np.ones(len(time)) if row_weight is None else np.asarray(row_weight, dtype=float)
    rows = np.flatnonzero(event & (weight > 0))
    num = np.zeros(W.shape[0])
    den = np.zeros(W.shape[0])
    for start in range(0, len(rows), block):
        i = rows[start : start + block]
        ti, ri = time[i, None], risk[i, None]
        comparable = (ti < time[None, :]) | ((ti == time[None, :]) & ~event[None, :])
        score = comparable * np.where(ri > risk[None, :], 1.0, np.where(ri == risk[None, :], 0.5, 0.0))
        wi = W[:, i] * weight[i]
        num += ((wi @ score) * W).sum(axis=1)
        den += ((wi @ comparable.astype(float)) * W).sum(axis=1)
    return _ratio(num, den)


def survival_brier(
    time: np.ndarray,
    event: np.ndarray,
    surv: np.ndarray,
    grid: np.ndarray,
    g_at_time: np.ndarray,
    g_at_grid: np.ndarray,
    W: np.ndarray,
) -> np.ndarray:
    """IPCW Brier score at each ``grid`` time per resample (resamples × grid), as scikit-survival's
    ``brier_score``: ``surv`` (rows × grid) the predicted survival, ``g_at_time`` / ``g_at_grid`` the censoring
    survival at each row's time and at the grid times."""
    time, event = np.asarray(time, dtype=float)[:, None], np.asarray(event, dtype=bool)[:, None]
    with np.errstate(divide="ignore"):
        inv_time = np.where(g_at_time > 0, 1.0 / np.where(g_at_time > 0, g_at_time, 1), 0.0)[:, None]
        inv_grid = np.where(g_at_grid > 0, 1.0 / np.where(g_at_grid > 0, g_at_grid, 1), 0.0)[None, :]
    case = (time <= grid[None, :]) & event
    control = time > grid[None, :]
    loss = np.square(surv) * case * inv_time + np.square(1.0 - surv) * control * inv_grid
    return _ratio(W @ loss, W.sum(axis=1)[:, None])


def integrated(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Trapezoid integral over ``grid`` divided by its span, per row (the integrated Brier score)."""
    return np.trapezoid(values, grid, axis=-1) / (grid[-1] - grid[0])


def _curve_points(score: np.ndarray, positive: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives (resamples × thresholds, from (0, 0)) as the threshold falls through
    the distinct scores."""
    positive = np.asarray(positive, dtype=bool)
    order, starts = _tie_groups(-np.asarray(score, dtype=float))
    tp = np.cumsum(np.add.reduceat((W * positive)[:, order], starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat((W * ~positive)[:, order], starts, axis=1), axis=1)
    zero = np.zeros((W.shape[0], 1))
    return np.concatenate([zero, tp], axis=1), np.concatenate([zero, fp], axis=1)


def roc_band(score: np.ndarray, positive: np.ndarray, W: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """True-positive rate at each false-positive rate of ``grid``, per resample (NaN rows: one class only)."""
    tp, fp = _curve_points(score, positive, W)
    tpr, fpr = _ratio(tp, tp[:, -1:]), _ratio(fp, fp[:, -1:])
    out = np.full((W.shape[0], len(grid)), np.nan)
    for b in np.flatnonzero(np.isfinite(tpr[:, -1]) & np.isfinite(fpr[:, -1])):
        out[b] = np.interp(grid, fpr[b], tpr[b])
    return out


def pr_band(score: np.ndarray, positive: np.ndarray, W: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Precision at each recall of ``grid``, per resample (NaN rows: no positives)."""
    tp, fp = _curve_points(score, positive, W)
    recall_ = _ratio(tp, tp[:, -1:])
    precision = _ratio(tp, tp + fp)
    precision[:, 0] = 1.0
    out = np.full((W.shape[0], len(grid)), np.nan)
    for b in np.flatnonzero(np.isfinite(recall_[:, -1])):
        keep = np.isfinite(precision[b])
        out[b] = np.interp(grid, recall_[b, keep], precision[b, keep])
    return out
