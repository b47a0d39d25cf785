"""What does each pose dimension encode? A reconstruction decoder trained on a frozen capsule net.

As in Sabour et al. (2017, §4.1) and the seed article: the class poses (N, classes, 16) with every
class but one masked to zero feed a small MLP that reconstructs the 32x32 input (all channels).
The capsule net stays frozen (the decoder is trained afterwards, it shapes nothing), so the
reconstructions only show what the poses already carry. A traversal then moves one pose entry at a
time by a few of its own standard deviations and decodes: an entry that encodes viewpoint, size or
shading changes the picture in that way; an entry the decoder ignores changes nothing.

The decoder is trained on the true class's pose (Sabour et al.); pictures use the winning class.
A reconstruction is only worth looking at if it beats the class-mean image (what a decoder that
reads nothing but the class produces): :func:`train_decoder` reports both errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

__all__ = ["DecoderResult", "PoseDecoder", "class_poses", "masked_poses", "pose_traversal", "train_decoder",
           "traversal_effects"]

POSE_DIM = 16
IMAGE_SIZE = 32


class PoseDecoder(nn.Module):
    """Masked class poses (N, classes * 16) -> images (N, C, 32, 32) in [0, 1]; 2 hidden ReLU layers
    (512, 1024) and a sigmoid output, Sabour et al.'s decoder at 32x32."""

    def __init__(self, num_classes: int = 5, channels: int = 2, hidden: tuple[int, int] = (512, 1024)) -> None:
        super().__init__()
        self.num_classes, self.channels = num_classes, channels
        self.net = nn.Sequential(
            nn.Linear(num_classes * POSE_DIM, hidden[0]), nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
            nn.Linear(hidden[1], channels * IMAGE_SIZE * IMAGE_SIZE), nn.Sigmoid(),
        )

    def forward(self, masked: Tensor) -> Tensor:
        return self.net(masked).view(-1, self.channels, IMAGE_SIZE, IMAGE_SIZE)


def masked_poses(poses: Tensor, classes: Tensor) -> Tensor:
    """poses (N, K, 16), classes (N,) -> (N, K * 16) with every class but ``classes[n]`` zeroed."""
    mask = torch.zeros(poses.shape[:2], dtype=poses.dtype, device=poses.device)
    mask[torch.arange(len(poses)), classes] = 1.0
    return (poses * mask.unsqueeze(-1)).flatten(1)


