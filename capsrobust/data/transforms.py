"""The paper's image preparation (§5; official values where it is silent, REFERENCE.md §2).

Pipeline: 96×96 uint8 → :func:`downsample` once for the whole dataset to 48×48 float in [0, 1]
→ per example, at training time :func:`train_transform` (random 32×32 crop, random brightness
shift of at most 63/255, random contrast factor in [0.2, 1.8]), at test time :func:`test_transform`
(centre 32×32 crop) or :func:`multi_crop` (13 crops). Images stay in [0, 1]; per-image
standardisation belongs to the models, so attack budgets are in pixel units.

Optional, not in the paper: :func:`stretch_batch` magnifies each 48×48 image about its centre by a
random factor per axis (:func:`sample_stretch`) before the crop -- a change of size and aspect ratio,
the way one toy instance differs from another (``capsrobust train --shape-jitter``).

Stereo examples have two channels, one per camera; photometric jitter draws one brightness and
one contrast value per example and applies them to both cameras (each camera keeps its own mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

__all__ = [
    "CROP_SIZE",
    "DOWNSAMPLED_SIZE",
    "MULTI_CROP_OFFSETS",
    "AugmentParams",
    "RandomBrightnessShift",
    "augment_batch",
    "sample_augment_params",
    "center_crop",
    "downsample",
    "multi_crop",
    "sample_stretch",
    "stretch_batch",
    "test_transform",
    "train_transform",
]

DOWNSAMPLED_SIZE = 48
CROP_SIZE = 32
#: (dy, dx) offsets from the centre crop for the 13-crop test: the centre plus the four
#: diagonal directions at distances 1, 2 and 3 pixels (REFERENCE.md §2).
MULTI_CROP_OFFSETS: tuple[tuple[int, int], ...] = ((0, 0),) + tuple(
    (sy * k, sx * k) for k in (1, 2, 3) for sy in (-1, 1) for sx in (-1, 1)
)


def downsample(images: np.ndarray | torch.Tensor, size: int = DOWNSAMPLED_SIZE, chunk: int = 2048) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` → float32 ``(N, C, size, size)`` in [0, 1] (antialiased bilinear).

    Done once per dataset (not per epoch), in chunks so memory stays bounded.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.float32)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk]
        # Chunk-wise copy: the source may be a read-only memory map of the decoded cache.
        part = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
        batch = part.to(torch.float32).div_(255.0)
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.clamp_(0.0, 1.0)
    return out


class RandomBrightnessShift(v2.Transform):
    """Add one random offset δ ~ U[-max_delta, max_delta] to the image, then clamp to [0, 1].

    Additive, as TensorFlow's ``random_brightness`` used by the official code -- unlike
    torchvision's multiplicative ``ColorJitter(brightness=…)``, hence this small transform.
    """

    def __init__(self, max_delta: float = 63 / 255) -> None:
        super().__init__()
        if max_delta < 0:
            raise ValueError("max_delta must be non-negative")
        self.max_delta = max_delta

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"delta": float(torch.empty(()).uniform_(-self.max_delta, self.max_delta))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return (inpt + params["delta"]).clamp(0.0, 1.0)


class _PerCamera(v2.Transform):
    """Apply ``inner`` to ``(…, C, H, W)`` as ``C`` one-channel images sharing random parameters."""

    def __init__(self, inner: v2.Transform) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: Any) -> Any:
        (image,) = inputs
        return self.inner(image.unsqueeze(-3)).squeeze(-3)


def train_transform(
    max_brightness_delta: float = 63 / 255,
    contrast: tuple[float, float] = (0.2, 1.8),
    crop_size: int = CROP_SIZE,
) -> v2.Transform:
    """Training augmentation: float ``(C, 48, 48)`` in [0, 1] → ``(C, 32, 32)`` in [0, 1]."""
    return v2.Compose(
        [
            v2.RandomCrop(crop_size),
            _PerCamera(v2.Compose([RandomBrightnessShift(max_brightness_delta), v2.ColorJitter(contrast=contrast)])),
        ]
    )


def test_transform(crop_size: int = CROP_SIZE) -> v2.Transform:
    """Evaluation: centre crop, float ``(…, C, 48, 48)`` → ``(…, C, 32, 32)``."""
    return v2.CenterCrop(crop_size)


def center_crop(images: torch.Tensor, crop_size: int = CROP_SIZE) -> torch.Tensor:
    """Centre crop of a batch: ``(N, C, H, W)`` → ``(N, C, crop_size, crop_size)``."""
    return test_transform(crop_size)(images)


def multi_crop(images: torch.Tensor, crop_size: int = CROP_SIZE) -> torch.Tensor:
    """The 13-crop test views: ``(N, C, H, W)`` → ``(13, N, C, crop_size, crop_size)``.

    Crop 0 is the centre crop; the others are shifted by :data:`MULTI_CROP_OFFSETS`.
    Combine per-crop class activations normalised to sum 1, summed over crops, then argmax.
    """
    h, w = images.shape[-2:]
    top, left = (h - crop_size) // 2, (w - crop_size) // 2
    if top < 3 or left < 3 or h - top - crop_size < 3 or w - left - crop_size < 3:
        raise ValueError(f"images of size {h}x{w} leave no room for 13 crops of {crop_size} (need 3 px margins)")
    return torch.stack(
        [images[..., top + dy : top + dy + crop_size, left + dx : left + dx + crop_size] for dy, dx in MULTI_CROP_OFFSETS]
    )


@dataclass(frozen=True)
class AugmentParams:
    """Per-example augmentation draws for a batch of N: crop corner, brightness delta, contrast factor."""

    top: torch.Tensor  # (N,) int64
    left: torch.Tensor  # (N,) int64
    brightness: torch.Tensor  # (N,) float32, additive
    contrast: torch.Tensor  # (N,) float32, factor


def sample_augment_params(
    n: int,
    image_size: int = DOWNSAMPLED_SIZE,
    crop_size: int = CROP_SIZE,
    max_brightness_delta: float = 63 / 255,
    contrast: tuple[float, float] = (0.2, 1.8),
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Draw the same distributions as :func:`train_transform`, for ``n`` examples at once."""
    span = image_size - crop_size + 1
    top = torch.randint(0, span, (n,), generator=generator)
    left = torch.randint(0, span, (n,), generator=generator)
    brightness = (torch.rand(n, generator=generator) * 2 - 1) * max_brightness_delta
    factor = contrast[0] + torch.rand(n, generator=generator) * (contrast[1] - contrast[0])
    return AugmentParams(top, left, brightness, factor)


