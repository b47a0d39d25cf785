"""Contact sheets: one row per toy (class x instance), one column per view, for looking at a dataset.

Works for any NORB-format dataset (synthnorb or the official smallNORB files). The mosaic is built
with numpy (:func:`contact_mosaic`); :func:`save_contact_sheet` draws it with matplotlib (Agg).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["choose_views", "contact_mosaic", "save_contact_sheet"]


def choose_views(meta: pd.DataFrame, columns: int) -> list[tuple[int, int, int]]:
    """``columns`` (azimuth°, elevation°, lighting) triples spread over the grid in ``meta``.

    Azimuths are spaced evenly over those available; elevations and lightings sweep from their
    lowest to their highest value across the columns, so one sheet shows all three factors.
    """
    azimuths = np.sort(meta["azimuth"].unique())
    elevations = np.sort(meta["elevation"].unique())
    lightings = np.sort(meta["lighting"].unique())

    def spread(values: np.ndarray, i: int) -> int:
        return int(values[round(i * (len(values) - 1) / max(1, columns - 1))])

    return [(spread(azimuths, i), spread(elevations, i), spread(lightings, i)) for i in range(columns)]


def contact_mosaic(
    images: np.ndarray, meta: pd.DataFrame, views: list[tuple[int, int, int]], camera: int = 0, gap: int = 2
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tile images (N, C, H, W) uint8 with table ``meta`` (label, instance, azimuth, elevation, lighting).

    Returns the mosaic (rows * (H + gap), len(views) * (W + gap)) uint8 -- one row per
    (label, instance) present, one column per view, ``camera`` of each stereo pair, white where a
    view is missing -- and the row keys [(label, instance), ...].
    """
    _, _, h, w = images.shape
    index = {tuple(k): i for i, k in enumerate(meta[["label", "instance", "azimuth", "elevation", "lighting"]]
                                               .itertuples(index=False, name=None))}
    keys = sorted({(int(a), int(b)) for a, b in meta[["label", "instance"]].itertuples(index=False, name=None)})
    mosaic = np.full((len(keys) * (h + gap), len(views) * (w + gap)), 255, dtype=np.uint8)
    for r, (label, instance) in enumerate(keys):
        for c, (az, el, light) in enumerate(views):
            i = index.get((label, instance, az, el, light))
            if i is not None:
                mosaic[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[i, camera]
    return mosaic, keys


def save_contact_sheet(
    data_dir: str | os.PathLike[str] | None, out: str | os.PathLike[str], *, columns: int = 8,
    class_names: tuple[str, ...] = ("animal", "human", "airplane", "truck", "car"),
) -> Path:
    """Write a PNG contact sheet of both splits of the dataset in ``data_dir`` (None = default synthnorb)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from capsrobust.data.smallnorb import load_split

    splits = [load_split(data_dir, split, "stereo") for split in ("training", "testing")]
    meta = pd.concat([s.meta for s in splits], ignore_index=True)
    images = np.concatenate([np.asarray(s.images) for s in splits])
    views = choose_views(meta, columns)
    mosaic, keys = contact_mosaic(images, meta, views)
    h = images.shape[2] + 2
    train_instances = set(splits[0].meta["instance"].unique())
    dpi = 100
    fig_w, fig_h = mosaic.shape[1] / dpi + 1.6, mosaic.shape[0] / dpi + 0.9
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=dpi)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([r * h + h / 2 for r in range(len(keys))])
    ax.set_yticklabels([f"{class_names[label] if label < len(class_names) else label} {instance} "
                        f"({'train' if instance in train_instances else 'test'})" for label, instance in keys],
                       fontsize=8)
    w = images.shape[3] + 2
    ax.set_xticks([c * w + w / 2 for c in range(len(views))])
    ax.set_xticklabels([f"az {az}°\nel {el}°\nlight {li}" for az, el, li in views], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_title(f"{splits[0].dataset} ({splits[0].source_dir.name}): rows = class x instance, "
                 f"columns = azimuth / elevation / lighting (left camera)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
