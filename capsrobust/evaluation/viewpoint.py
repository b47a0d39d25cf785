"""Viewpoint generalisation, the measurement part (paper §5.1, Table 2; REFERENCE.md §5).

Distances of each view to the nearest familiar view of a split, error per distance bin, the
matching rule (the first checkpoint whose familiar error reaches a target), predictions and errors
of a model on a view test set, and summaries over seeds. Training, matching runs against each
other, budgets and the extrapolation render live in :mod:`capsrobust.experiments.viewpoint`; the
report files in :mod:`capsrobust.reporting.viewpoint`.

Two matching protocols, both reported:

- ``validation`` (clean): the target is the CNN's error on the held-out validation toys at familiar
  views (its ``best.pt``); the capsule checkpoint is chosen on the same validation set.
- ``test-familiar (paper)``: the target is the CNN's familiar *test* error and the capsule
  checkpoint is chosen on the familiar test set, as the paper did (selection on the test set).

Example::

    from capsrobust.evaluation.viewpoint import angular_distance_to_familiar, error_by_distance
    distances = angular_distance_to_familiar(meta, "azimuth")
    table = error_by_distance(predictions, labels, distances, BIN_WIDTH["azimuth"])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from capsrobust.data.splits import ViewpointSplit, get_split
from capsrobust.errors import CheckpointError, ConfigError
from capsrobust.evaluation.accuracy import predict_scores
from capsrobust.models import is_capsule_model
from capsrobust.reference import PAPER_TABLE2

__all__ = [
    "BIN_WIDTH", "PAPER", "PAPER_TABLE2", "PROTOCOLS", "VALIDATION", "VIEWS", "ViewTestSet",
    "angular_distance_to_familiar", "distance_summary", "error_by_distance", "error_fraction", "load_view_test_set",
    "mean_std",
    "paper_table2", "predict_classes", "select_matched_checkpoint", "series_name", "table2_summary",
    "viewpoint_split",
]

VALIDATION = "validation"
PAPER = "test-familiar (paper)"
#: The two matching protocols, in report order.
PROTOCOLS = (VALIDATION, PAPER)

#: Width (degrees) of the distance bins: one smallNORB azimuth step (20°) or elevation step (5°).
BIN_WIDTH = {"azimuth": 20, "elevation": 5}
#: The test sets a viewpoint table reports, in order.
VIEWS = ("familiar", "novel", "extrapolation")


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


def select_matched_checkpoint(candidates: pd.DataFrame, target: float) -> dict[str, Any]:
    """The paper's stopping rule: the first checkpoint whose familiar error is at or below ``target``.

    Args:
        candidates: one row per checkpoint, columns ``step`` and ``familiar_error`` (fraction);
            any order (sorted by step here); rows with a NaN error are ignored.
        target: the familiar error to match -- the CNN's.
    Returns: ``{"step", "familiar_error", "target", "matched"}``. When no checkpoint reaches the
        target, the one with the smallest familiar error (the earliest of ties), ``matched=False``.
    """
    table = candidates.dropna(subset=["familiar_error"]).sort_values("step", kind="stable").reset_index(drop=True)
    if table.empty:
        raise CheckpointError("no checkpoint with a familiar error to choose from; train longer or evaluate more often")
    reached = table[table["familiar_error"] <= target]
    matched = not reached.empty
    row = reached.iloc[0] if matched else table.loc[table["familiar_error"].idxmin()]
    return {"step": int(row["step"]), "familiar_error": float(row["familiar_error"]), "target": float(target),
            "matched": matched}



# ----------------------------------------------------------------------------------------------
# Test sets, predictions, errors


@dataclass
class ViewTestSet:
    """Images ``(N, C, 48, 48)``, labels ``(N,)``, distances ``(N,)`` and the familiar mask of one test set."""

    images: torch.Tensor
    labels: np.ndarray
    distances: np.ndarray
    familiar: np.ndarray

    def subsample(self, n: int, seed: int = 0) -> "ViewTestSet":
        """A fixed random subset of ``n`` examples (seeded; ``n`` <= 0 or >= N: this set), in the original order."""
        if n <= 0 or n >= len(self.labels):
            return self
        keep = np.sort(torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))[:n].numpy())
        return ViewTestSet(self.images[torch.as_tensor(keep)], self.labels[keep], self.distances[keep],
                           self.familiar[keep])


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
                       np.zeros(len(meta), dtype=bool))


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
    how many seeds reached the target familiar error.

    Columns: protocol, views, n_seeds, cnn_error_mean, cnn_error_std, capsules_error_mean,
    capsules_error_std, relative_reduction, capsules_matched (e.g. ``3/3``), capsule_model.
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
                "capsules_matched": f"{int(caps['matched'].astype(bool).sum())}/{len(caps)}",
                "capsule_model": ", ".join(capsule_models),
            })
    return pd.DataFrame(rows)


def paper_table2(split: str) -> pd.DataFrame:
    """The paper's Table 2 rows for ``split`` (smallNORB; fractions): views, cnn_error, capsules_error."""
    viewpoint_split(split)
    return pd.DataFrame([{"views": views, "cnn_error": PAPER_TABLE2[(split, views)][0],
                          "capsules_error": PAPER_TABLE2[(split, views)][1]} for views in ("familiar", "novel")])


def series_name(model: str, protocol: str) -> str:
    """How a curve is labelled: the CNN by name, a capsule net with the protocol that matched it."""
    return f"{model} [{protocol}]" if is_capsule_model(model) else model


def distance_summary(distance: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the error per (views, distance bin, model as matched by a protocol).

    The CNN is the same under both protocols and appears once. Columns: views, distance_from,
    distance_to, mean_distance, n (images per seed), series, error_mean, error_std.
    """
    table = distance[distance["model"].map(is_capsule_model) | (distance["protocol"] == PROTOCOLS[0])].copy()
    table["series"] = [series_name(m, p) for m, p in zip(table["model"], table["protocol"])]
    keys = ["views", "distance_from", "distance_to", "series"]
    summary = table.groupby(keys, sort=False).agg(
        mean_distance=("mean_distance", "mean"), n=("n", "max"), error_mean=("error", "mean"),
        error_std=("error", lambda e: e.std(ddof=1) if len(e) > 1 else float("nan"))).reset_index()
    order = {"test": 0, "extrapolation": 1}
    summary["_order"] = summary["views"].map(order)
    summary = summary.sort_values(["_order", "distance_from"], kind="stable").drop(columns="_order")
    return summary.reset_index(drop=True)


