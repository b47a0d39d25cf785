"""A dataset ready for training and evaluation: both splits downsampled once, plus split indices."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from capsrobust.data.smallnorb import NorbSplit, load_split
from capsrobust.data.splits import SplitIndices, holdout_instances, split_indices
from capsrobust.data.transforms import downsample

__all__ = ["PreparedData", "dataset_checksum", "prepare_data"]

#: Subsets :meth:`PreparedData.subset` knows: name -> (which file, which index set).
SUBSETS = {
    "train": ("training", "train"),
    "validation": ("training", "validation"),
    "validation_novel": ("training", "validation_novel"),
    "test_familiar": ("testing", "test_familiar"),
    "test_novel": ("testing", "test_novel"),
}


def dataset_checksum(*splits: NorbSplit) -> str:
    """One SHA-256 over the per-file checksums of the given splits (identifies the exact data)."""
    lines = sorted(f"{name}:{digest}" for s in splits for name, digest in s.checksums.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass
class PreparedData:
    """Images as float ``(N, C, 48, 48)`` in [0, 1], labels ``(N,)`` int64, per file, and the split's indices."""

    dataset: str
    mode: str
    split: str
    checksum: str
    images: dict[str, torch.Tensor]  # "training"/"testing" -> (N, C, 48, 48)
    labels: dict[str, torch.Tensor]  # "training"/"testing" -> (N,)
    meta: dict[str, "object"]  # "training"/"testing" -> pandas DataFrame
    indices: SplitIndices
    #: The directory the files were read from.
    source_dir: Path | None = None
    #: synthnorb only: generator version, seed and grid (``Recipe.as_dict()``), read from the
    #: manifest when the files are exactly those it lists; None for smallNORB or an unvouched render.
    recipe: dict[str, Any] | None = None

    @property
    def in_channels(self) -> int:
        return int(self.images["training"].shape[1])

    def subset(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of a subset: train, validation, validation_novel, test_familiar, test_novel."""
        which, attr = SUBSETS[name]
        idx = torch.as_tensor(getattr(self.indices, attr), dtype=torch.long)
        return self.images[which][idx], self.labels[which][idx]

    def describe(self) -> str:
        return f"{self.dataset} ({self.mode})"

    def with_holdout(self, holdout: str) -> "PreparedData":
        """The same data with the training toys held out per :data:`~capsrobust.data.splits.HOLDOUTS`."""
        indices = split_indices(self.split, self.meta["training"], self.meta["testing"], holdout_instances(holdout))
        return dataclasses.replace(self, indices=indices)


def prepare_data(data_dir: str | os.PathLike[str] | None, split: str = "full", mode: str = "stereo") -> PreparedData:
    """Load both files of the dataset (synthnorb when ``data_dir`` is None), downsample, index ``split``
    (one training toy per class held out for validation; :meth:`PreparedData.with_holdout` changes that)."""
    train, test = load_split(data_dir, "training", mode), load_split(data_dir, "testing", mode)
    indices = split_indices(split, train.meta, test.meta)
    recipe = None
    if train.dataset == "synthnorb":
        from capsrobust.data.synthnorb.recipe import read_recipe

        found = read_recipe(train.source_dir, {**train.checksums, **test.checksums})
        recipe = found.as_dict() if found is not None else None
    return PreparedData(
        dataset=train.dataset,
        mode=mode,
        split=split,
        checksum=dataset_checksum(train, test),
        images={"training": downsample(train.images), "testing": downsample(test.images)},
        labels={"training": torch.tensor(train.labels, dtype=torch.long),
                "testing": torch.tensor(test.labels, dtype=torch.long)},
        meta={"training": train.meta, "testing": test.meta},
        indices=indices,
        source_dir=train.source_dir,
        recipe=recipe,
    )
