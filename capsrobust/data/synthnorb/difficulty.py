"""How hard is a NORB-format dataset? A 1-nearest-neighbour (L2) baseline on the paper's inputs.

LeCun, Huang & Bottou (CVPR 2004) report 18.4 % test error for k-NN on NORB's normalized-uniform
set; this module measures the same kind of baseline here so synthnorb's difficulty is a number,
not an impression, and measures it for the viewpoint protocols of Hinton et al. (2018, §5.1):

* ``full``: fit on all training pairs, test on all test pairs;
* ``azimuth``: fit on training pairs at the familiar azimuths (300°, 320°, 340°, 0°, 20°, 40°),
  test separately on test pairs at familiar and at novel azimuths;
* ``elevation``: fit on training pairs at 30°, 35°, 40°; test on familiar and novel elevations.

Features: the preprocessing every model sees at test time (96 -> 48 antialiased bilinear, centre
32 x 32 crop, pixels in [0, 1]); stereo, the two cameras concatenated: 2 x 32 x 32 = 2048 values.
Nothing here depends on a model, so the numbers cannot be tuned toward one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

__all__ = ["FAMILIAR_AZIMUTHS", "FAMILIAR_ELEVATIONS", "features", "knn_difficulty", "nearest_neighbour_labels"]

#: Familiar views of the paper's viewpoint experiments (REFERENCE.md §5), in degrees.
FAMILIAR_AZIMUTHS: frozenset[int] = frozenset({300, 320, 340, 0, 20, 40})
FAMILIAR_ELEVATIONS: frozenset[int] = frozenset({30, 35, 40})


def features(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 stereo images (N, 2, 96, 96) -> float32 features (N, 2 * 32 * 32): downsample, centre crop, flatten."""
    from capsrobust.data.transforms import center_crop, downsample

    return center_crop(downsample(images_u8)).flatten(1).contiguous()


def nearest_neighbour_labels(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, train_masks: dict[str, torch.Tensor],
    chunk: int = 1024,
) -> dict[str, torch.Tensor]:
    """1-NN predictions of ``test_x`` (M, D) for several training subsets at once.

    train_x: (N, D); train_y: (N,); train_masks: name -> bool (N,) selecting the training subset.
    Each chunk of test rows computes its distances to all training rows once (chunked
    ``torch.cdist``) and takes one masked argmin per subset. Returns name -> predicted labels (M,).
    """
    out = {name: torch.empty(test_x.shape[0], dtype=train_y.dtype) for name in train_masks}
    excluded = {name: ~mask for name, mask in train_masks.items()}
    for start in range(0, test_x.shape[0], chunk):
        dist = torch.cdist(test_x[start : start + chunk], train_x)  # (chunk, N)
        for name, mask in excluded.items():
            nearest = dist.masked_fill(mask[None], float("inf")).argmin(1)
            out[name][start : start + chunk] = train_y[nearest]
    return out


def knn_difficulty(data_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """1-NN test error for the full, azimuth and elevation protocols on the dataset in ``data_dir``.

    ``None`` = the default synthnorb (rendered on first use). Returns one row per (protocol, test
    subset) with columns ``dataset, protocol, fit_on, test_on, n_train, n_test, knn_error`` (a fraction).
    """
    from capsrobust.data.smallnorb import load_split

    train = load_split(None if data_dir is None else Path(data_dir), "training", "stereo")
    test = load_split(None if data_dir is None else Path(data_dir), "testing", "stereo")
    train_x, test_x = features(train.images), features(test.images)
    train_y = torch.tensor(train.meta["label"].to_numpy())
    test_y = torch.tensor(test.meta["label"].to_numpy())

    def familiar(meta: pd.DataFrame, column: str, values: frozenset[int]) -> torch.Tensor:
        return torch.from_numpy(meta[column].isin(sorted(values)).to_numpy(copy=True))

    protocols = {
        "full": (None, "all views", "all views"),
        "azimuth": (("azimuth", FAMILIAR_AZIMUTHS), "azimuths 300°-40°", "azimuths 60°-280°"),
        "elevation": (("elevation", FAMILIAR_ELEVATIONS), "elevations 30°-40°", "elevations 45°-70°"),
    }
    masks = {name: (torch.ones(len(train_y), dtype=torch.bool) if rule is None else familiar(train.meta, *rule))
             for name, (rule, _, _) in protocols.items()}
    predictions = nearest_neighbour_labels(train_x, train_y, test_x, masks)

    rows = []
    for name, (rule, familiar_views, novel_views) in protocols.items():
        wrong = predictions[name] != test_y
        if rule is None:
            subsets = [("all", familiar_views, torch.ones(len(test_y), dtype=torch.bool))]
        else:
            fam = familiar(test.meta, *rule)
            subsets = [("familiar", familiar_views, fam), ("novel", novel_views, ~fam)]
        for test_on, views, test_mask in subsets:
            n_test = int(test_mask.sum())
            rows.append({
                "dataset": train.dataset,
                "protocol": name,
                "fit_on": f"training, {familiar_views}",
                "test_on": f"test, {test_on} ({views})",
                "n_train": int(masks[name].sum()),
                "n_test": n_test,
                "knn_error": float(wrong[test_mask].float().mean()) if n_test else float("nan"),
            })
    return pd.DataFrame(rows)
