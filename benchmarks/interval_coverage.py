"""Coverage of the 95 % bootstrap intervals of the AUC on small simulated cohorts: percentile vs BCa.

Each cohort: n patients, each positive with probability ``prevalence`` (a cohort with one class only is drawn
again and counted), scores binormal (positives N(d, 1), negatives N(0, 1); true AUC Φ(d/√2)). Intervals from
``mambamil.evaluation.bootstrap`` exactly as the evaluation makes them: 1000 patient resamples, single-class resamples
left out (counted), the percentile interval and the BCa interval (scipy.stats.bootstrap, jackknife acceleration)
on the same resamples (BCa is undefined where leaving one patient out leaves one class, e.g. a single positive:
the percentile interval stands in, and is counted). Coverage = share of cohorts whose interval holds the true AUC
(binomial SE ≈ 1.3 % at 95 % and 300 cohorts); also the mean width, the mean number of dropped resamples per
cohort, how many BCa intervals were undefined and the coverage of BCa over the cohorts where it was defined.

usage: python benchmarks/interval_coverage.py [--cohorts 300] [--resamples 1000] [--d 1.0]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scan import machine  # type: ignore[import-not-found]
from scipy.stats import norm

from mambamil.evaluation import bootstrap as bs

SETTINGS = ((30, 0.10), (40, 0.15), (60, 0.40))


def cohort(rng: np.random.Generator, n: int, prevalence: float, d: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(score, positive, redraws): a cohort with both classes present."""
    redraws = 0
    while True:
        y = rng.random(n) < prevalence
        if 0 < y.sum() < n:
            return rng.normal(d * y, 1.0), y, redraws
        redraws += 1


def run(n: int, prevalence: float, cohorts: int, resamples: int, d: float, level: float) -> dict[str, float]:
    true_auc = norm.cdf(d / math.sqrt(2))
    hits = {"percentile": 0, "bca": 0}
    widths = {"percentile": [], "bca": []}
    dropped, redrawn, undefined, defined_hits = [], 0, 0, 0
    for r in range(cohorts):
        score, y, redraws = cohort(np.random.default_rng(10_000 + r), n, prevalence, d)
        redrawn += redraws
        groups = np.arange(n)
        W = bs.bootstrap_weights(groups, resamples, seed=r)
        reps = bs.auc(score, y, W)
        dropped.append(resamples - int(np.isfinite(reps).sum()))
        for method in hits:
            low, high, _, used = bs.interval(method, reps, lambda w, s=score, pos=y: bs.auc(s, pos, w), groups, level)
            undefined += method == "bca" and used != "bca"
            hits[method] += bool(low <= true_auc <= high)
            defined_hits += method == "bca" and used == "bca" and bool(low <= true_auc <= high)
            widths[method].append(high - low)
    return {
        "n": n,
        "prevalence": prevalence,
        "true_auc": true_auc,
        "cov_percentile": hits["percentile"] / cohorts,
        "cov_bca": hits["bca"] / cohorts,
        "width_percentile": float(np.mean(widths["percentile"])),
        "width_bca": float(np.mean(widths["bca"])),
        "dropped_mean": float(np.mean(dropped)),
        "dropped_max": int(np.max(dropped)),
        "bca_undefined": undefined,
        "cov_bca_defined": defined_hits / (cohorts - undefined) if cohorts > undefined else float("nan"),
        "redrawn": redrawn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=300)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--d", type=float, default=1.0, help="binormal separation (true AUC Φ(d/√2))")
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args()
    print(f"machine: {machine()}; numpy {np.__version__}; {args.cohorts} cohorts per row, {args.resamples} "
          f"resamples, d = {args.d:g}, nominal level {args.level:g}")  # fmt: skip
    header = (
        "| n | prevalence | true AUC | coverage percentile | coverage BCa | BCa − percentile | mean width pct | "
        "mean width BCa | coverage BCa where defined | "
        "dropped resamples / 1000 (mean, max) | BCa undefined | cohorts redrawn | seconds |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for n, prevalence in SETTINGS:
        start = time.perf_counter()
        row = run(n, prevalence, args.cohorts, args.resamples, args.d, args.level)
        seconds = time.perf_counter() - start
        print(
            f"| {n} | {prevalence:.0%} | {row['true_auc']:.3f} | {row['cov_percentile']:.3f} | {row['cov_bca']:.3f} "
            f"| {row['cov_bca'] - row['cov_percentile']:+.3f} | {row['width_percentile']:.3f} | "
            f"{row['width_bca']:.3f} | {row['cov_bca_defined']:.3f} | "
            f"{row['dropped_mean']:.1f}, {row['dropped_max']} | {row['bca_undefined']} | "
            f"{row['redrawn']} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
