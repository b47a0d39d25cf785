"""Viewpoint generalisation, the measurement part (paper §5.1, Table 2; REFERENCE.md §5, §9).

Distances of each view to the nearest familiar view of a split, error per distance bin, the
matching rule, predictions and errors of a model on a view test set, the bootstrap over test toys
and summaries over seeds. Training, scoring every kept checkpoint, budgets and the extrapolation
render live in :mod:`capsrobust.experiments.viewpoint`; the report files in
:mod:`capsrobust.reporting.viewpoint`.

Matching (:func:`select_two_way`) is not a race: per seed, the *weaker* model on familiar views --
the one whose best familiar error, smoothed over neighbouring evaluations, is higher -- sets the
target (that smoothed best; its checkpoint: where the smoothed curve is lowest), and the stronger
model is taken at its kept checkpoint whose familiar error is nearest the target. A pair whose
familiar errors differ by more than :data:`MATCH_TOLERANCE` is reported as such. Two protocols,
both reported:

- ``validation`` (clean): familiar error on the held-out validation toys (familiar views); familiar
  and novel errors reported on the whole test set.
- ``test-familiar (paper)``: familiar error on the familiar *test* images, as the paper did, but
  only on half of the lightings (:func:`lighting_halves`: 0, 2, 4); familiar and novel errors are
  reported on the other half (1, 3, 5), so no reported image chose the checkpoint.

Uncertainty: images of one toy are not independent, so intervals come from a bootstrap over the
test toys (:func:`toy_bootstrap_weights`: each class's toys resampled with replacement, within
class), the same draws for every model, seed and checkpoint (paired).

Example::

    from capsrobust.evaluation.viewpoint import angular_distance_to_familiar, error_by_distance
    distances = angular_distance_to_familiar(meta, "azimuth")
    table = error_by_distance(predictions, labels, distances, BIN_WIDTH["azimuth"])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from capsrobust.data.splits import ViewpointSplit, get_split
from capsrobust.errors import CheckpointError, ConfigError, DataError
from capsrobust.evaluation.accuracy import predict_scores
from capsrobust.evaluation.intervals import DEFAULT_RESAMPLES, DETECTABLE_SE, Difference, decide
from capsrobust.models import is_capsule_model
from capsrobust.reference import PAPER_TABLE2

__all__ = [
    "BIN_WIDTH", "BOOTSTRAP_DRAWS", "CI_LEVEL", "FAMILIAR_LEVELS", "MATCH_TOLERANCE", "PAPER",
    "PAPER_TABLE2", "PROTOCOLS", "SMOOTHING", "TrajectoryCounts", "VALIDATION", "VIEWS", "ViewTestSet",
    "angular_distance_to_familiar", "common_levels", "curve_difference", "difference_interval", "distance_summary",
    "error_by_distance", "error_fraction", "lighting_halves", "load_view_test_set", "matched_difference", "mean_std",
    "novel_at_levels", "pair_table", "paper_table2", "per_toy_counts", "predict_classes", "select_two_way",
    "series_name", "smoothed", "table2_summary", "toy_bootstrap_weights", "toy_index", "viewpoint_split",
    "weighted_error",
]

VALIDATION = "validation"
PAPER = "test-familiar (paper)"
#: The two matching protocols, in report order.
PROTOCOLS = (VALIDATION, PAPER)

#: Width (degrees) of the distance bins: one smallNORB azimuth step (20°) or elevation step (5°).
BIN_WIDTH = {"azimuth": 20, "elevation": 5}
#: The test sets a viewpoint table reports, in order.
VIEWS = ("familiar", "novel", "extrapolation")
#: Familiar errors of a matched pair further apart than this (fraction: 1 point) are reported as not matched.
MATCH_TOLERANCE = 0.01
#: The best familiar error is read off a centred moving average over this many neighbouring evaluations.
SMOOTHING = 3
#: Bootstrap resamples of the test toys, and the interval they give.
BOOTSTRAP_DRAWS = DEFAULT_RESAMPLES
CI_LEVEL = 0.95
#: How many familiar-error levels the two models' curves are compared at.
FAMILIAR_LEVELS = 5


def viewpoint_split(name: str) -> ViewpointSplit:
    """The ``azimuth`` or ``elevation`` protocol; :class:`ConfigError` otherwise (``full`` has no novel views)."""
    if name not in BIN_WIDTH:
        raise ConfigError(f"unknown viewpoint split {name!r}; choose azimuth or elevation")
    return get_split(name)


# ----------------------------------------------------------------------------------------------
# Distances and binning


def angular_distance_to_familiar(meta: pd.DataFrame, split: str) -> pd.Series:
    """Degrees from each row's view to the nearest familiar view, along the split's axis.

    ``azimuth``: circular distance to the nearest familiar azimuth (60° -> 20°, 180° -> 120°, 340° -> 0°).
    ``elevation``: ``|e - nearest familiar elevation|`` (50° -> 10°, 0° -> 30°).

    Args:
        meta: table with ``azimuth`` and ``elevation`` columns in degrees (one row per image).
    Returns: float Series aligned with ``meta`` (name ``distance``).
    """
    protocol = viewpoint_split(split)
    if split == "azimuth":
        values = meta["azimuth"].to_numpy(dtype=float)[:, None]
        familiar = np.array(sorted(protocol.familiar_azimuths), dtype=float)[None, :]
        gap = np.mod(np.abs(values - familiar), 360.0)
        distance = np.minimum(gap, 360.0 - gap).min(axis=1)
    else:
        values = meta["elevation"].to_numpy(dtype=float)[:, None]
        familiar = np.array(sorted(protocol.familiar_elevations), dtype=float)[None, :]
        distance = np.abs(values - familiar).min(axis=1)
    return pd.Series(distance, index=meta.index, name="distance")


def error_by_distance(
    predictions: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    distances: np.ndarray | pd.Series,
    bin_width: float,
) -> pd.DataFrame:
    """Error per distance bin ``[k·w, (k+1)·w)``: columns ``distance_from``, ``distance_to``,
    ``mean_distance``, ``n``, ``error`` (fraction); only non-empty bins, nearest first.

    Args:
        predictions, labels: ``(N,)`` class indices.
        distances: ``(N,)`` degrees (from :func:`angular_distance_to_familiar`).
    """
    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    distances = np.asarray(distances, dtype=float).ravel()
    if not len(predictions) == len(labels) == len(distances):
        raise ValueError(f"lengths differ: {len(predictions)} predictions, {len(labels)} labels, "
                         f"{len(distances)} distances")
    if bin_width <= 0:
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    table = pd.DataFrame({"bin": np.floor(distances / bin_width + 1e-9).astype(int), "distance": distances,
                          "wrong": predictions != labels})
    grouped = table.groupby("bin", sort=True).agg(mean_distance=("distance", "mean"), n=("wrong", "size"),
                                                  error=("wrong", "mean")).reset_index()
    grouped.insert(0, "distance_from", grouped.pop("bin") * bin_width)
    grouped.insert(1, "distance_to", grouped["distance_from"] + bin_width)
    grouped["error"] = grouped["error"].astype(float)
    return grouped


# ----------------------------------------------------------------------------------------------
# The matching rule


def smoothed(values: np.ndarray | Sequence[float], window: int = SMOOTHING) -> np.ndarray:
    """Centred moving average of ``values`` ``(K,)`` (in training order) over ``window`` neighbouring
    evaluations; fewer at the ends, NaNs skipped. ``window`` 1: the values themselves."""
    values = np.asarray(values, dtype=float)
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    half = window // 2
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        part = values[max(0, i - half): i + half + 1]
        if np.isfinite(part).any():
            out[i] = np.nanmean(part)
    return out


def select_two_way(candidates: Mapping[str, pd.DataFrame], *, window: int = SMOOTHING,
                   tolerance: float = MATCH_TOLERANCE) -> dict[str, Any]:
    """Match two models at equal familiar error, whichever is weaker.

    Each model's best familiar error is the minimum of its curve smoothed over ``window``
    neighbouring evaluations (:func:`smoothed`), so one noisy dip does not set it. The model with
    the higher smoothed best is the weaker: the target is its smoothed best and its checkpoint the
    one where its smoothed curve is lowest (earliest of ties). The other model is taken at its
    checkpoint whose familiar error is nearest the target (earliest of ties).

    Args:
        candidates: model name -> one row per kept checkpoint, columns ``step`` and
            ``familiar_error`` (fraction; any order, sorted by step here; NaN rows ignored). Two models.
    Returns: ``{"weaker", "target", "gap", "matched", "picks"}``: ``gap`` = the stronger model's
        familiar error minus the weaker's (at their picks), ``matched`` = ``|gap| <= tolerance``;
        ``picks``: model -> ``{"step", "familiar_error", "smoothed_best", "role"}`` (role ``target``
        or ``matched``).
    """
    if len(candidates) != 2:
        raise ValueError(f"two models are matched, got {len(candidates)}: {', '.join(candidates)}")
    tables, best = {}, {}
    for model, rows in candidates.items():
        table = rows.dropna(subset=["familiar_error"]).sort_values("step", kind="stable").reset_index(drop=True)
        if table.empty:
            raise CheckpointError(f"{model}: no checkpoint with a familiar error to match; train longer or "
                                  "evaluate more often")
        table["smoothed"] = smoothed(table["familiar_error"].to_numpy(), window)
        tables[model], best[model] = table, float(table["smoothed"].min())
    weaker = max(best, key=lambda m: best[m])  # the first of ties
    target = best[weaker]
    picks = {}
    for model, table in tables.items():
        if model == weaker:
            row, role = table.loc[table["smoothed"].idxmin()], "target"
        else:
            row, role = table.loc[(table["familiar_error"] - target).abs().idxmin()], "matched"
        picks[model] = {"step": int(row["step"]), "familiar_error": float(row["familiar_error"]),
                        "smoothed_best": best[model], "role": role}
    stronger = next(m for m in picks if m != weaker)
    gap = picks[stronger]["familiar_error"] - picks[weaker]["familiar_error"]
    return {"weaker": weaker, "target": target, "gap": gap, "matched": bool(abs(gap) <= tolerance + 1e-12),
            "picks": picks}


# ----------------------------------------------------------------------------------------------
# Bootstrap over test toys (REFERENCE.md §9: images of one toy are not independent)


def toy_index(labels: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Toy of each image and class of each toy: ``(codes (N,) in 0..T-1, classes (T,))`` from
    ``labels`` ``(N,)`` and ``instances`` ``(N,)`` (a toy is a (class, instance) pair)."""
    pairs = np.stack([np.asarray(labels, dtype=np.int64), np.asarray(instances, dtype=np.int64)], axis=1)
    unique, codes = np.unique(pairs, axis=0, return_inverse=True)
    return codes.reshape(-1), unique[:, 0]


