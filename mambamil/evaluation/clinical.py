"""Numbers a clinical reader asks for beyond discrimination (TRIPOD+AI items 12e, 23): one-vs-rest AUC per
class, calibration slope and intercept (logistic recalibration, statsmodels), the decision curve (net benefit),
and the operating thresholds with sensitivity, specificity, PPV and NPV. Each takes a prediction frame as the
evaluation writes it (``predictions.csv``: ``target``, ``prob_<class>``, ``threshold``, ``fold``)."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pandas as pd

from mambamil.columns import probability_column
from mambamil.errors import one_line
from mambamil.evaluation import bootstrap as bs
from mambamil.evaluation.frame import EvaluationSettings, as_settings

#: A run's ``evaluation`` settings: the dataclass, or the dict metrics.json keeps of it.
Settings = EvaluationSettings | dict[str, Any] | None

#: Risk thresholds of the decision curve: 1 % to 99 % in steps of 1 %.
DECISION_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
#: Probabilities are clipped to [EPS, 1 − EPS] before the logit.
EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def calibration_slope_intercept(positive: np.ndarray, prob: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Logistic recalibration (Cox 1958; Van Calster et al. 2019): the slope is b in logit P(y) = a + b·logit(p)
    (1 = ideal, < 1 = predictions too extreme); the intercept (calibration-in-the-large) is a in
    logit P(y) = a + logit(p), the slope fixed at 1 (0 = ideal, > 0 = risks under-estimated). statsmodels GLM
    (binomial), with Wald intervals. NaN with a reason when one class is missing or the fit fails."""
    import statsmodels.api as sm

    y = np.asarray(positive, dtype=float)
    nan = float("nan")
    out = dict.fromkeys(("slope", "slope_low", "slope_high", "intercept", "intercept_low", "intercept_high"), nan)
    if len(np.unique(y)) < 2:
        return out | {"reason": "only one class present"}
    lp = _logit(prob)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            family = sm.families.Binomial()
            fit_slope = sm.GLM(y, sm.add_constant(lp, has_constant="add"), family=family).fit()
            fit_large = sm.GLM(y, np.ones((len(y), 1)), family=family, offset=lp).fit()
    except (ValueError, np.linalg.LinAlgError) as exc:  # perfect separation and the like
        return out | {"reason": one_line(exc) or type(exc).__name__}
    (slope_low, slope_high) = fit_slope.conf_int(1 - level)[1]
    (int_low, int_high) = fit_large.conf_int(1 - level)[0]
    return {
        "slope": float(fit_slope.params[1]),
        "slope_low": float(slope_low),
        "slope_high": float(slope_high),
        "intercept": float(fit_large.params[0]),
        "intercept_low": float(int_low),
        "intercept_high": float(int_high),
        "reason": None,
    }


