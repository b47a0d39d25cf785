"""Robust accuracy of two models on the same images, with 95 % bootstrap intervals and a verdict
(REFERENCE.md §9: accuracy under attack per eps, per-image paired bootstrap, never an average over
saturated eps).

Input: the per-image worst case of untargeted sweeps (:data:`~capsrobust.evaluation.robustness.PER_IMAGE_COLUMNS`,
optionally with a ``seed`` column when several sweeps are pooled). An image is *robust* at eps when no
attack broke it there; an image the model gets wrong on the clean input is broken at every eps.
:func:`compare_robust_accuracy` measures, with percentile-bootstrap intervals that resample images
within each seed and average the seeds (:mod:`capsrobust.evaluation.intervals`):

- per eps, robust accuracy of each model on *all* attacked images, and on the *paired subset* both
  classify correctly, and the paired difference first − second on the same images;
- the robust accuracy averaged over [0, eps*] (the trapezoid area under the curve divided by eps*),
  eps* the first grid eps at which the second model's (the CNN's) pooled robust accuracy falls below
  :data:`EPS_STAR_ACCURACY` (below eps 0.5, the sanity checks' eps) -- the range where the curves
  still differ, instead of an average over saturated eps;
- the median minimal adversarial eps per image, *bracketed by the grid*: the smallest grid eps at
  which the worst case broke the image (0 if wrong on the clean input, inf if no eps below 0.5 did) -- an upper
  bound of the true minimal eps within one grid step, not a bisection; the median is the lower
  median (:func:`grid_median`), so it stays on the grid.

The verdict (:func:`~capsrobust.evaluation.intervals.decide`) is "<first> more robust", "<second>
more robust" or "no difference detectable; the smallest detectable difference is X points".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from capsrobust.evaluation.intervals import (DEFAULT_RESAMPLES, Difference, Interval, Verdict, bootstrap_difference,
                                             bootstrap_interval, decide)
from capsrobust.evaluation.robustness import CHANCE_EPS

__all__ = ["EPS_STAR_ACCURACY", "RobustComparison", "compare_robust_accuracy", "grid_median", "minimal_eps",
           "robust_matrix"]

#: eps* is the first grid eps where the reference model's robust accuracy falls below this.
EPS_STAR_ACCURACY = 0.10


@dataclass(frozen=True)
class RobustComparison:
    """What :func:`compare_robust_accuracy` found for ``first`` against ``second`` (fractions, not %).

    per_eps: one row per (subset, eps): subset (``all`` | ``both correct``), eps, eps_std, n (images),
    first/second estimate, low, high, difference (first − second) estimate, low, high, detectable,
    saturated (both at 0 % robust accuracy), verdict (the statement; ``saturated`` there).
    area_*: robust accuracy averaged over [0, eps*]; median_eps_*: the median grid-bracketed minimal
    adversarial eps; verdict / median_verdict: what the area / the median supports.
    """

    first: str
    second: str
    seeds: int
    eps_star: float
    eps_star_reached: bool  # False: the second model never fell below EPS_STAR_ACCURACY; eps* is the last eps
    per_eps: pd.DataFrame
    area_first: Interval
    area_second: Interval
    area: Difference
    verdict: Verdict
    median_eps_first: Interval
    median_eps_second: Interval
    median_eps: Difference
    median_verdict: Verdict


def robust_matrix(per_image: pd.DataFrame, model: str) -> pd.DataFrame:
    """Robust (1) or broken (0) per image (rows: (seed, image)) and eps (columns, ascending) for ``model``."""
    rows = per_image[per_image["model"] == model]
    if "seed" not in rows.columns:
        rows = rows.assign(seed=0)
    robust = rows.assign(robust=(~rows["broken"].astype(bool)).astype(float))
    return robust.pivot_table(index=["seed", "image"], columns="eps", values="robust", aggfunc="first").sort_index(axis=1)


def minimal_eps(robust: pd.DataFrame) -> np.ndarray:
    """Per row of :func:`robust_matrix`, the smallest grid eps at which the image is broken (inf: never)."""
    eps = np.asarray(robust.columns, dtype=float)
    broken = robust.to_numpy() < 0.5
    first = np.where(broken.any(axis=1), eps[broken.argmax(axis=1)], np.inf)
    return first


def _clean_correct(per_image: pd.DataFrame, model: str, index: pd.MultiIndex) -> np.ndarray:
    """(len(index),) bool: ``model`` classifies the image right on the clean input."""
    rows = per_image[per_image["model"] == model]
    if "seed" not in rows.columns:
        rows = rows.assign(seed=0)
    clean = rows.drop_duplicates(["seed", "image"]).set_index(["seed", "image"])["clean_correct"].astype(bool)
    return clean.reindex(index).to_numpy()


def grid_median(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The lower median (smallest value with at least half the values at or below it): stays on the eps grid
    and handles inf, where the midpoint of two grid values would be neither."""
    return np.quantile(values, 0.5, axis=axis, method="inverted_cdf")


