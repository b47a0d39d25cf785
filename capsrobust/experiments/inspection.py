"""What ``capsrobust inspect`` computes, as library calls returning data: the checkpoints to look inside
(:func:`load_subjects`), layer statistics (:func:`layer_statistics`), the validation images routing is
shown on (:func:`routing_images`), the viewpoint pose probe (:func:`pose_probe`) and the reconstruction
decoder with its pose traversals (:func:`reconstruction`). The CLI parses, calls these and prints what
:mod:`capsrobust.reporting.inspection` renders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from capsrobust.training.checkpoints import LoadedModel, load_checkpoint, load_model
from capsrobust.data.prepared import PreparedData
from capsrobust.data.transforms import center_crop
from capsrobust.errors import ConfigError
from capsrobust.models import is_capsule_model

__all__ = ["TRAVERSAL_STEPS", "PoseProbe", "Reconstruction", "Subjects", "layer_statistics", "load_subjects", "pose_probe",
           "reconstruction", "routing_images"]

#: Where each pose entry is moved, in standard deviations of that entry over the fitting images.
TRAVERSAL_STEPS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
#: The splits the pose probe reports familiar and novel views of.
PROBE_SPLITS = ("full", "azimuth", "elevation")


@dataclass
class Subjects:
    """The checkpoint inspected (``main``, its model on its own data) and the ones compared with it."""

    path: Path
    main: LoadedModel
    others: list[LoadedModel] = field(default_factory=list)

    @property
    def checkpoint(self) -> dict[str, Any]:
        return self.main.checkpoint

    @property
    def data(self) -> PreparedData:
        return self.main.data

    def header(self) -> str:
        """``PATH (model, step N), dataset``: the line every printout starts with."""
        return f"{self.path} ({self.checkpoint['model']}, step {self.checkpoint['step']}), {self.data.describe()}"


def load_subjects(checkpoint: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None,
                  needs_capsule: Sequence[str] = (), compare: Sequence[str | os.PathLike[str]] = ()) -> Subjects:
    """Load ``checkpoint`` on its own data and each of ``compare`` on the same data.

    ``needs_capsule``: the requested views that look inside capsule nets (e.g. ``--routing``); a CNN
    checkpoint is refused for them. Raises one-line errors (missing, foreign or truncated files; a CNN
    where a capsule net is needed; checkpoints of another input mode).
    """
    path = Path(checkpoint)
    data = load_checkpoint(path)  # one-line error for a missing/foreign/truncated file
    if needs_capsule and not is_capsule_model(data["model"]):
        raise ConfigError(f"{path} is a {data['model']} checkpoint; {' and '.join(needs_capsule)} looks inside "
                          "capsule nets (capsules, capsules-small); only --pose-probe also takes a CNN")
    compared = [(Path(p), load_checkpoint(p)) for p in compare]
    loaded = load_model(path, data_dir=data_dir, checkpoint=data, advice="pass the --data-dir it was trained on")
    others = []
    for other_path, other in compared:
        if other["mode"] != data["mode"]:
            raise ConfigError(f"{other_path} was trained on {other['mode']} images, {path} on {data['mode']}")
        others.append(load_model(other_path, data=loaded.data, checkpoint=other,
                                 advice="compare checkpoints trained on the same data"))
    return Subjects(path, loaded, others)


def layer_statistics(model: torch.nn.Module, data: PreparedData, count: int) -> tuple[pd.DataFrame, int]:
    """(per capsule layer statistics, images used) on the first ``count`` validation images of a fixed
    shuffle, centre crop (:func:`~capsrobust.evaluation.capsule_stats.capsule_layer_statistics`)."""
    from capsrobust.evaluation.capsule_stats import capsule_layer_statistics

    images, _ = data.subset("validation")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    return capsule_layer_statistics(model, center_crop(images[order])), len(order)


def routing_images(data: PreparedData, image_index: int | None,
                   per_class: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, indices into the validation set): one image, or ``per_class`` of each class of a
    fixed shuffle. Images are as stored (not cropped)."""
    images, labels = data.subset("validation")
    if image_index is not None:
        if image_index >= len(images):
            raise ConfigError(f"--image {image_index} is out of range: the validation set has {len(images)} images")
        chosen = torch.tensor([image_index])
    else:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        chosen = torch.cat([order[labels[order] == k][:per_class] for k in range(int(labels.max()) + 1)])
    return images[chosen], labels[chosen], chosen


