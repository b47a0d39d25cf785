"""Robust accuracy with intervals from per-image outcomes: known answers on hand-built tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from capsrobust.evaluation.robust_accuracy import EPS_STAR_ACCURACY, compare_robust_accuracy, minimal_eps, robust_matrix

EPS = (0.0, 0.01, 0.02, 0.05)


def per_image(breaks_at: dict[str, np.ndarray], seeds: int = 2) -> pd.DataFrame:
    """Rows of PER_IMAGE_COLUMNS (+ seed): model m breaks image i from eps breaks_at[m][i] on (inf: never)."""
    rows = []
    for seed in range(seeds):
        for model, first_broken in breaks_at.items():
            for image, at in enumerate(first_broken):
                rows += [{"seed": seed, "model": model, "eps": e, "eps_std": 8 * e, "image": image, "label": image % 5,
                          "clean_correct": at > 0, "broken": e >= at} for e in EPS]
    return pd.DataFrame(rows)


def test_a_model_broken_later_on_every_image_is_more_robust_with_an_interval_to_match():
    n = 100
    table = per_image({"caps": np.full(n, 0.05), "cnn": np.r_[np.full(n // 2, 0.01), np.full(n // 2, 0.02)]})
    result = compare_robust_accuracy(table, "caps", "cnn", names=("capsules", "the CNN"), resamples=300)
    at = result.per_eps.set_index(["subset", "eps"])
    row = at.loc[("all", 0.01)]
    assert row["first"] == 1.0 and row["second"] == 0.5 and row["difference"] == pytest.approx(0.5)
    assert row["difference_low"] > 0.3 and row["verdict"] == "capsules more robust" and row["eps_std"] == 0.08
    assert at.loc[("all", 0.05), "verdict"] == "saturated"  # both at 0 %: no comparison there
    assert result.eps_star == 0.02 and result.eps_star_reached  # the CNN first falls below 10 % there
    # Trapezoids over the grid 0, 0.01, 0.02, / 0.02: caps robust throughout -> 1.0; the CNN's images broken
    # at 0.01 (1, 0, 0) -> 0.25 and at 0.02 (1, 1, 0) -> 0.75, mean 0.5.
    assert result.area_first.estimate == pytest.approx(1.0) and result.area_second.estimate == pytest.approx(0.5)
    assert result.verdict.direction == 1 and result.verdict.statement == "capsules more robust"
    assert result.median_eps_first.estimate == 0.05 and result.median_eps_second.estimate == 0.01
    assert result.seeds == 2


def test_the_same_outcomes_give_no_difference_and_a_detectable_size():
    rng = np.random.default_rng(0)
    breaks = rng.choice(EPS[1:] + (np.inf,), size=80)
    result = compare_robust_accuracy(per_image({"caps": breaks, "cnn": breaks}), "caps", "cnn", resamples=300)
    assert result.verdict.direction == 0 and result.verdict.statement.startswith("no difference detectable")
    assert result.area.estimate == 0 and set(result.per_eps.verdict) <= {"saturated"} | {
        v for v in result.per_eps.verdict if v.startswith("no difference detectable")}


def test_paired_subset_keeps_only_images_both_classify_correctly():
    caps = np.r_[np.zeros(10), np.full(90, 0.02)]  # 10 images wrong on the clean input
    cnn = np.r_[np.full(10, 0.02), np.zeros(10), np.full(80, 0.02)]  # 10 others wrong
    result = compare_robust_accuracy(per_image({"caps": caps, "cnn": cnn}, seeds=1), "caps", "cnn", resamples=200)
    paired = result.per_eps[result.per_eps.subset == "both correct"].set_index("eps")
    assert list(paired.index) == [0.01, 0.02, 0.05] and (paired.n == 80).all()
    assert paired.loc[0.01, "first"] == 1.0 and paired.loc[0.01, "second"] == 1.0
    every = result.per_eps[result.per_eps.subset == "all"].set_index("eps")
    assert every.loc[0.0, "first"] == pytest.approx(0.9) and every.loc[0.0, "n"] == 100


def test_minimal_eps_is_the_first_grid_eps_that_breaks_and_inf_when_none_does():
    table = per_image({"m": np.array([0.0, 0.01, 0.05, np.inf])}, seeds=1)
    assert list(minimal_eps(robust_matrix(table, "m"))) == [0.0, 0.01, 0.05, math.inf]


def test_eps_star_is_the_last_eps_when_the_reference_never_falls_below_the_threshold():
    table = per_image({"caps": np.full(20, np.inf), "cnn": np.full(20, np.inf)}, seeds=1)
    result = compare_robust_accuracy(table, "caps", "cnn", resamples=100)
    # ... and never an eps from 0.5 on (the sanity checks' eps), however robust the reference is there.
    assert compare_robust_accuracy(table, "caps", "cnn", max_eps=0.03, resamples=10).eps_star == 0.02
    assert result.eps_star == EPS[-1] and not result.eps_star_reached and EPS_STAR_ACCURACY == 0.10
    assert math.isinf(result.median_eps_first.estimate) and result.median_verdict.direction == 0
