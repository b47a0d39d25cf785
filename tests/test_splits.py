"""Viewpoint protocols on the full smallNORB grid (metadata only: no images needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from capsrobust.data.smallnorb import SPLIT_INSTANCES
from capsrobust.data.splits import SPLITS, get_split, split_indices
from capsrobust.errors import ConfigError


def grid_meta(split: str) -> pd.DataFrame:
    """The 24,300-row metadata table of a full smallNORB split."""
    rows = itertools.product(range(5), sorted(SPLIT_INSTANCES[split]), range(30, 75, 5), range(0, 360, 20), range(6))
    return pd.DataFrame(list(rows), columns=["label", "instance", "elevation", "azimuth", "lighting"])


TRAIN, TEST = grid_meta("training"), grid_meta("testing")


def test_full_grid_has_smallnorb_size() -> None:
    assert len(TRAIN) == len(TEST) == 24300


def test_azimuth_split_sizes_follow_the_paper() -> None:
    idx = split_indices("azimuth", TRAIN, TEST)
    # 6 of 18 azimuths familiar; one of five training toys per class held out for validation.
    assert idx.sizes() == {
        "train": 24300 // 3 * 4 // 5,
        "validation": 24300 // 3 // 5,
        "validation_novel": 24300 * 2 // 3 // 5,
        "test_familiar": 24300 // 3,
        "test_novel": 24300 * 2 // 3,
    }
    assert set(TEST.loc[idx.test_familiar, "azimuth"]) == {300, 320, 340, 0, 20, 40}
    assert set(TEST.loc[idx.test_novel, "azimuth"]) == set(range(60, 300, 20))


def test_elevation_split_uses_the_three_lowest_elevations() -> None:
    idx = split_indices("elevation", TRAIN, TEST)
    assert set(TRAIN.loc[idx.train, "elevation"]) == {30, 35, 40}
    assert set(TEST.loc[idx.test_novel, "elevation"]) == {45, 50, 55, 60, 65, 70}
    assert len(idx.test_familiar) == 24300 // 3


def test_full_split_has_no_novel_views() -> None:
    idx = split_indices("full", TRAIN, TEST)
    assert len(idx.test_novel) == 0 and len(idx.validation_novel) == 0
    assert len(idx.train) + len(idx.validation) == 24300


@pytest.mark.parametrize("name", list(SPLITS))
def test_validation_holds_one_unseen_toy_per_class(name: str) -> None:
    idx = split_indices(name, TRAIN, TEST)
    assert not set(idx.train) & set(idx.validation)
    held = TRAIN.loc[idx.validation].groupby("label")["instance"].unique()
    assert all(len(instances) == 1 for instances in held)
    for label, instances in held.items():
        seen = set(TRAIN.loc[idx.train].query("label == @label")["instance"])
        assert instances[0] not in seen
    # Different toys per class, so no single instance number dominates validation.
    assert len({int(v[0]) for v in held}) == 5


def test_index_sets_partition_each_file() -> None:
    idx = split_indices("azimuth", TRAIN, TEST)
    train_side = np.concatenate([idx.train, idx.validation, idx.validation_novel])
    novel_train = np.setdiff1d(np.arange(len(TRAIN)), train_side)
    # Every training row is either used or a novel view of a training toy (never trained on).
    assert set(TRAIN.loc[novel_train, "azimuth"]).isdisjoint({300, 320, 340, 0, 20, 40})
    assert len(np.intersect1d(idx.test_familiar, idx.test_novel)) == 0
    assert len(idx.test_familiar) + len(idx.test_novel) == len(TEST)


def test_unknown_split_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown split 'diagonal'; choose one of: full, azimuth, elevation"):
        get_split("diagonal")