def net_benefit(positive: np.ndarray, prob: np.ndarray, thresholds: np.ndarray = DECISION_THRESHOLDS) -> pd.DataFrame:
    """The decision curve (Vickers & Elkin 2006): at each risk threshold pₜ, net benefit = TP/n − FP/n · pₜ/(1 − pₜ)
    of treating the patients with p ≥ pₜ, beside treating all (prevalence − (1 − prevalence) · pₜ/(1 − pₜ)) and
    none (0). Written by hand: none of scikit-learn, statsmodels, scipy, lifelines or scikit-survival has it (the
    test checks it against the formula on a hand-counted example)."""
    y = np.asarray(positive, dtype=bool)
    p = np.asarray(prob, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    n = len(y)
    treat = p[None, :] >= t[:, None]
    tp = (treat & y[None, :]).sum(axis=1)
    fp = (treat & ~y[None, :]).sum(axis=1)
    odds = t / (1 - t)
    prevalence = y.mean() if n else float("nan")
    return pd.DataFrame(
        {
            "threshold": t,
            "model": tp / n - fp / n * odds,
            "treat_all": prevalence - (1 - prevalence) * odds,
            "treat_none": np.zeros(len(t)),
        }
    )


def decision_curve_png(curve: pd.DataFrame, title: str) -> bytes:
    """The decision curve as PNG bytes (model, treat all, treat none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["threshold"], curve["model"], label="model", color="C0")
    ax.plot(curve["threshold"], curve["treat_all"], label="treat all", color="C1", linestyle="--")
    ax.plot(curve["threshold"], curve["treat_none"], label="treat none", color="0.4", linestyle=":")
    top = float(np.nanmax(curve[["model", "treat_all"]].to_numpy())) if len(curve) else 1.0
    ax.set(xlabel="risk threshold", ylabel="net benefit", title=f"decision curve — {title}",
           ylim=(-0.05, max(top, 0.05) * 1.1), xlim=(0, 1))  # fmt: skip
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _interval_of(statistic, groups: np.ndarray, settings: Settings) -> tuple[float, float, int]:
    """The run's bootstrap interval (its evaluation settings; the schema's defaults for keys it lacks)."""
    s = as_settings(settings)
    W = bs.bootstrap_weights(groups, s.n_resamples, s.seed)
    low, high, used, _ = bs.interval(s.interval, statistic(W), statistic, groups, s.confidence_level)
    return low, high, used


def per_class_auc(preds: pd.DataFrame, classes: list[str], settings: Settings) -> pd.DataFrame:
    """One-vs-rest AUC of each class (scikit-learn), with its patient-bootstrap interval (``settings``: the
    ``evaluation`` settings of the run) and the usable resamples."""
    from sklearn.metrics import roc_auc_score

    y = preds["target"].to_numpy(dtype=int)
    groups = preds["case_id"].to_numpy()
    rows = []
    for k, name in enumerate(classes):
        score = preds[probability_column(name)].to_numpy(dtype=float)
        positive = y == k
        row: dict[str, Any] = {"class": name, "patients": int(positive.sum()), "rest": int((~positive).sum())}
        if positive.all() or not positive.any():
            row.update(auc=float("nan"), ci_low=float("nan"), ci_high=float("nan"), resamples=0,
                       reason="only one class present")  # fmt: skip
        else:
            low, high, used = _interval_of(lambda w, s=score, pos=positive: bs.auc(s, pos, w), groups, settings)
            row.update(auc=float(roc_auc_score(positive, score)), ci_low=low, ci_high=high, resamples=used,
                       reason=None)  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)


def operating_points(preds: pd.DataFrame, classes: list[str], settings: Settings) -> pd.DataFrame:
    """The threshold on the positive class's probability (``classes[1]``) of each test fold (chosen on its
    validation predictions; the ``threshold`` column) and, per fold and pooled, the counts at that threshold with
    sensitivity, specificity, PPV and NPV (scikit-learn's confusion matrix; the pooled rows with their bootstrap
    intervals). Empty without a ``threshold`` column or for a multi-class task."""
    from sklearn.metrics import confusion_matrix

    if len(classes) != 2 or "threshold" not in preds.columns:
        return pd.DataFrame()
    frame = preds[np.isfinite(preds["threshold"].to_numpy(dtype=float))]
    if frame.empty:
        return pd.DataFrame()
    groups = list(frame.groupby("fold")) if "fold" in frame.columns else []
    rows = []
    for fold, part in [*groups, ("all", frame)]:
        y = part["target"].to_numpy(dtype=int) == 1
        p = part[probability_column(classes[1])].to_numpy(dtype=float)
        thr = part["threshold"].to_numpy(dtype=float)
        called = p >= thr
        tn, fp, fn, tp = confusion_matrix(y, called, labels=[False, True]).ravel()
        ratios = {
            "sensitivity": (called, y),
            "specificity": (~called, ~y),
            "PPV": (y, called),
            "NPV": (~y, ~called),
        }
        unique = np.unique(thr)
        row: dict[str, Any] = {
            "test fold": fold,
            "threshold": f"{unique[0]:.3f}" if len(unique) == 1 else f"{len(unique)} fold thresholds",
            "TP": int(tp), "FP": int(fp), "TN": int(tn), "FN": int(fn),
        }  # fmt: skip
        for name, (hit, relevant) in ratios.items():
            row[name] = float(bs.recall(hit, relevant, np.ones((1, len(y))))[0])
        usable = []
        for name, (hit, relevant) in ratios.items():
            interval = ""
            if fold == "all":
                cases = part["case_id"].to_numpy()
                low, high, used = _interval_of(lambda w, h=hit, r=relevant: bs.recall(h, r, w), cases, settings)
                interval = f"[{low:.3f}, {high:.3f}]" if np.isfinite(low) else "NaN"
                usable.append(used)
            row[f"{name} interval"] = interval
        row["resamples (fewest usable)"] = min(usable) if usable else None
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)
