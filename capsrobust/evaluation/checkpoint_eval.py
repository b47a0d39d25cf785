"""Test error of a checkpoint on the familiar and novel test sets of a viewpoint protocol."""

from __future__ import annotations

import os

import pandas as pd

from capsrobust.checkpoints import LoadedModel, load_model
from capsrobust.models.prediction import error_rate

__all__ = ["evaluate_checkpoint", "error_table"]


def error_table(loaded: LoadedModel, *, multi_crop: bool = False, batch_size: int = 256) -> pd.DataFrame:
    """One row per non-empty test subset of ``loaded.data``: ``model``, ``dataset``, ``split``, ``subset``,
    ``crops``, ``n``, ``error``; ``attrs`` hold the dataset and the checkpoint's step."""
    data = loaded.data
    rows = []
    for subset in ("test_familiar", "test_novel"):
        images, labels = data.subset(subset)
        if len(labels) == 0:
            continue
        rows.append({
            "model": loaded.name, "dataset": data.describe(), "split": data.split,
            "subset": "test" if data.split == "full" else subset, "crops": 13 if multi_crop else 1,
            "n": len(labels),
            "error": error_rate(loaded.model, images, labels, multi=multi_crop, batch_size=batch_size),
        })
    table = pd.DataFrame(rows)
    table.attrs.update(dataset=data.describe(), step=loaded.checkpoint["step"])
    return table


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    multi_crop: bool = False,
    batch_size: int = 256,
) -> pd.DataFrame:
    """:func:`error_table` of the checkpoint at ``path`` on ``split`` (default: its own).

    The checkpoint must have been trained on the data it is evaluated on
    (:func:`~capsrobust.checkpoints.load_model`: a model trained on synthnorb is never scored
    on smallNORB, nor on a synthnorb render of another recipe).
    """
    loaded = load_model(path, data_dir=data_dir, split=split, advice="evaluate on the data it was trained on")
    return error_table(loaded, multi_crop=multi_crop, batch_size=batch_size)