@dataclass
class PoseProbe:
    """The pose probe's tables, one per subject: ``(table, checkpoint or None, features kind)`` in order
    (label them with :func:`capsrobust.reporting.inspection.label_probe_table`), and the images it used."""

    tables: list[tuple[pd.DataFrame, dict[str, Any] | None, str]]
    training_rows: int
    testing_rows: int


def pose_probe(loaded: Sequence[LoadedModel], data: PreparedData, probe_images: tuple[int, int]) -> PoseProbe:
    """A linear probe from each model's features to the viewpoint, familiar against novel views of each
    split, beside two references: ``constant`` (no features: the fitting set's mean, the score of knowing
    nothing about the image) and raw pixels. ``probe_images``: training-file and testing-file images sampled."""
    from capsrobust.evaluation.pose_probe import probe_features, probe_sample, viewpoint_probe_table

    train_rows, test_rows = probe_sample(data, PROBE_SPLITS, *probe_images)
    train_images = center_crop(data.images["training"][train_rows])
    test_images = center_crop(data.images["testing"][test_rows])
    subjects: list[tuple[Any, Any, str]] = [(None, None, "constant"), (None, None, "winning")]
    for one in loaded:
        kinds = ("winning", "masked") if is_capsule_model(one.name) else ("winning",)
        subjects += [(one.model, one.checkpoint, kind) for kind in kinds]
    tables = []
    for model, checkpoint, kind in subjects:
        if kind == "constant":
            train_x, test_x = np.zeros((len(train_rows), 1)), np.zeros((len(test_rows), 1))
        else:
            train_x = probe_features(model, train_images, capsule_features=kind)
            test_x = probe_features(model, test_images, capsule_features=kind)
        tables.append((viewpoint_probe_table(train_x, test_x, data, train_rows, test_rows, PROBE_SPLITS),
                       checkpoint, kind))
    return PoseProbe(tables, len(train_rows), len(test_rows))


@dataclass
class Reconstruction:
    """The decoder trained on a frozen capsule net's poses and its traversals.

    ``result``: the :class:`~capsrobust.experiments.decoder.DecoderResult`; fit and held-out images
    (centre crop) with labels, the held-out poses and predicted classes; ``traversals``: per class, one
    correctly classified held-out image ``(class, index, traversal, effects)`` moved by :data:`TRAVERSAL_STEPS`.
    """

    result: Any
    fit_images: torch.Tensor
    fit_labels: torch.Tensor
    held_images: torch.Tensor
    held_labels: torch.Tensor
    held_poses: torch.Tensor
    predicted: torch.Tensor
    traversals: list[tuple[int, int, torch.Tensor, pd.DataFrame]]


def reconstruction(model: torch.nn.Module, data: PreparedData, *, steps: int, seconds: float,
                   fit_count: int = 6000, held_count: int = 500) -> Reconstruction:
    """Train the decoder (whichever of ``steps`` and ``seconds`` comes first) on ``fit_count`` training
    images and traverse the pose of the first correctly classified of ``held_count`` validation images of
    each class."""
    from capsrobust.experiments.decoder import pose_traversal, reconstruction_study, traversal_effects

    fit_images, fit_labels = data.subset("train")
    held_images, held_labels = data.subset("validation")
    generator = torch.Generator().manual_seed(0)
    fit_pick = torch.randperm(len(fit_images), generator=generator)[:fit_count]
    held_pick = torch.randperm(len(held_images), generator=generator)[:held_count]
    fit_images, fit_labels = center_crop(fit_images[fit_pick]), fit_labels[fit_pick]
    held_images, held_labels = center_crop(held_images[held_pick]), held_labels[held_pick]
    result, held_poses, predicted = reconstruction_study(model, fit_images, fit_labels, held_images, held_labels,
                                                         steps=steps, time_budget_s=seconds)
    traversals = []
    for k in range(int(held_labels.max()) + 1):
        hits = ((held_labels == k) & (predicted == k)).nonzero().flatten()
        if not len(hits):
            continue
        i = int(hits[0])
        traversal = pose_traversal(result, held_poses[i], k, TRAVERSAL_STEPS)
        traversals.append((k, i, traversal, traversal_effects(traversal, TRAVERSAL_STEPS).assign(class_index=k)))
    return Reconstruction(result, fit_images, fit_labels, held_images, held_labels, held_poses, predicted,
                          traversals)
