"""Figures of robustness sweeps in the style of the paper's Fig. 3 (Hinton et al., ICLR 2018, §6), and
learning curves of training runs (from :mod:`capsrobust.evaluation.learning_curves` tables).

matplotlib is imported lazily with the Agg backend (no display needed), and every figure is
rendered in memory and written atomically, like the tables. Input: the tidy table of
:func:`capsrobust.evaluation.robustness.robustness_sweep`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from capsrobust.files import atomic_write_bytes

__all__ = ["plot_accuracy_vs_eps", "plot_learning_curves", "plot_targeted_success", "plot_time_to_error"]

#: One colour per model (capsule nets warm, CNN cool), one line style per attack.
_MODEL_COLOURS = {"capsules": "tab:red", "capsules-small": "tab:orange", "cnn": "tab:blue"}
_ATTACK_STYLES = {"fgsm": "-", "bim": "--", "pgd": "-.", "apgd": (0, (5, 1)), "autoattack": (0, (3, 1, 1, 1, 1, 1)),
                  "square": (0, (1, 1)), "transfer": (0, (5, 2, 1, 2)), "vote": (0, (8, 2)), "worst-case": ":"}
_MARKERS = {"fgsm": "o", "bim": "s", "pgd": "^", "apgd": "v", "autoattack": "D", "square": "x", "transfer": "+",
            "vote": "P", "worst-case": None}


def _family(attack: str) -> str:
    """The attack's name without its steps and restarts: ``pgd:50x5`` -> ``pgd``."""
    return attack.split(":", 1)[0]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _mean_image_std(table: pd.DataFrame) -> float | None:
    """eps / eps_std, the mean per-image std the sweep converted with (None when every eps is 0)."""
    if "mean_image_std" in table.attrs:
        return float(table.attrs["mean_image_std"])
    positive = table[table.eps > 0]
    return float((positive.eps / positive.eps_std).iloc[0]) if len(positive) else None