def _area(robust: pd.DataFrame, eps_star: float) -> np.ndarray:
    """Per row, robust accuracy averaged over [0, eps*]: trapezoid area over the grid up to eps*, / eps*."""
    eps = np.asarray(robust.columns, dtype=float)
    keep = eps <= eps_star + 1e-12
    values = robust.to_numpy()[:, keep]
    widths = np.diff(eps[keep])
    area = ((values[:, 1:] + values[:, :-1]) / 2 * widths).sum(axis=1)
    return area / eps_star if eps_star > 0 else np.full(len(robust), np.nan)


def _eps_star(second: pd.DataFrame, strata: np.ndarray, max_eps: float) -> float:
    """The first eps below ``max_eps`` where ``second``'s robust accuracy (mean over strata) falls below
    EPS_STAR_ACCURACY; the largest eps below ``max_eps`` if it never does."""
    pooled = second.groupby(strata).mean().mean()
    pooled = pooled[pooled.index < max_eps]
    if pooled.empty:
        raise ValueError(f"no eps below {max_eps:g} to compare robust accuracy on")
    below = pooled[pooled < EPS_STAR_ACCURACY]
    return float(below.index[0]) if len(below) else float(pooled.index[-1])


def _per_eps_rows(a: pd.DataFrame, b: pd.DataFrame, strata: np.ndarray, subset: str, mask: np.ndarray,
                  eps_std: dict[float, float], names: tuple[str, str], options: dict) -> list[dict]:
    rows = []
    for eps in a.columns:
        if subset != "all" and eps == 0:
            continue  # both correct on clean images by construction
        x, y, s = a[eps].to_numpy()[mask], b[eps].to_numpy()[mask], strata[mask]
        if len(x) == 0:
            continue
        first, second = (bootstrap_interval(v, strata=s, **options) for v in (x, y))
        difference = bootstrap_difference(x, y, strata=s, **options)
        saturated = first.estimate == 0 and second.estimate == 0
        verdict = "saturated" if saturated else decide(difference, positive=f"{names[0]} more robust",
                                                       negative=f"{names[1]} more robust").statement
        rows.append({"subset": subset, "eps": float(eps), "eps_std": eps_std.get(float(eps), float("nan")),
                     "n": len(x), "first": first.estimate, "first_low": first.low, "first_high": first.high,
                     "second": second.estimate, "second_low": second.low, "second_high": second.high,
                     "difference": difference.estimate, "difference_low": difference.low,
                     "difference_high": difference.high, "detectable": difference.detectable,
                     "saturated": saturated, "verdict": verdict})
    return rows


def compare_robust_accuracy(per_image: pd.DataFrame, first: str, second: str, *, names: tuple[str, str] | None = None,
                            max_eps: float = CHANCE_EPS, resamples: int = DEFAULT_RESAMPLES,
                            seed: int = 0) -> RobustComparison:
    """Robust accuracy of ``first`` against ``second`` (model names in ``per_image``) on the same images.

    per_image: :data:`~capsrobust.evaluation.robustness.PER_IMAGE_COLUMNS` rows of both models, with a
    ``seed`` column to pool several sweeps (each seed's images resampled on their own, seeds averaged).
    names: how verdicts call the two (default: the model names). max_eps: eps* and the minimal eps are
    sought below it (default 0.5: from there on the ball holds a grey image; those eps are for the sanity
    checks). Deterministic given ``seed``.
    """
    names = names or (first, second)
    a, b = robust_matrix(per_image, first), robust_matrix(per_image, second)
    common = a.index.intersection(b.index)
    if len(common) == 0:
        raise ValueError(f"no image attacked on both {first} and {second}")
    a, b = a.loc[common], b.loc[common]
    strata = np.asarray(common.get_level_values("seed"))
    options = dict(resamples=resamples, seed=seed)
    eps_std = per_image.groupby("eps")["eps_std"].mean().to_dict() if "eps_std" in per_image else {}
    correct = (_clean_correct(per_image, first, common) & _clean_correct(per_image, second, common))
    rows = _per_eps_rows(a, b, strata, "all", np.ones(len(a), dtype=bool), eps_std, names, options)
    rows += _per_eps_rows(a, b, strata, "both correct", correct, eps_std, names, options)
    eps_star = _eps_star(b, strata, max_eps)
    area_a, area_b = _area(a, eps_star), _area(b, eps_star)
    area = bootstrap_difference(area_a, area_b, strata=strata, **options)
    below = [e for e in a.columns if e < max_eps]
    min_a, min_b = minimal_eps(a[below]), minimal_eps(b[below])
    median = bootstrap_difference(min_a, min_b, statistic=grid_median, strata=strata, **options)
    more = dict(positive=f"{names[0]} more robust", negative=f"{names[1]} more robust")
    return RobustComparison(
        first=first, second=second, seeds=len(set(strata.tolist())), eps_star=eps_star,
        eps_star_reached=bool(b[eps_star].groupby(strata).mean().mean() < EPS_STAR_ACCURACY), per_eps=pd.DataFrame(rows),
        area_first=bootstrap_interval(area_a, strata=strata, **options),
        area_second=bootstrap_interval(area_b, strata=strata, **options), area=area, verdict=decide(area, **more),
        median_eps_first=bootstrap_interval(min_a, statistic=grid_median, strata=strata, **options),
        median_eps_second=bootstrap_interval(min_b, statistic=grid_median, strata=strata, **options),
        median_eps=median, median_verdict=decide(median, **more, scale=1.0, unit=" in eps", digits=4))
