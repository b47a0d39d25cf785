"""Test error of a checkpoint on the familiar and novel test sets of a viewpoint protocol, overall
and broken down by a property of the test images (toy, lighting, elevation, azimuth)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd
import torch

from capsrobust.training.checkpoints import LoadedModel, load_model
from capsrobust.data.smallnorb import CLASS_NAMES
from capsrobust.models.prediction import predict_scores

__all__ = ["BREAKDOWNS", "TestPredictions", "breakdown_table", "confusion_table", "error_table",
           "evaluate_checkpoint", "test_predictions"]

#: ``--by`` choices: the meta columns each breakdown groups the test images by.
BREAKDOWNS: dict[str, tuple[str, ...]] = {
    "instance": ("label", "instance"),  # one test toy (instance) of one class
    "lighting": ("lighting",),
    "elevation": ("elevation",),
    "azimuth": ("azimuth",),
}


@dataclass
class TestPredictions:
    """Per test subset (``test``, or ``test_familiar``/``test_novel`` for a viewpoint split): the
    examples' meta rows with ``predicted`` (class index) and ``wrong`` (bool) added. ``crops``: 1 (centre) or 13 (the paper's test)."""

    model: str
    dataset: str
    split: str
    crops: int
    step: int
    subsets: dict[str, pd.DataFrame]


def test_predictions(loaded: LoadedModel, *, multi_crop: bool = False, batch_size: int = 256) -> TestPredictions:
    """Score every non-empty test subset of ``loaded.data`` once (images ``(N, C, 48, 48)`` → ``(N, 5)``)."""
    data = loaded.data
    meta = data.meta["testing"]
    subsets = {}
    for subset in ("test_familiar", "test_novel"):
        images, labels = data.subset(subset)
        if len(labels) == 0:
            continue
        index = torch.as_tensor(getattr(data.indices, subset), dtype=torch.long)
        predicted = predict_scores(loaded.model, images, multi=multi_crop, batch_size=batch_size).argmax(dim=1)
        rows = meta.iloc[index.numpy()].reset_index(drop=True)
        subsets["test" if data.split == "full" else subset] = rows.assign(predicted=predicted.numpy(),
                                                                          wrong=(predicted != labels).numpy())
    return TestPredictions(model=loaded.name, dataset=data.describe(), split=data.split,
                           crops=13 if multi_crop else 1, step=int(loaded.checkpoint["step"]), subsets=subsets)


def _identified(table: pd.DataFrame, predictions: TestPredictions) -> pd.DataFrame:
    """``table`` with ``model``, ``dataset``, ``split`` as its first columns and ``attrs`` holding the
    dataset and the checkpoint's step (changed in place and returned)."""
    for column, value in (("split", predictions.split), ("dataset", predictions.dataset), ("model", predictions.model)):
        table.insert(0, column, value)
    table.attrs.update(dataset=predictions.dataset, step=predictions.step)
    return table


def error_table(predictions: TestPredictions) -> pd.DataFrame:
    """One row per non-empty test subset: ``model``, ``dataset``, ``split``, ``subset``, ``crops``,
    ``n``, ``error``; ``attrs`` hold the dataset and the checkpoint's step."""
    return _identified(pd.DataFrame([{"subset": subset, "crops": predictions.crops, "n": len(rows),
                                      "error": float(rows["wrong"].mean())}
                                     for subset, rows in predictions.subsets.items()]), predictions)


def _breakdown_keys(by: str) -> list[str]:
    """The meta columns of breakdown ``by`` (ValueError naming the valid ones otherwise)."""
    if by not in BREAKDOWNS:
        raise ValueError(f"unknown breakdown {by!r}; valid: {', '.join(BREAKDOWNS)}")
    return list(BREAKDOWNS[by])


def breakdown_table(predictions: TestPredictions, by: str) -> pd.DataFrame:
    """Test error per group of :data:`BREAKDOWNS` ``[by]``: ``subset``, ``crops``, the group columns
    (``class`` named beside ``label`` for ``instance``), ``n``, ``error``. ``attrs`` as :func:`error_table`."""
    keys = _breakdown_keys(by)
    parts = []
    for subset, rows in predictions.subsets.items():
        grouped = rows.groupby(keys)["wrong"].agg(["size", "mean"]).reset_index()
        grouped = grouped.rename(columns={"size": "n", "mean": "error"})
        grouped.insert(0, "crops", predictions.crops)
        grouped.insert(0, "subset", subset)
        parts.append(grouped)
    table = pd.concat(parts, ignore_index=True)
    if "label" in keys:
        table.insert(table.columns.get_loc("label") + 1, "class", [CLASS_NAMES[i] for i in table["label"]])
    return _identified(table, predictions)


def confusion_table(predictions: TestPredictions, by: str | None = None) -> pd.DataFrame:
    """Counts of test images per (``subset``, ``crops``, ``true`` class, [the group of :data:`BREAKDOWNS`
    ``[by]``], ``predicted`` class): every predicted class listed (zeros included) for each true class
    (and group) present; ``attrs`` as :func:`error_table`. ``by="instance"``: one row per test toy."""
    keys = [key for key in _breakdown_keys(by) if key != "label"] if by else []
    classes = range(len(CLASS_NAMES))
    parts = []
    for subset, rows in predictions.subsets.items():
        counts = (rows.groupby(["label", *keys, "predicted"]).size()
                  .unstack("predicted", fill_value=0).reindex(columns=classes, fill_value=0))
        if not keys:
            counts = counts.reindex(index=classes, fill_value=0)
        long = counts.stack().rename("count").reset_index()
        long = long.rename(columns={"label": "true"})
        long["true"] = [CLASS_NAMES[i] for i in long["true"]]
        long["predicted"] = [CLASS_NAMES[i] for i in long["predicted"]]
        parts.append(long.assign(subset=subset, crops=predictions.crops))
    return _identified(pd.concat(parts, ignore_index=True)[["subset", "crops", "true", *keys, "predicted", "count"]],
                       predictions)


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
    (:func:`~capsrobust.training.checkpoints.load_model`: a model trained on synthnorb is never scored
    on smallNORB, nor on a synthnorb render of another recipe).
    """
    loaded = load_model(path, data_dir=data_dir, split=split, advice="evaluate on the data it was trained on")
    return error_table(test_predictions(loaded, multi_crop=multi_crop, batch_size=batch_size))
