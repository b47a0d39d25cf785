"""Figures that look inside a capsule net: routing histograms, pose traversals, reconstructions.

Written like :mod:`capsrobust.reporting.plots` (Agg backend, rendered in memory, written atomically).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsrobust.reporting.plots import pyplot, save_figure

__all__ = ["plot_pose_traversal", "plot_reconstructions", "plot_routing_histograms"]


def plot_routing_histograms(records: list[dict[str, Tensor]], labels: Tensor, path: str | os.PathLike[str], *,
                            class_names: list[str] | None = None, title: str = "", bins: int = 40) -> Path:
    """One row per routing iteration, one column per class capsule: the histogram of vote-to-mean
    distances ||V_ij - mu_j|| weighted by R_ij a_i (normalised to sum 1 per panel and group), for
    images of that class (coloured) and images of other classes (grey).

    ``records``: the class layer's :meth:`RoutingRecorder.iterations` (L = 1); ``labels`` (N,).
    """
    plt = pyplot()
    iterations, classes = len(records), records[0]["weights"].shape[2]
    names = class_names or [f"class {j}" for j in range(classes)]
    top = max(float(torch.quantile(r["distances"].flatten()[:2_000_000], 0.99)) for r in records)
    edges = np.linspace(0.0, top, bins + 1)
    fig, axes = plt.subplots(iterations, classes, figsize=(2.3 * classes, 1.8 * iterations + 0.6),
                             sharex=True, squeeze=False)
    for t, record in enumerate(records):
        for j in range(classes):
            ax = axes[t, j]
            for mask, colour, label in ((labels != j, "0.6", "other classes"), (labels == j, f"C{j}", "this class")):
                if not mask.any():
                    continue
                w = record["weights"][mask, 0, j].flatten().numpy()
                d = record["distances"][mask, 0, j].flatten().numpy()
                if w.sum() <= 0:
                    continue
                ax.hist(d, bins=edges, weights=w / w.sum(), histtype="stepfilled" if colour != "0.6" else "step",
                        color=colour, alpha=0.55 if colour != "0.6" else 1.0, label=label)
                mean = float((w * d).sum() / w.sum())
                ax.axvline(mean, color=colour, linewidth=1.0, linestyle="--")
            if t == 0:
                ax.set_title(names[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(f"iteration {t + 1}\nweight share", fontsize=8)
            if t == iterations - 1:
                ax.set_xlabel("||vote - mean||", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6, loc="upper right")
    fig.suptitle(title or "class-capsule votes: distance to the capsule's mean, weighted by R_ij a_i", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _grey(image: Tensor) -> np.ndarray:
    """(C, 32, 32) -> the first channel (left camera) as a (32, 32) array."""
    return image[0].detach().cpu().numpy()


def plot_pose_traversal(traversal: Tensor, steps: tuple[float, ...], path: str | os.PathLike[str], *,
                        original: Tensor | None = None, title: str = "", effects: np.ndarray | None = None) -> Path:
    """Rows: pose entries 0-15 (entry (r, c) of the 4x4 pose); columns: the entry moved by ``steps``
    standard deviations. ``traversal`` (16, S, C, 32, 32); the left camera is shown. ``effects``
    (16,): a per-row number printed at the right (mean absolute change, grey levels)."""
    plt = pyplot()
    entries, count = traversal.shape[:2]
    extra = 1 if original is not None else 0
    fig, axes = plt.subplots(entries, count + extra, figsize=(0.75 * (count + extra) + 0.8, 0.75 * entries + 0.6),
                             squeeze=False)
    for d in range(entries):
        if original is not None:
            axes[d, 0].imshow(_grey(original), cmap="gray", vmin=0, vmax=1)
        for s in range(count):
            axes[d, s + extra].imshow(_grey(traversal[d, s]), cmap="gray", vmin=0, vmax=1)
        axes[d, 0].set_ylabel(f"p{d // 4}{d % 4}", fontsize=7, rotation=0, labelpad=12)
        if effects is not None:
            axes[d, -1].text(34, 16, f"{effects[d]:.1f}", fontsize=6, va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for s, step in enumerate(steps):
        axes[0, s + extra].set_title(f"{step:+g}σ", fontsize=7)
    if original is not None:
        axes[0, 0].set_title("input", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 0.975))
    return save_figure(fig, path)


def plot_reconstructions(images: Tensor, reconstructions: Tensor, path: str | os.PathLike[str], *,
                         class_means: Tensor | None = None, title: str = "") -> Path:
    """Rows: inputs, reconstructions (and the class-mean image, the baseline); left camera."""
    plt = pyplot()
    rows = 3 if class_means is not None else 2
    count = len(images)
    fig, axes = plt.subplots(rows, count, figsize=(0.9 * count + 0.8, 0.95 * rows + 0.4), squeeze=False)
    sets = [("input", images), ("decoded", reconstructions)] + ([("class mean", class_means)] if rows == 3 else [])
    for r, (name, batch) in enumerate(sets):
        for c in range(count):
            axes[r, c].imshow(_grey(batch[c]), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 0.93))
    return save_figure(fig, path)