def per_toy_counts(wrong: np.ndarray, codes: np.ndarray, n_toys: int,
                   mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Wrong predictions and images per toy within ``mask``.

    Args:
        wrong: ``(..., N)`` booleans (e.g. ``(K, N)``: K checkpoints); codes: ``(N,)`` toys (:func:`toy_index`).
    Returns: ``(wrong (..., T), n (T,))`` as floats.
    """
    wrong = np.asarray(wrong, dtype=float)
    keep = np.ones(len(codes), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    onehot = np.zeros((len(codes), n_toys))
    onehot[np.arange(len(codes)), codes] = keep
    return wrong @ onehot, keep.astype(float) @ onehot


def toy_bootstrap_weights(classes: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> np.ndarray:
    """How often each toy appears in each of ``draws`` bootstrap resamples: ``(draws, T)`` integers.

    Each class's toys are resampled with replacement within the class (so every resample keeps
    5 toys per class and the class balance of the test set). ``classes``: ``(T,)`` class of each toy.
    """
    classes = np.asarray(classes)
    rng = np.random.default_rng(seed)
    weights = np.zeros((draws, len(classes)), dtype=np.int64)
    for label in np.unique(classes):
        members = np.flatnonzero(classes == label)
        picks = rng.integers(0, len(members), size=(draws, len(members)))
        np.add.at(weights, (np.arange(draws)[:, None], members[picks]), 1)
    return weights


def weighted_error(wrong: np.ndarray, n: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Error rate of each resample: ``sum_t w_t wrong_t / sum_t w_t n_t``.

    Args:
        wrong: ``(..., T)`` wrong counts per toy; n: ``(..., T)`` or ``(T,)`` images per toy;
        weights: ``(B, T)`` (:func:`toy_bootstrap_weights`; ``np.ones((1, T))`` gives the plain error).
    Returns: ``(B, ...)``; NaN where a resample holds no image.
    """
    wrong = np.asarray(wrong, dtype=float)
    n = np.broadcast_to(np.asarray(n, dtype=float), wrong.shape)
    weights = np.asarray(weights, dtype=float)
    numerator = np.moveaxis(np.tensordot(wrong, weights, axes=([-1], [1])), -1, 0)
    denominator = np.moveaxis(np.tensordot(n, weights, axes=([-1], [1])), -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def difference_interval(point: float, replicates: np.ndarray, level: float = CI_LEVEL) -> dict[str, Any]:
    """The verdict on a difference (first model minus second; lower is better): percentile
    interval of its bootstrap ``replicates`` ``(B,)``, standard error, the smallest difference the
    sample could detect (:data:`~capsrobust.evaluation.intervals.DETECTABLE_SE` standard errors) and
    who is better (:func:`~capsrobust.evaluation.intervals.decide`): ``first`` when the interval
    lies below 0, ``second`` above it, ``neither`` when it holds 0.

    Returns: ``{"difference", "ci_low", "ci_high", "se", "detectable", "better"}``.
    """
    replicates = np.asarray(replicates, dtype=float)
    replicates = replicates[np.isfinite(replicates)]
    if not len(replicates) or not np.isfinite(point):
        nan = float("nan")
        return {"difference": float(point), "ci_low": nan, "ci_high": nan, "se": nan, "detectable": nan,
                "better": "neither"}
    tail = 100 * (1 - level) / 2
    low, high = (float(v) for v in np.percentile(replicates, [tail, 100 - tail]))
    se = float(np.std(replicates, ddof=1)) if len(replicates) > 1 else 0.0
    difference = Difference(estimate=float(point), low=low, high=high, standard_error=se, level=level,
                            units=len(replicates), detectable=DETECTABLE_SE * se)
    verdict = decide(difference, positive="second", negative="first")
    return {"difference": float(point), "ci_low": low, "ci_high": high, "se": se, "detectable": difference.detectable,
            "better": verdict.statement if verdict.direction else "neither"}


# ----------------------------------------------------------------------------------------------
# Novel against familiar error along the trajectory


def common_levels(curves: Sequence[np.ndarray], n: int = FAMILIAR_LEVELS) -> np.ndarray:
    """``n`` familiar-error levels evenly spaced over the range every curve covers: from the highest
    of the curves' minima to the lowest of their maxima (``(0,)`` when they do not overlap).

    ``curves``: familiar errors ``(K_i,)`` of each model and seed, one array per trajectory.
    """
    finite = [np.asarray(c, dtype=float)[np.isfinite(c)] for c in curves]
    if not finite or any(len(c) == 0 for c in finite):
        return np.empty(0)
    low, high = max(float(c.min()) for c in finite), min(float(c.max()) for c in finite)
    if low > high:
        return np.empty(0)
    return np.linspace(low, high, n) if high > low else np.array([low])


def novel_at_levels(familiar: np.ndarray, novel: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Novel error interpolated at familiar-error ``levels`` ``(L,)`` along a trajectory: the
    checkpoints sorted by familiar error, linear in between, the nearest end outside their range.

    Args:
        familiar, novel: ``(..., K)`` errors of K checkpoints (e.g. ``(B, K)``: bootstrap resamples).
    Returns: ``(..., L)``.
    """
    familiar, novel = np.asarray(familiar, dtype=float), np.asarray(novel, dtype=float)
    flat_f, flat_n = familiar.reshape(-1, familiar.shape[-1]), novel.reshape(-1, novel.shape[-1])
    out = np.empty((len(flat_f), len(levels)))
    for i, (f, v) in enumerate(zip(flat_f, flat_n)):
        keep = np.isfinite(f) & np.isfinite(v)
        if not keep.any():
            out[i] = np.nan
            continue
        order = np.argsort(f[keep], kind="stable")
        out[i] = np.interp(levels, f[keep][order], v[keep][order])
    return out.reshape(*familiar.shape[:-1], len(levels))


#: Per-toy counts of one model's trajectory in one seed: familiar wrong ``(K, T)``, familiar images
#: ``(T,)``, novel wrong ``(K, T)``, novel images ``(T,)`` (:func:`per_toy_counts`).
TrajectoryCounts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def matched_difference(first: Sequence[tuple[np.ndarray, np.ndarray]], second: Sequence[tuple[np.ndarray, np.ndarray]],
                       weights: np.ndarray) -> dict[str, Any]:
    """Novel error of ``first`` minus ``second`` at their matched checkpoints, mean over seeds, with
    its verdict over the toy resamples ``weights`` ``(B, T)`` (:func:`difference_interval`).

    Args:
        first, second: per seed, ``(wrong (T,), n (T,))`` novel counts per toy of the matched checkpoint.
    Returns: :func:`difference_interval`'s keys plus ``first_error`` and ``second_error`` (means over seeds).
    """
    def errors(pairs: Sequence[tuple[np.ndarray, np.ndarray]], w: np.ndarray) -> np.ndarray:
        return np.mean([weighted_error(wrong, n, w) for wrong, n in pairs], axis=0)  # (B,)

    ones = np.ones((1, weights.shape[1]))
    first_error, second_error = float(errors(first, ones)[0]), float(errors(second, ones)[0])
    replicates = errors(first, weights) - errors(second, weights)
    return {**difference_interval(first_error - second_error, replicates), "first_error": first_error,
            "second_error": second_error}


def curve_difference(first: Sequence[TrajectoryCounts], second: Sequence[TrajectoryCounts], levels: np.ndarray,
                     weights: np.ndarray) -> list[dict[str, Any]]:
    """Novel error of ``first`` minus ``second`` at each familiar-error level along their trajectories
    (:func:`novel_at_levels`), mean over seeds, with its verdict over the toy resamples ``weights``
    ``(B, T)``: in each resample every checkpoint's familiar and novel errors are recomputed from
    the resampled toys and the curves interpolated again.

    Args:
        first, second: per seed, the model's :data:`TrajectoryCounts`; levels: ``(L,)`` familiar errors.
    Returns: one dict per level: ``familiar_level``, ``first_error``, ``second_error`` and
        :func:`difference_interval`'s keys.
    """
    def novel(trajectories: Sequence[TrajectoryCounts], w: np.ndarray) -> np.ndarray:
        curves = [novel_at_levels(weighted_error(fw, fn, w), weighted_error(nw, nn, w), levels)
                  for fw, fn, nw, nn in trajectories]
        return np.mean(curves, axis=0)  # (B, L)

    ones = np.ones((1, weights.shape[1]))
    first_point, second_point = novel(first, ones)[0], novel(second, ones)[0]
    replicates = novel(first, weights) - novel(second, weights)
    return [{"familiar_level": float(level), "first_error": float(a), "second_error": float(b),
             **difference_interval(float(a - b), replicates[:, i])}
            for i, (level, a, b) in enumerate(zip(levels, first_point, second_point))]


# ----------------------------------------------------------------------------------------------
# Test sets, predictions, errors


def lighting_halves(lightings: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The lightings present split in two, alternately in sorted order: ``(match, report)``;
    smallNORB's 0-5 give (0, 2, 4) and (1, 3, 5). Needs two lightings or more."""
    present = np.unique(np.asarray(lightings))
    if len(present) < 2:
        raise DataError(f"the test-familiar protocol matches on half of the lightings and reports on the other half, "
                        f"but the test set has {len(present)} lighting(s); use data with at least two lightings")
    return present[0::2], present[1::2]


@dataclass
class ViewTestSet:
    """Images ``(N, C, 48, 48)``, labels ``(N,)``, distances ``(N,)`` and the familiar mask of one test
    set; ``instances`` and ``lightings`` ``(N,)`` where known (the toy bootstrap and the lighting halves
    need them)."""

    images: torch.Tensor
    labels: np.ndarray
    distances: np.ndarray
    familiar: np.ndarray
    instances: np.ndarray | None = None
    lightings: np.ndarray | None = None

    def subsample(self, n: int, seed: int = 0) -> "ViewTestSet":
        """A fixed random subset of ``n`` examples (seeded; ``n`` <= 0 or >= N: this set), in the original order."""
        if n <= 0 or n >= len(self.labels):
            return self
        keep = np.sort(torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))[:n].numpy())
        return ViewTestSet(self.images[torch.as_tensor(keep)], self.labels[keep], self.distances[keep],
                           self.familiar[keep], *(None if a is None else a[keep] for a in (self.instances,
                                                                                          self.lightings)))

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``(N,)`` of the images in the matching and the reporting half of the lightings
        (:func:`lighting_halves`), for the ``test-familiar`` protocol."""
        if self.lightings is None:
            raise DataError("this test set records no lightings; the test-familiar protocol needs them")
        match, report = lighting_halves(self.lightings)
        return np.isin(self.lightings, match), np.isin(self.lightings, report)


def load_view_test_set(directory: Path, split: str, mode: str) -> ViewTestSet:
    """The test toys (instances 0, 1, 2, 3, 5) of the testing file in ``directory`` (e.g. an extrapolation
    render), with their distances to the familiar views of ``split``; none counts as familiar."""
    from capsrobust.data.smallnorb import SPLIT_INSTANCES, load_split
    from capsrobust.data.transforms import downsample

    test = load_split(directory, "testing", mode)
    keep = test.meta["instance"].isin(SPLIT_INSTANCES["testing"]).to_numpy()
    meta = test.meta[keep].reset_index(drop=True)
    images = downsample(np.asarray(test.images)[keep])
    return ViewTestSet(images, meta["label"].to_numpy(), angular_distance_to_familiar(meta, split).to_numpy(),
                       np.zeros(len(meta), dtype=bool), meta["instance"].to_numpy(), meta["lighting"].to_numpy())


def predict_classes(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Centre-crop class predictions ``(N,)`` of ``model`` on images ``(N, C, 48, 48)`` in [0, 1]."""
    if len(images) == 0:
        return np.empty(0, dtype=np.int64)
    return predict_scores(model, images, batch_size=batch_size).argmax(dim=1).numpy()