def plain_tick_labels(axis: Any) -> None:
    """Major ticks of a log/symlog ``axis`` as plain numbers ("0.01", "20"), not "10^-2" or "2 x 10^1"."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _eps_scale(ax: Any, eps: pd.Series) -> float | None:
    """Symmetric-log eps axis (linear below the smallest non-zero eps) when the sweep spans more than a
    decade, so the small-eps region where accuracy falls is not squeezed into the left edge.
    Returns the linear threshold, or None for a linear axis."""
    positive = eps[eps > 0]
    if not len(positive) or positive.max() / positive.min() <= 10:
        ax.set_xlim(left=0.0, right=float(eps.max()) * 1.05 if len(eps) else None)
        return None
    threshold = float(positive.min())
    ax.set_xscale("symlog", linthresh=threshold, linscale=0.5)
    ax.set_xlim(left=0.0, right=float(eps.max()) * 1.1)
    plain_tick_labels(ax.xaxis)
    return threshold


def _std_axis(ax: Any, mean_std: float | None, threshold: float | None = None) -> None:
    """Secondary x axis on top: the same eps in per-image-standardised units (the paper's units);
    ``threshold``: the bottom axis is symlog with this linear threshold."""
    if mean_std:
        top = ax.secondary_xaxis("top", functions=(lambda e: e / mean_std, lambda s: s * mean_std))
        if threshold is not None:
            top.set_xscale("symlog", linthresh=threshold / mean_std, linscale=0.5)
            plain_tick_labels(top.xaxis)
        top.set_xlabel(f"ε in standardised units (ε / mean image std, std = {mean_std:.3f})")


def _lines(ax: Any, rows: pd.DataFrame, value: str, scale: float = 1.0, offset: float = 0.0) -> None:
    for (model, attack), group in rows.groupby(["model", "attack"], sort=False):
        group = group.sort_values("eps")
        ax.plot(group.eps, offset + scale * group[value], label=f"{model} · {attack}",
                color=_MODEL_COLOURS.get(model, "tab:gray"), linestyle=_ATTACK_STYLES.get(_family(attack), "-"),
                marker=_MARKERS.get(_family(attack)), markersize=4, linewidth=1.6 if attack != "worst-case" else 2.2)


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG in memory, close it and write ``path`` atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy_vs_eps(table: pd.DataFrame, path: str | os.PathLike[str], *, dataset: str | None = None,
                         n_classes: int = 5) -> Path:
    """Untargeted accuracy (1 − adversarial error) vs ε, one line per (model, attack), both models on one figure.

    x: ε in pixel units (images in [0, 1]); top axis: the same ε in standardised units. A dotted
    line marks chance (1 / n_classes). Returns ``path``.
    """
    rows = table[table["mode"] == "untargeted"]
    if rows.empty:
        raise ValueError("no untargeted rows to plot")
    dataset = dataset or str(rows.dataset.iloc[0])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    _lines(ax, rows, "adversarial_error", scale=-1.0, offset=1.0)
    ax.axhline(1.0 / n_classes, color="gray", linewidth=0.8, linestyle=":", label=f"chance ({1 / n_classes:.0%})")
    ax.set_xlabel("ε (L∞ radius, pixel units of images in [0, 1])")
    ax.set_ylabel("accuracy under attack (1 − adversarial error)")
    ax.set_ylim(-0.02, 1.02)
    threshold = _eps_scale(ax, rows.eps)
    ax.grid(alpha=0.3)
    _std_axis(ax, _mean_image_std(table), threshold)
    n = int(rows.n.iloc[0])
    ax.set_title(f"Untargeted attacks on {dataset}: accuracy vs ε (n = {n} test images)")
    ax.legend(fontsize=8, ncol=2, loc="best")
    return save_figure(fig, path)


def plot_targeted_success(table: pd.DataFrame, path: str | os.PathLike[str], *, dataset: str | None = None) -> Path:
    """Targeted success vs ε, averaged over the 4 wrong target classes (not the paper's 5), one line per
    (model, attack). Returns ``path``."""
    rows = table[table["mode"] == "targeted"]
    if rows.empty:
        raise ValueError("no targeted rows to plot")
    dataset = dataset or str(rows.dataset.iloc[0])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    _lines(ax, rows, "attack_success_rate")
    ax.set_xlabel("ε (L∞ radius, pixel units of images in [0, 1])")
    ax.set_ylabel("targeted success rate\n(4 wrong classes; the paper averages all 5)")
    ax.set_ylim(-0.02, 1.02)
    threshold = _eps_scale(ax, rows.eps)
    ax.grid(alpha=0.3)
    _std_axis(ax, _mean_image_std(table), threshold)
    n = int(rows.n.iloc[0])
    ax.set_title(f"Targeted attacks on {dataset}: success vs ε (n = {n} test images)")
    ax.legend(fontsize=8, ncol=2, loc="best")
    return save_figure(fig, path)


def plot_probe_curves(curves: pd.DataFrame, path: str | os.PathLike[str], *, x: str, y: str, xlabel: str,
                      ylabel: str, title: str, target: float | None = None) -> Path:
    """One line per variant of a learning probe (``curves``: variant, ``x``, ``y`` columns), optional target line.

    Several rows per (variant, step) -- seeds -- are drawn as their mean with a min-max band. Past
    ten variants the line style changes too, so no two lines look alike; the legend sits outside.
    """
    import textwrap

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.8))
    styles = ["-", "--", ":", "-."]
    for index, (label, rows) in enumerate(curves.groupby("variant", sort=False)):
        look = dict(color=f"C{index % 10}", linestyle=styles[(index // 10) % len(styles)], marker=".", label=label)
        if rows.groupby("step").size().max() > 1:
            stats = rows.groupby("step")[[x, y]].agg(["mean", "min", "max"])
            ax.plot(stats[(x, "mean")], stats[(y, "mean")], **look)
            ax.fill_between(stats[(x, "mean")], stats[(y, "min")], stats[(y, "max")], alpha=0.2, color=look["color"])
        else:
            ax.plot(rows[x], rows[y], **look)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_time_to_error(metrics: pd.DataFrame, path: str | os.PathLike[str], *, title: str) -> Path:
    """Validation error (log) against training wall time (minutes, evaluations excluded), one line per run
    (a run trained without a validation set shows its training error, dotted).

    ``metrics``: :func:`~capsrobust.evaluation.learning_curves.load_metrics` tables with a ``train_seconds`` column
    (:func:`~capsrobust.evaluation.learning_curves.training_seconds`).
    """
    from matplotlib.ticker import LogLocator, NullFormatter

    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    untested = False
    for run, rows in metrics.groupby("run", sort=False):
        if "validation_error" not in rows or rows["validation_error"].isna().all():
            untested = True
            ax.plot(rows["train_seconds"] / 60, 100 * rows["train_error"], linestyle=":", marker=".",
                    label=f"{run} (training error: no validation set)")
            continue
        ax.plot(rows["train_seconds"] / 60, 100 * rows["validation_error"], marker=".", label=run)
    ax.set(xlabel="training wall time (minutes; evaluations excluded)", yscale="log",
           ylabel="validation error (%)" + ("; dotted: training error" if untested else ""))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    plain_tick_labels(ax.yaxis)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_learning_curves(metrics: pd.DataFrame, path: str | os.PathLike[str], *, title: str) -> Path:
    """Train loss (left) and train/validation error (right) against epoch, one colour per run.

    ``metrics``: :func:`~capsrobust.evaluation.learning_curves.load_metrics` tables concatenated. Writes a PNG atomically; returns its path.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, NullFormatter

    runs = list(dict.fromkeys(metrics["run"]))
    below = len(runs) > 3  # many runs: one colour legend under both panels instead of over the curves
    fig, (loss_ax, error_ax) = pyplot().subplots(1, 2, figsize=(11, 4.2 + (0.25 * ((len(runs) + 2) // 3) if below else 0)))
    styles = {"train": ":"}
    for index, (run, rows) in enumerate(metrics.groupby("run", sort=False)):
        colour = f"C{index}"
        loss_ax.plot(rows["epoch"], rows["train_loss"], color=colour, label=run)
        error_ax.plot(rows["epoch"], 100 * rows["train_error"], color=colour, linestyle=":")
        for column, style, name in (("validation_error", "-", "validation"),
                                    ("validation_novel_error", "--", "validation (novel views)")):
            if column in rows and rows[column].notna().any():
                error_ax.plot(rows["epoch"], 100 * rows[column], color=colour, linestyle=style, marker=".")
                styles[name] = style
    loss_ax.set(xlabel="epoch", ylabel="training loss (spread for capsules, CE for cnn)", yscale="log")
    error_ax.set(xlabel="epoch", ylabel="error (%)", yscale="log")
    for ax in (loss_ax, error_ax):
        # Plain numbers at 1-2-5 steps on the log axes ("0.2", "5", "10", "20", "50").
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        plain_tick_labels(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
    # Colour = run (left panel, or under both); line style = which error (right panel).
    error_ax.legend([Line2D([], [], color="0.3", linestyle=style) for style in styles.values()], list(styles),
                    fontsize=7)
    fig.suptitle(title)
    if below:
        handles, labels = loss_ax.get_legend_handles_labels()
        fig.tight_layout(rect=(0, 0.02 + 0.04 * ((len(runs) + 2) // 3), 1, 1))
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    else:
        loss_ax.legend(fontsize=7)
        fig.tight_layout()
    return save_figure(fig, path)
