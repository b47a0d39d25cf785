"""Bootstrap intervals and the verdicts they support: known answers on generated samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsrobust.evaluation.intervals import (DETECTABLE_SE, Difference, bootstrap_difference, bootstrap_interval,
                                             decide)


def test_interval_of_a_mean_covers_it_and_shrinks_with_more_units():
    rng = np.random.default_rng(0)
    small, large = rng.binomial(1, 0.3, 100), rng.binomial(1, 0.3, 1600)
    a, b = bootstrap_interval(small), bootstrap_interval(large)
    assert a.estimate == pytest.approx(small.mean()) and a.low < a.estimate < a.high
    assert b.low < 0.3 < b.high
    # Binomial standard error sqrt(p(1-p)/n): the bootstrap's agrees, and a 16x sample halves it twice.
    assert b.standard_error == pytest.approx(math.sqrt(0.3 * 0.7 / 1600), rel=0.15)
    assert b.half_width < a.half_width / 3


def test_same_seed_same_interval_other_seed_close():
    values = np.random.default_rng(1).normal(size=200)
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    other = bootstrap_interval(values, seed=4)
    assert abs(other.low - bootstrap_interval(values, seed=3).low) < 0.05


def test_a_constant_shift_gives_an_interval_around_the_shift_and_its_direction():
    a = np.random.default_rng(2).normal(size=300)
    difference = bootstrap_difference(a + 0.1, a)
    assert difference.estimate == pytest.approx(0.1) and difference.low == pytest.approx(0.1)
    assert difference.high == pytest.approx(0.1)  # paired: the units' own spread cancels
    verdict = decide(difference, positive="a higher", negative="b higher")
    assert verdict.direction == 1 and verdict.statement == "a higher"
    assert decide(bootstrap_difference(a, a + 0.1), positive="a", negative="b higher").statement == "b higher"


def test_identical_samples_give_no_difference_with_a_detectable_size():
    a = np.random.default_rng(3).binomial(1, 0.5, 200).astype(float)
    noise = np.random.default_rng(4).binomial(1, 0.5, 200).astype(float)
    same = decide(bootstrap_difference(a, a), positive="a", negative="b")
    assert same.direction == 0 and same.statement.startswith("no difference detectable")
    # Two independent coin flips per unit: se of the mean difference ~ sqrt(0.5/200) = 5 points.
    verdict = decide(bootstrap_difference(a, noise), positive="a", negative="b")
    assert verdict.direction == 0 or abs(verdict.difference.estimate) > 0.05
    detectable = verdict.difference.detectable
    assert detectable == pytest.approx(DETECTABLE_SE * math.sqrt(0.5 / 200), rel=0.2)
    if verdict.direction == 0:
        assert f"the smallest detectable difference is {100 * detectable:.1f} points" in verdict.statement


def test_pooling_over_strata_averages_the_strata_and_resamples_within_each():
    # Stratum 0 has mean 0, stratum 1 mean 1, sizes 10 and 1000: pooled = equal-weight mean 0.5, not 0.99.
    values = np.r_[np.zeros(10), np.ones(1000)]
    strata = np.r_[np.zeros(10), np.ones(1000)]
    pooled = bootstrap_interval(values, strata=strata)
    assert pooled.estimate == pytest.approx(0.5) and pooled.low == pooled.high == pytest.approx(0.5)
    assert pooled.units == 1010


def test_clusters_are_resampled_whole_so_shared_effects_widen_the_interval():
    # 10 clusters of 50 rows, each cluster a constant: 10 independent units, not 500.
    rng = np.random.default_rng(5)
    cluster_means = rng.normal(size=10)
    values = np.repeat(cluster_means, 50)
    clusters = np.repeat(np.arange(10), 50)
    as_rows = bootstrap_interval(values)
    as_clusters = bootstrap_interval(values, clusters=clusters)
    assert as_clusters.units == 10 and as_rows.units == 500
    assert as_clusters.standard_error == pytest.approx(cluster_means.std(ddof=0) / math.sqrt(10), rel=0.2)
    assert as_clusters.half_width > 5 * as_rows.half_width


def test_median_statistic_and_a_median_beyond_the_grid():
    values = np.r_[np.full(60, 0.02), np.full(40, 0.05)]
    median = bootstrap_interval(values, statistic=np.median)
    assert median.estimate == 0.02 and median.low == 0.02 and median.high <= 0.05
    unbroken = bootstrap_interval(np.r_[np.full(70, np.inf), np.full(30, 0.1)], statistic=np.median)
    assert math.isinf(unbroken.estimate) and math.isnan(unbroken.standard_error)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="one shape"):
        bootstrap_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one entry per row"):
        bootstrap_interval([1.0, 2.0], clusters=[0])
    with pytest.raises(ValueError, match="no units"):
        bootstrap_interval([])


def test_verdict_without_a_standard_error_says_so():
    undefined = Difference(float("nan"), float("nan"), float("nan"), float("nan"), 0.95, 0)
    assert decide(undefined, positive="a", negative="b").statement.endswith("not estimable")