def error_fraction(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of ``predictions`` ``(N,)`` that differ from ``labels`` ``(N,)`` (within ``mask``); NaN if none."""
    if mask is not None:
        predictions, labels = predictions[mask], labels[mask]
    return float(np.mean(predictions != labels)) if len(labels) else float("nan")


# ----------------------------------------------------------------------------------------------
# Summaries over seeds


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value) of ``values``, NaNs dropped."""
    values = values.dropna()
    if values.empty:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def table2_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Table 2 over seeds: one row per (protocol, test views) with the mean and standard deviation
    of each model's test error, the relative reduction ``1 − capsules / cnn`` (of the means) and
    in how many seeds the pair's familiar errors are within :data:`MATCH_TOLERANCE`.

    Columns: protocol, views, n_seeds, cnn_error_mean, cnn_error_std, capsules_error_mean,
    capsules_error_std, relative_reduction, pairs_matched (e.g. ``3/3``), capsule_model.
    """
    rows = []
    capsule_models = [m for m in dict.fromkeys(per_seed["model"]) if is_capsule_model(m)]
    for name in [p for p in PROTOCOLS if p in set(per_seed["protocol"])]:
        part = per_seed[per_seed["protocol"] == name]
        is_caps = part["model"].map(is_capsule_model)
        cnn, caps = part[~is_caps], part[is_caps]
        for views in VIEWS:
            column = f"{views}_error"
            if column not in part or part[column].isna().all():
                continue
            cnn_mean, cnn_std = mean_std(cnn[column])
            caps_mean, caps_std = mean_std(caps[column])
            rows.append({
                "protocol": name, "views": views, "n_seeds": int(part["seed"].nunique()),
                "cnn_error_mean": cnn_mean, "cnn_error_std": cnn_std,
                "capsules_error_mean": caps_mean, "capsules_error_std": caps_std,
                "relative_reduction": 1 - caps_mean / cnn_mean if cnn_mean > 0 else float("nan"),
                "pairs_matched": f"{int(caps['matched'].astype(bool).sum())}/{len(caps)}",
                "capsule_model": ", ".join(capsule_models),
            })
    return pd.DataFrame(rows)


def pair_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per (protocol, seed): the matched pair side by side.

    Columns: protocol, seed, weaker (the model whose smoothed best familiar error is the target),
    target, capsules_step, cnn_step, capsules_matching_error, cnn_matching_error (familiar error on
    the matching set: validation toys, or the matching half of the lightings), gap (capsules − cnn
    of those), matched (``|gap|`` within :data:`MATCH_TOLERANCE`), then familiar and novel test
    errors of both on the reporting set and novel_difference (capsules − cnn).
    """
    rows = []
    for (name, seed), part in per_seed.groupby(["protocol", "seed"], sort=False):
        caps = part[part["model"].map(is_capsule_model)].iloc[0]
        cnn = part[~part["model"].map(is_capsule_model)].iloc[0]
        weaker = caps if caps["role"] == "target" else cnn
        rows.append({
            "protocol": name, "seed": int(seed), "weaker": weaker["model"], "target": float(weaker["matching_target"]),
            "capsules_step": int(caps["step"]), "cnn_step": int(cnn["step"]),
            "capsules_matching_error": float(caps["matching_error"]),
            "cnn_matching_error": float(cnn["matching_error"]),
            "gap": float(caps["matching_error"] - cnn["matching_error"]), "matched": bool(caps["matched"]),
            "capsules_familiar_error": float(caps["familiar_error"]),
            "cnn_familiar_error": float(cnn["familiar_error"]),
            "capsules_novel_error": float(caps["novel_error"]), "cnn_novel_error": float(cnn["novel_error"]),
            "novel_difference": float(caps["novel_error"] - cnn["novel_error"]),
        })
    return pd.DataFrame(rows)


def paper_table2(split: str) -> pd.DataFrame:
    """The paper's Table 2 rows for ``split`` (smallNORB; fractions): views, cnn_error, capsules_error."""
    viewpoint_split(split)
    return pd.DataFrame([{"views": views, "cnn_error": PAPER_TABLE2[(split, views)][0],
                          "capsules_error": PAPER_TABLE2[(split, views)][1]} for views in ("familiar", "novel")])


def series_name(model: str, protocol: str) -> str:
    """How a curve is labelled: the model with the protocol that chose its checkpoint."""
    return f"{model} [{protocol}]"


def distance_summary(distance: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the error per (views, distance bin, model as chosen by a protocol).

    Columns: views, distance_from, distance_to, mean_distance, n (images per seed), series,
    error_mean, error_std.
    """
    table = distance.copy()
    table["series"] = [series_name(m, p) for m, p in zip(table["model"], table["protocol"])]
    keys = ["views", "distance_from", "distance_to", "series"]
    summary = table.groupby(keys, sort=False).agg(
        mean_distance=("mean_distance", "mean"), n=("n", "max"), error_mean=("error", "mean"),
        error_std=("error", lambda e: e.std(ddof=1) if len(e) > 1 else float("nan"))).reset_index()
    order = {"test": 0, "extrapolation": 1}
    summary["_order"] = summary["views"].map(order)
    summary = summary.sort_values(["_order", "distance_from"], kind="stable").drop(columns="_order")
    return summary.reset_index(drop=True)


