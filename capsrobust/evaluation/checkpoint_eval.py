"""Test error of a checkpoint on the familiar and novel test sets of a viewpoint protocol."""

from __future__ import annotations

import os

import pandas as pd

from capsrobust.checkpoints import check_trained_on, load_checkpoint
from capsrobust.data.prepared import prepare_data
from capsrobust.data.splits import get_split
from capsrobust.models.prediction import error_rate

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    multi_crop: bool = False,
    batch_size: int = 256,
) -> pd.DataFrame:
    """One row per test subset: ``model``, ``dataset``, ``subset``, ``n``, ``error``.

    The checkpoint must have been trained on the data it is evaluated on
    (:func:`~capsrobust.checkpoints.check_trained_on`: a model trained on synthnorb is never scored
    on smallNORB, nor on a synthnorb render of another recipe).
    """
    from capsrobust.training import model_from_checkpoint

    checkpoint = load_checkpoint(path)
    split_name = get_split(split or checkpoint["split"]).name
    data = prepare_data(data_dir, split_name, checkpoint["mode"])
    check_trained_on(path, checkpoint, data, advice="evaluate on the data it was trained on")
    model = model_from_checkpoint(checkpoint)
    rows = []
    for subset in ("test_familiar", "test_novel"):
        images, labels = data.subset(subset)
        if len(labels) == 0:
            continue
        rows.append({
            "model": checkpoint["model"], "dataset": data.describe(), "split": split_name,
            "subset": "test" if split_name == "full" else subset, "crops": 13 if multi_crop else 1,
            "n": len(labels), "error": error_rate(model, images, labels, multi=multi_crop, batch_size=batch_size),
        })
    table = pd.DataFrame(rows)
    table.attrs.update(dataset=data.describe(), step=checkpoint["step"])
    return table
