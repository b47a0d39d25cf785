"""Class scores and error rates of a model on prepared 48×48 images (centre crop or the 13-crop test).

Plain prediction, below training (its validation error) and evaluation (test error), so neither
imports the other.
"""

from __future__ import annotations

import torch
from torch import nn

from capsrobust.data.transforms import center_crop, multi_crop
from capsrobust.models import score_kind

__all__ = ["error_rate", "predict_scores"]


def _normalise(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example class distribution: activations / their sum, or softmax of logits."""
    if kind == "logits":
        return scores.softmax(dim=1)
    return scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def predict_scores(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, multi: bool = False
) -> torch.Tensor:
    """Scores ``(N, 5)`` for images ``(N, C, 48, 48)`` in [0, 1].

    ``multi=False``: the model's scores on the centre 32×32 crop. ``multi=True``: the paper's
    13-crop test -- per-crop class activations normalised to sum 1 (softmax for logits), summed.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            if multi:
                crops = multi_crop(batch)  # (13, B, C, 32, 32)
                scores = model(crops.flatten(0, 1)).unflatten(0, crops.shape[:2])
                out.append(_normalise(scores.flatten(0, 1), score_kind(model)).unflatten(0, crops.shape[:2]).sum(0).cpu())
            else:
                out.append(model(center_crop(batch)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 5)


def error_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kwargs: object) -> float:
    """Fraction of ``images`` whose top-scoring class differs from ``labels`` (NaN for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    predictions = predict_scores(model, images, **kwargs).argmax(dim=1)  # type: ignore[arg-type]
    return float((predictions != labels).float().mean())