@torch.no_grad()
def class_poses(model: nn.Module, images: Tensor, *, batch_size: int = 128) -> tuple[Tensor, Tensor]:
    """(activations (N, K), poses (N, K, 16)) of a frozen capsule net, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        parts = [model.forward_with_poses(images[s:s + batch_size]) for s in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat([a for a, _ in parts]), torch.cat([p for _, p in parts])


@dataclass
class DecoderResult:
    decoder: PoseDecoder
    #: Per class: the std of each pose entry over the fitting images of that class, (K, 16).
    pose_std: Tensor
    #: Per class: the mean pose over the fitting images of that class, (K, 16).
    pose_mean: Tensor
    #: steps, seconds, and mean squared pixel errors on held-out images: ``decoder_mse`` (the
    #: winning class's pose), ``class_mean_mse`` (the mean fitting image of the true class),
    #: ``overall_mean_mse`` (the mean fitting image).
    metrics: dict[str, float]


def train_decoder(poses: Tensor, labels: Tensor, images: Tensor, held_poses: Tensor, held_predicted: Tensor,
                  held_labels: Tensor, held_images: Tensor, *, steps: int = 2000, batch_size: int = 64,
                  lr: float = 1e-3, seed: int = 0, time_budget_s: float | None = None) -> DecoderResult:
    """Fit a :class:`PoseDecoder` on (poses (N, K, 16), labels (N,), images (N, C, 32, 32)).

    Stops after ``steps`` Adam steps or ``time_budget_s`` seconds, whichever comes first; scores on
    the held-out set (its poses masked by the *predicted* classes ``held_predicted``).
    """
    torch.manual_seed(seed)
    num_classes, channels = poses.shape[1], images.shape[1]
    decoder = PoseDecoder(num_classes, channels)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=lr)
    inputs = masked_poses(poses, labels)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    step = 0
    decoder.train()
    while step < steps and (time_budget_s is None or time.perf_counter() - start < time_budget_s):
        batch = torch.randint(len(inputs), (batch_size,), generator=generator)
        loss = nn.functional.mse_loss(decoder(inputs[batch]), images[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
    seconds = time.perf_counter() - start
    decoder.eval()
    with torch.no_grad():
        reconstructed = decoder(masked_poses(held_poses, held_predicted))
        class_means = torch.stack([images[labels == k].mean(0) if (labels == k).any() else images.mean(0)
                                   for k in range(num_classes)])
        metrics = {
            "steps": float(step), "seconds": seconds,
            "decoder_mse": nn.functional.mse_loss(reconstructed, held_images).item(),
            "class_mean_mse": nn.functional.mse_loss(class_means[held_labels], held_images).item(),
            "overall_mean_mse": nn.functional.mse_loss(images.mean(0).expand_as(held_images), held_images).item(),
        }
    pose_std = torch.stack([poses[labels == k, k].std(0) if (labels == k).sum() > 1 else poses[:, k].std(0)
                            for k in range(num_classes)])
    pose_mean = torch.stack([poses[labels == k, k].mean(0) if (labels == k).any() else poses[:, k].mean(0)
                             for k in range(num_classes)])
    return DecoderResult(decoder, pose_std, pose_mean, metrics)


@torch.no_grad()
def pose_traversal(result: DecoderResult, pose: Tensor, cls: int, steps: tuple[float, ...] = (-3, -2, -1, 0, 1, 2, 3)
                   ) -> Tensor:
    """Decode ``pose`` (K, 16) of class ``cls`` with entry d moved by s * std_d for every d and s:
    images (16, len(steps), C, 32, 32); column ``steps.index(0)`` is the plain reconstruction."""
    deltas = torch.tensor(steps, dtype=pose.dtype)
    moved = pose.expand(POSE_DIM, len(steps), *pose.shape).clone()  # (16, S, K, 16)
    for d in range(POSE_DIM):
        moved[d, :, cls, d] += deltas * result.pose_std[cls, d]
    flat = moved.reshape(-1, *pose.shape)
    classes = torch.full((len(flat),), cls, dtype=torch.long)
    images = result.decoder(masked_poses(flat, classes))
    return images.view(POSE_DIM, len(steps), *images.shape[1:])


def traversal_effects(traversal: Tensor, steps: tuple[float, ...]) -> pd.DataFrame:
    """How much the picture changes per pose entry: mean absolute pixel change (grey levels of 255)
    between the extreme steps of a traversal (16, S, C, 32, 32); one row per entry."""
    change = (traversal[:, -1] - traversal[:, 0]).abs().flatten(1).mean(1) * 255
    return pd.DataFrame({"entry": np.arange(POSE_DIM), "row": np.arange(POSE_DIM) // 4, "col": np.arange(POSE_DIM) % 4,
                         "mean_abs_change_grey": change.numpy(), "span_std": steps[-1] - steps[0]})


def reconstruction_study(model: nn.Module, fit_images: Tensor, fit_labels: Tensor, held_images: Tensor,
                         held_labels: Tensor, *, steps: int = 3000, time_budget_s: float | None = None,
                         seed: int = 0) -> tuple[DecoderResult, Tensor, Tensor]:
    """Train a decoder on the frozen ``model``'s class poses of ``fit_images`` and score it on
    ``held_images``. Returns the result, the held-out poses (N, K, 16) and predicted classes (N,)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    _, poses = class_poses(model, fit_images)
    held_acts, held_poses = class_poses(model, held_images)
    predicted = held_acts.argmax(dim=1)
    result = train_decoder(poses, fit_labels, fit_images, held_poses, predicted, held_labels, held_images,
                           steps=steps, seed=seed, time_budget_s=time_budget_s)
    return result, held_poses, predicted
