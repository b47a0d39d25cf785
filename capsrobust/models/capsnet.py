"""The matrix-capsule network of Hinton, Sabour & Frosst (ICLR 2018), Fig. 1."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capsrobust.models.layers import ClassCaps, ConvCaps, PrimaryCaps, RoutingFn
from capsrobust.models.preprocessing import PerImageStandardisation
from capsrobust.models.routing import em_routing

IMAGE_SIZE = 32


def receptive_field_centres(layers: list[tuple[int, int]], grid: int, image_size: int = IMAGE_SIZE) -> Tensor:
    """(grid, grid, 2) centres (row, col) of each output position, scaled to [0, 1] of the image.

    ``layers`` lists (kernel, stride) from the input to the grid; a position p of a layer is
    centred on input position p * stride + (kernel - 1) / 2.
    """
    position = torch.arange(grid, dtype=torch.float32)
    for kernel, stride in reversed(layers):
        position = position * stride + (kernel - 1) / 2
    scaled = (position + 0.5) / image_size
    rows, cols = torch.meshgrid(scaled, scaled, indexing="ij")
    return torch.stack([rows, cols], dim=-1)


class MatrixCapsNet(nn.Module):
    """Matrix capsules with EM routing: images (N, C, 32, 32) in [0, 1] -> class activations (N, classes).

    Per-image standardisation -> ReLU conv 5x5/2 (A) -> PrimaryCaps 1x1 (B) -> ConvCaps 3x3/2 (C)
    -> ConvCaps 3x3/1 (D) -> ClassCaps with coordinate addition. Scores are class-capsule
    activations in (0, 1), not logits (``score_kind = "activation"``); use
    :meth:`forward_with_poses` for the class poses as well.

    ``schedule``/``normalisation`` choose the EM-routing variant (:func:`em_routing`);
    ``lambda_scale`` multiplies every layer's inverse temperature (1 = official) and
    ``conv_lambda_scale`` the convolutional capsule layers' once more: a ConvCaps parent collects a
    mass of only ~1 (each child's assignment is shared by the parents of every overlapping patch),
    so at the official lambda its cost moves its logit by ~0.1 and its activation stays near 0.5
    (``capsrobust inspect``); ``transform_init``
    is ``"identity"`` (default) or ``"normal"`` (see :data:`capsrobust.models.layers.TRANSFORM_INITS`);
    ``beta_parametrisation`` is ``"direct"`` (default) or ``"official"`` (the official code's cost
    constants) or ``"logit"`` (beta_a in logit units; see
    :data:`capsrobust.models.layers.BETA_PARAMETRISATIONS`); ``cost_normalisation`` is ``"none"``
    (official) or ``"ibm"`` (:data:`capsrobust.models.layers.COST_NORMALISATIONS`);
    ``class_lambda_scale`` multiplies the class layer's inverse temperature once more;
    ``coordinates`` is ``"unit"`` or ``"centred"`` (:data:`capsrobust.models.layers.COORDINATES`).
    """

    score_kind = "activation"

    def __init__(
        self,
        in_channels: int = 2,
        A: int = 32,
        B: int = 32,
        C: int = 32,
        D: int = 32,
        iterations: int = 3,
        num_classes: int = 5,
        *,
        schedule: str = "official",
        normalisation: str = "official",
        lambda_scale: float = 1.0,
        conv_lambda_scale: float = 1.0,
        transform_init: str = "identity",
        beta_parametrisation: str = "direct",
        cost_normalisation: str = "none",
        class_lambda_scale: float = 1.0,
        coordinates: str = "unit",
        routing: RoutingFn = em_routing,
    ) -> None:
        super().__init__()
        options = dict(schedule=schedule, normalisation=normalisation, lambda_scale=lambda_scale,
                       transform_init=transform_init, beta_parametrisation=beta_parametrisation,
                       cost_normalisation=cost_normalisation, routing=routing)
        conv_options = dict(options, lambda_scale=lambda_scale * conv_lambda_scale)
        class_options = dict(options, lambda_scale=lambda_scale * class_lambda_scale, coordinates=coordinates)
        self.standardise = PerImageStandardisation()
        self.conv1 = nn.Conv2d(in_channels, A, kernel_size=5, stride=2)  # 32 -> 14
        self.primary_caps = PrimaryCaps(A, B)
        self.conv_caps1 = ConvCaps(B, C, kernel_size=3, stride=2, iterations=iterations, **conv_options)  # 14 -> 6
        self.conv_caps2 = ConvCaps(C, D, kernel_size=3, stride=1, iterations=iterations, **conv_options)  # 6 -> 4
        centres = receptive_field_centres([(5, 2), (1, 1), (3, 2), (3, 1)], grid=4)
        self.class_caps = ClassCaps(D, num_classes, centres, iterations=iterations, **class_options)

    def forward_with_poses(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, C, 32, 32) -> activations (N, classes), poses (N, classes, 16)."""
        features = torch.relu(self.conv1(self.standardise(images)))
        poses, acts = self.primary_caps(features)
        poses, acts = self.conv_caps1(poses, acts)
        poses, acts = self.conv_caps2(poses, acts)
        poses, acts = self.class_caps(poses, acts)
        return acts, poses

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_with_poses(images)[0]
