"""What an adversarial evaluation attacks: trained checkpoints and a fixed subset of test images.

Shared by ``capsrobust attack`` and ``capsrobust bench attacks``. The test images are the centre
crops (N, C, 32, 32) in [0, 1] of a seeded random subset of the *familiar* test set of the split
the checkpoints were trained on (the whole test set for ``full``); every checkpoint must have
been trained on this data (:func:`~capsrobust.training.checkpoints.check_trained_on`), one model of each kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from capsrobust.training.checkpoints import load_checkpoint, load_model
from capsrobust.data.prepared import PreparedData
from capsrobust.data.transforms import center_crop
from capsrobust.errors import CheckpointError, ConfigError
from capsrobust.models import is_capsule_model
from capsrobust.provenance import file_sha256

__all__ = ["SHIPPED_DEFAULTS", "AttackSetup", "LoadedCheckpoint", "ShippedPair", "check_image_count",
           "default_checkpoints", "load_attack_setup", "sample_test_images"]


@dataclass(frozen=True)
class ShippedPair:
    """A capsule net and a CNN whose evaluation-only checkpoints are committed to the repository."""

    capsules: str  # path from the repository root
    cnn: str
    what: str  # what the pair is, told to the user when it is taken


#: The models ``capsrobust attack`` and ``capsrobust bench attacks`` take when no --models is given: the first
#: pair whose two files exist, from the working directory (the repository root). A clean-error-matched pair of
#: today's default capsule net (a CNN's matched.pt stopped at that net's validation error) belongs first once one
#: is committed; the matched CNNs committed so far (results/train/cnn-matched-seed0/,
#: results/study/runs/cnn-matched-seed*/) are partners of the previous default (no shape jitter), so they are not here.
SHIPPED_DEFAULTS: tuple[ShippedPair, ...] = (
    ShippedPair(capsules="results/train/capsules-small-jitter-seed0/best.pt", cnn="results/train/cnn-seed0/best.pt",
                what="today's default capsules-small (shape jitter 0.15) and CNN, seed 0, each at its lowest "
                     "validation error (not clean-error matched)"),
)


@dataclass
class LoadedCheckpoint:
    """One checkpoint: where it is, what it is, and the model rebuilt from it."""

    path: Path
    name: str  # checkpoint["model"]: capsules, capsules-small or cnn
    step: int
    sha256: str
    model: nn.Module

    def record(self) -> dict[str, Any]:
        """JSON-ready provenance of this checkpoint."""
        return {"path": str(self.path), "model": self.name, "step": self.step, "sha256": self.sha256}


@dataclass
class AttackSetup:
    """Models (name -> model, in the order given), the data they were trained on, and the test subset."""

    checkpoints: list[LoadedCheckpoint]
    data: PreparedData
    images: Tensor  # (n, C, 32, 32) in [0, 1]
    labels: Tensor  # (n,)
    indices: Tensor  # (n,) positions in the familiar test subset
    models: dict[str, nn.Module] = field(init=False)

    def __post_init__(self) -> None:
        self.models = {c.name: c.model for c in self.checkpoints}

    @property
    def dataset(self) -> str:
        """E.g. ``synthnorb (stereo)``: what every table and plot names."""
        return self.data.describe()


def default_checkpoints(pairs: Sequence[ShippedPair] = SHIPPED_DEFAULTS) -> tuple[list[Path], str]:
    """The checkpoints to attack when none are named: (capsule net, CNN) of the first of ``pairs`` whose two
    files exist, and one line saying which they are. Raises :class:`CheckpointError` naming what to pass instead.
    """
    for pair in pairs:
        paths = [Path(pair.capsules), Path(pair.cnn)]
        if all(path.is_file() for path in paths):
            return paths, f"no --models given: taking {pair.what}: {paths[0]}, {paths[1]}"
    looked = "; ".join(f"{pair.capsules}, {pair.cnn}" for pair in pairs) or "none listed"
    raise CheckpointError(f"no --models given and no shipped default checkpoints here ({looked}; run from the "
                          "repository root); pass --models CAPS.pt,CNN.pt, e.g. the best.pt of "
                          "`capsrobust train --model capsules-small` and of `capsrobust train --model cnn`")


def check_image_count(n: int) -> int:
    """``--n``, the number of test images attacked, if it is at least 1; else a one-line :class:`ConfigError`.
    (Whether the test set holds that many is checked by :func:`sample_test_images`, once the data is there.)"""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    return n


def sample_test_images(data: PreparedData, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed random subset of ``n`` familiar test examples: images (n, C, 32, 32), labels (n,), indices (n,).

    The subset depends only on ``seed`` and the data (``torch.Generator`` seeded with ``seed``).
    """
    check_image_count(n)
    images, labels = data.subset("test_familiar")
    if n > len(labels):
        raise ConfigError(f"--n {n} exceeds the {len(labels)} test images of {data.describe()} "
                          f"(split {data.split}); use --n {len(labels)} or less")
    indices = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return center_crop(images[indices]).contiguous(), labels[indices].clone(), indices


def load_attack_setup(paths: list[str | os.PathLike[str]], data_dir: str | os.PathLike[str] | None, *, n: int,
                      seed: int, device: str | torch.device = "cpu", pair: bool = False) -> AttackSetup:
    """Load one or two checkpoints and the test images they are evaluated on.

    Both checkpoints must share the input mode and viewpoint split (one image set feeds both) and
    be of different models (tables are keyed by model name); each must have been trained on the
    data in ``data_dir`` (synthnorb when None; :func:`~capsrobust.training.checkpoints.check_trained_on`).
    ``pair=True`` (transfer attacks) demands exactly one capsule net and one cnn.
    """
    if not 1 <= len(paths) <= 2:
        raise ConfigError(f"--models takes one or two checkpoints (capsule net, cnn), got {len(paths)}")
    raw = [(Path(p), load_checkpoint(p)) for p in paths]
    names = [str(c.get("model", "?")) for _, c in raw]
    if len(names) == 2 and names[0] == names[1]:
        raise ConfigError(f"both checkpoints are {names[0]} models ({raw[0][0]}, {raw[1][0]}); "
                          "pass one capsule net and one cnn to --models")
    if pair and sorted(is_capsule_model(name) for name in names) != [False, True]:
        raise ConfigError(f"transfer needs one capsule net and one cnn, got {' and '.join(names)}; "
                          "pass --models CAPS.pt,CNN.pt")
    for key, what in (("mode", "input mode"), ("split", "viewpoint split")):
        values = {str(c.get(key)) for _, c in raw}
        if len(values) > 1:
            raise CheckpointError(f"the checkpoints differ in {what} ({' vs '.join(sorted(values))}); "
                                  f"pass two checkpoints trained with the same --{key if key == 'mode' else 'split'}")
    # One data set for both (the first checkpoint's split and mode, which the second shares).
    first = load_model(raw[0][0], data_dir=data_dir, checkpoint=raw[0][1], device=device)
    loaded = [first] + [load_model(path, data=first.data, checkpoint=checkpoint, device=device)
                        for path, checkpoint in raw[1:]]
    images, labels, indices = sample_test_images(first.data, n, seed)
    checkpoints = [LoadedCheckpoint(path=m.path, name=m.name, step=m.step, sha256=file_sha256(m.path), model=m.model)
                   for m in loaded]
    return AttackSetup(checkpoints=checkpoints, data=first.data, images=images, labels=labels, indices=indices)
