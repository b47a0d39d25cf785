"""Do capsule poses carry the viewpoint? A linear probe from features to (cos az, sin az, elevation).

The paper's case for viewpoint generalisation is that a class capsule's 4x4 pose encodes the
object's pose, so a viewpoint change is a (near-)linear change of the pose. If so, a linear map
from the winning class capsule's 16 pose entries to the viewpoint should fit, and should keep
fitting on views it was not fitted on. The same probe on the CNN's penultimate features (1024
units) is the baseline; raw pixels are a floor that any learned feature should beat.

The probe is ridge regression on standardised features, its strength chosen on a validation set
(familiar views of held-out toys); targets are cos and sin of the azimuth and the elevation in
degrees. Scores: R^2 per target (1 = perfect, 0 = no better than predicting the fitting set's
mean, negative = worse), the mean absolute azimuth error in degrees (angle of the predicted
(cos, sin) against the true azimuth; 90 deg is what an uninformative predictor averages over all
azimuths) and the mean absolute elevation error in degrees.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

__all__ = ["RIDGE_ALPHAS", "RidgeProbe", "fit_ridge_probe", "probe_features", "probe_scores", "viewpoint_targets"]

#: Ridge strengths tried (on standardised features), the best chosen on the validation set.
RIDGE_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
TARGET_NAMES: tuple[str, ...] = ("cos_azimuth", "sin_azimuth", "elevation")


def viewpoint_targets(meta: pd.DataFrame) -> np.ndarray:
    """(N, 3) targets: cos and sin of the azimuth, the elevation in degrees."""
    azimuth = np.deg2rad(meta["azimuth"].to_numpy(dtype=float))
    return np.stack([np.cos(azimuth), np.sin(azimuth), meta["elevation"].to_numpy(dtype=float)], axis=1)


@torch.no_grad()
def probe_features(model: nn.Module | None, images: Tensor, *, batch_size: int = 128,
                   capsule_features: str = "winning") -> np.ndarray:
    """Features the probe reads, (N, F) float64, from images (N, C, 32, 32) in [0, 1].

    A capsule net (has ``forward_with_poses``): ``capsule_features="winning"``, the 16 pose entries
    of the class capsule with the highest activation (one linear map for every class);
    ``"masked"``, the 5 x 16 class poses with all but the winner's zeroed (so the linear map can
    differ per class: each class capsule may use its own frame). The baseline CNN (``features`` + ``classifier``): the penultimate layer's
    units (after the ReLU; dropout off). ``None``: the raw pixels.
    """
    if model is None:
        return images.reshape(len(images), -1).double().numpy()
    was_training = model.training
    model.eval()
    parts = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if hasattr(model, "forward_with_poses"):
                acts, poses = model.forward_with_poses(batch)
                winner = acts.argmax(dim=1)
                if capsule_features == "masked":
                    keep = torch.nn.functional.one_hot(winner, poses.shape[1]).to(poses.dtype)
                    parts.append((poses * keep.unsqueeze(-1)).flatten(1))
                else:
                    parts.append(poses[torch.arange(len(batch)), winner])
            elif hasattr(model, "features") and hasattr(model, "classifier"):
                hidden = model.features(model.standardise(batch))
                parts.append(model.classifier[:-1](hidden))
            else:
                raise ValueError(f"no probe features defined for {type(model).__name__}")
    finally:
        model.train(was_training)
    return torch.cat(parts).double().numpy()


class RidgeProbe:
    """y = ((x - mean) / std) W + b, W by ridge regression (closed form)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, weight: np.ndarray, bias: np.ndarray, alpha: float) -> None:
        self.mean, self.std, self.weight, self.bias, self.alpha = mean, std, weight, bias, alpha

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, alpha: float) -> "RidgeProbe":
        mean = features.mean(0)
        std = features.std(0)
        std = np.where(std > 1e-12, std, 1.0)
        x = (features - mean) / std
        bias = targets.mean(0)
        gram = x.T @ x + alpha * np.eye(x.shape[1])
        weight = np.linalg.solve(gram, x.T @ (targets - bias))
        return cls(mean, std, weight, bias, alpha)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std) @ self.weight + self.bias