def augment_batch(
    images: torch.Tensor, params: AugmentParams, crop_size: int = CROP_SIZE
) -> torch.Tensor:
    """Vectorised training augmentation: ``(N, C, 48, 48)`` in [0, 1] → ``(N, C, 32, 32)`` in [0, 1].

    Same operations as :func:`train_transform` (crop, additive brightness then clamp, contrast about
    each camera's mean then clamp), applied to a whole batch with one gather and a few
    element-wise ops instead of N Python-level transform calls.
    """
    n, c, _, _ = images.shape
    offsets = torch.arange(crop_size)
    rows = (params.top[:, None] + offsets)[:, None, :, None]  # (N, 1, S, 1)
    cols = (params.left[:, None] + offsets)[:, None, None, :]  # (N, 1, 1, S)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(c)[None, :, None, None]
    crops = images[batch, chans, rows, cols]  # (N, C, S, S)
    crops = (crops + params.brightness[:, None, None, None]).clamp_(0.0, 1.0)
    mean = crops.mean(dim=(-2, -1), keepdim=True)
    factor = params.contrast[:, None, None, None]
    return (factor * crops + (1 - factor) * mean).clamp_(0.0, 1.0)


def sample_stretch(n: int, jitter: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example magnifications ``(N, 2)`` float32 (rows ``(s_y, s_x)``), each axis drawn
    independently, log-uniform in ``[1 / (1 + jitter), 1 + jitter]`` (so shrinking and growing are
    equally likely and the aspect ratio changes too)."""
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    bound = math.log1p(jitter)
    return torch.exp((torch.rand(n, 2, generator=generator) * 2 - 1) * bound)


def stretch_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Magnify each image about its centre: ``(N, C, H, W)``, factors ``(N, 2)`` as ``(s_y, s_x)`` →
    ``(N, C, H, W)``. Bilinear; where a shrunken image leaves the frame, its border pixels extend
    (the background, in NORB-like images). Factors of 1 give the images back."""
    n = images.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=images.dtype)
    theta[:, 0, 0] = 1 / factors[:, 1]  # affine_grid maps output to input coordinates: x / s_x
    theta[:, 1, 1] = 1 / factors[:, 0]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
