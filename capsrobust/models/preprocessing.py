"""Per-image standardisation, the first step of every model (paper §5; TF's per_image_standardization)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Keeps constant images (variance 0) finite, with finite gradients.
STANDARDISE_EPS = 1e-5


def standardise_per_image(images: Tensor, eps: float = STANDARDISE_EPS) -> Tensor:
    """Zero mean, unit variance over each image's (C, H, W): (N, C, H, W) -> (N, C, H, W)."""
    flat = images.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    var = flat.var(dim=1, unbiased=False).view(-1, 1, 1, 1)
    return (images - mean) * torch.rsqrt(var + eps)


class PerImageStandardisation(nn.Module):
    """Module form of :func:`standardise_per_image`, so it shows in ``print(model)``."""

    def forward(self, images: Tensor) -> Tensor:
        return standardise_per_image(images)