def probe_scores(predicted: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """R^2 per target (and their mean), mean absolute azimuth and elevation errors in degrees."""
    scores: dict[str, float] = {}
    for k, name in enumerate(TARGET_NAMES):
        residual = ((targets[:, k] - predicted[:, k]) ** 2).sum()
        total = ((targets[:, k] - targets[:, k].mean()) ** 2).sum()
        scores[f"r2_{name}"] = float(1 - residual / total) if total > 0 else float("nan")
    scores["r2_mean"] = float(np.nanmean([scores[f"r2_{name}"] for name in TARGET_NAMES]))
    true_az = np.arctan2(targets[:, 1], targets[:, 0])
    predicted_az = np.arctan2(predicted[:, 1], predicted[:, 0])
    wrapped = np.angle(np.exp(1j * (predicted_az - true_az)))
    scores["azimuth_error_deg"] = float(np.degrees(np.abs(wrapped)).mean())
    scores["elevation_error_deg"] = float(np.abs(predicted[:, 2] - targets[:, 2]).mean())
    return scores


def fit_ridge_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    alphas: tuple[float, ...] = RIDGE_ALPHAS) -> RidgeProbe:
    """The ridge probe fitted on (train_x, train_y) whose alpha scores the best mean R^2 on validation."""
    best: tuple[float, RidgeProbe] | None = None
    for alpha in alphas:
        probe = RidgeProbe.fit(train_x, train_y, alpha)
        r2 = probe_scores(probe.predict(val_x), val_y)["r2_mean"]
        if best is None or (not math.isnan(r2) and r2 > best[0]):
            best = (r2, probe)
    assert best is not None
    return best[1]


def probe_sample(prepared, splits: tuple[str, ...], n_train: int, n_test: int, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training file (familiar under at least one of ``splits``) and of the testing file
    the probe uses: at most ``n_train`` and ``n_test``, drawn with a fixed seed, sorted."""
    from capsrobust.data.splits import get_split

    rng = np.random.default_rng(seed)
    train_meta = prepared.meta["training"]
    familiar = np.zeros(len(train_meta), dtype=bool)
    for name in splits:
        familiar |= get_split(name).is_familiar(train_meta)
    candidates = np.flatnonzero(familiar)
    train_rows = np.sort(rng.choice(candidates, size=min(n_train, len(candidates)), replace=False))
    n_testing = len(prepared.meta["testing"])
    test_rows = np.sort(rng.choice(n_testing, size=min(n_test, n_testing), replace=False))
    return train_rows, test_rows


def viewpoint_probe_table(features_train: np.ndarray, features_test: np.ndarray, prepared,
                          train_rows: np.ndarray, test_rows: np.ndarray,
                          splits: tuple[str, ...] = ("full", "azimuth", "elevation")) -> pd.DataFrame:
    """Fit and score the probe for each viewpoint protocol in ``splits``.

    ``features_train`` / ``features_test`` are the features of ``train_rows`` / ``test_rows`` of the
    training / testing files (:func:`probe_sample`, :func:`probe_features`). Per protocol the probe
    is fitted on its familiar views of the training toys (minus the held-out validation toy of each
    class), its ridge strength chosen on the familiar views of the held-out toys, and scored on the
    test set's familiar and novel views (test toys are never seen by the model or the probe).
    ``full``: fitted on every view, scored on all test views (do the features carry the viewpoint
    at all?). One row per (split, views) with a non-empty test subset, with :func:`probe_scores`' columns, ``images``, ``fit_images``, ``alpha``.
    """
    from capsrobust.data.splits import DEFAULT_VALIDATION_INSTANCES, get_split

    train_meta = prepared.meta["training"].iloc[train_rows]
    test_meta = prepared.meta["testing"].iloc[test_rows]
    held = np.zeros(len(train_meta), dtype=bool)
    for label, instance in DEFAULT_VALIDATION_INSTANCES.items():
        held |= ((train_meta["label"] == label) & (train_meta["instance"] == instance)).to_numpy()
    train_y, test_y = viewpoint_targets(train_meta), viewpoint_targets(test_meta)
    rows = []
    for name in splits:
        split = get_split(name)
        familiar_train = split.is_familiar(train_meta)
        fit, val = familiar_train & ~held, familiar_train & held
        probe = fit_ridge_probe(features_train[fit], train_y[fit], features_train[val], train_y[val])
        familiar_test = split.is_familiar(test_meta)
        for views, mask in (("familiar", familiar_test), ("novel", ~familiar_test)):
            if not mask.any():
                continue
            scores = probe_scores(probe.predict(features_test[mask]), test_y[mask])
            rows.append({"split": name, "views": views, **scores, "images": int(mask.sum()),
                         "fit_images": int(fit.sum()), "alpha": probe.alpha})
    return pd.DataFrame(rows)
