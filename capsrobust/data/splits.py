"""Viewpoint protocols as data: ``full``, ``azimuth`` and ``elevation`` (paper §5.1, REFERENCE.md §5).

A protocol only says which views are *familiar*; everything else is novel. From the metadata of
the training and testing files it yields five index sets:

- ``train``: training images of the training instances at familiar views;
- ``validation``: familiar views of the *held-out* training instances -- one toy per class,
  removed from ``train`` so that validation, like the test set, holds toys the model never saw
  (the clean matching protocol selects checkpoints on this, never on the test set);
- ``validation_novel``: novel views of the held-out instances (to watch novel error during training);
- ``test_familiar`` / ``test_novel``: test images at familiar / novel views.

For ``full`` every view is familiar, so the novel sets are empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from capsrobust.errors import ConfigError

__all__ = ["HOLDOUTS", "SPLITS", "SplitIndices", "ViewpointSplit", "get_split", "holdout_instances", "split_indices"]


@dataclass(frozen=True)
class ViewpointSplit:
    """Which views are familiar. ``None`` for an axis means every value of it is familiar."""

    name: str
    description: str
    familiar_azimuths: frozenset[int] | None = None  # degrees
    familiar_elevations: frozenset[int] | None = None  # degrees

    def is_familiar(self, meta: pd.DataFrame) -> np.ndarray:
        """Boolean mask over ``meta`` rows (needs ``azimuth`` and ``elevation`` columns in degrees)."""
        mask = np.ones(len(meta), dtype=bool)
        if self.familiar_azimuths is not None:
            mask &= meta["azimuth"].isin(self.familiar_azimuths).to_numpy()
        if self.familiar_elevations is not None:
            mask &= meta["elevation"].isin(self.familiar_elevations).to_numpy()
        return mask


SPLITS: dict[str, ViewpointSplit] = {
    "full": ViewpointSplit("full", "every view familiar (standard smallNORB train/test)"),
    "azimuth": ViewpointSplit(
        "azimuth",
        "familiar azimuths 300-40 degrees (6 of 18); novel: the 12 azimuths 60-280 degrees",
        familiar_azimuths=frozenset({300, 320, 340, 0, 20, 40}),
    ),
    "elevation": ViewpointSplit(
        "elevation",
        "familiar elevations 30-40 degrees (the 3 lowest); novel: 45-70 degrees",
        familiar_elevations=frozenset({30, 35, 40}),
    ),
}

#: Held-out validation toy per class (label -> training instance). A different instance for each
#: class, so that no single instance number carries the whole validation set; fixed, so runs agree.
DEFAULT_VALIDATION_INSTANCES: dict[int, int] = {0: 4, 1: 6, 2: 7, 3: 8, 4: 9}

#: What a training run holds out of the training toys: ``toy`` (the default) one toy per class for
#: validation, so checkpoints can be chosen and matched on unseen toys; ``none`` nothing -- the
#: final fit on all five training toys per class, as the paper trains, with no validation set.
HOLDOUTS: dict[str, dict[int, int]] = {"toy": DEFAULT_VALIDATION_INSTANCES, "none": {}}


def holdout_instances(holdout: str) -> dict[int, int]:
    """label -> held-out training instance for a :data:`HOLDOUTS` name; ConfigError otherwise."""
    try:
        return HOLDOUTS[holdout]
    except KeyError:
        raise ConfigError(f"unknown holdout {holdout!r}; choose one of: {', '.join(HOLDOUTS)}") from None


@dataclass(frozen=True)
class SplitIndices:
    """Row indices into the training file (``train``, ``validation*``) and testing file (``test_*``)."""

    split: str
    train: np.ndarray
    validation: np.ndarray
    validation_novel: np.ndarray
    test_familiar: np.ndarray
    test_novel: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in
                ("train", "validation", "validation_novel", "test_familiar", "test_novel")}


def get_split(name: str) -> ViewpointSplit:
    """The protocol called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return SPLITS[name]
    except KeyError:
        raise ConfigError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}") from None


def split_indices(
    name: str,
    train_meta: pd.DataFrame,
    test_meta: pd.DataFrame,
    validation_instances: dict[int, int] | None = None,
) -> SplitIndices:
    """Index sets of protocol ``name`` over the training and testing metadata tables.

    Args:
        train_meta, test_meta: tables from :func:`capsrobust.data.smallnorb.load_split`
            (columns ``label``, ``instance``, ``azimuth``, ``elevation``; stereo or mono).
        validation_instances: label -> training instance to hold out (default
            :data:`DEFAULT_VALIDATION_INSTANCES`); pass ``{}`` to hold out nothing.
    """
    split = get_split(name)
    held = DEFAULT_VALIDATION_INSTANCES if validation_instances is None else validation_instances
    held_mask = np.zeros(len(train_meta), dtype=bool)
    for label, instance in held.items():
        held_mask |= ((train_meta["label"] == label) & (train_meta["instance"] == instance)).to_numpy()

    train_familiar = split.is_familiar(train_meta)
    test_familiar = split.is_familiar(test_meta)
    as_idx = np.flatnonzero
    return SplitIndices(
        split=split.name,
        train=as_idx(train_familiar & ~held_mask),
        validation=as_idx(train_familiar & held_mask),
        validation_novel=as_idx(~train_familiar & held_mask),
        test_familiar=as_idx(test_familiar),
        test_novel=as_idx(~test_familiar),
    )
