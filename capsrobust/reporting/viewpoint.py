"""Report files of the viewpoint experiment: Table 2 (ours beside the paper's, in separate tables),
error against angular distance (table and plot), per-seed rows and provenance.

Input: a :class:`~capsrobust.experiments.viewpoint.ViewpointResult`. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from capsrobust.data.splits import SPLITS
from capsrobust.evaluation.viewpoint import (BIN_WIDTH, PAPER, VALIDATION, distance_summary, paper_table2,
                                             table2_summary)
from capsrobust.reference import SOURCE

if TYPE_CHECKING:
    from capsrobust.experiments.viewpoint import ViewpointResult

__all__ = ["PAPER_TABLE2_HEADING", "distance_markdown", "distance_shown", "paper_table2_markdown",
           "paper_table2_shown", "pct", "plot_error_vs_distance", "table2_csv", "table2_markdown", "table2_shown",
           "write_report"]


def plot_error_vs_distance(distance: pd.DataFrame, path: str | os.PathLike[str], *, title: str,
                           axis: str) -> Path:
    """Test error (%) against angular distance to the nearest familiar view, one line per model
    (the capsule net once per matching protocol), extrapolation views as hollow markers.

    ``distance``: :func:`viewpoint_experiment`'s per-seed distance table. Writes a PNG atomically.
    """
    from capsrobust.plots import pyplot, save_figure

    plt = pyplot()
    summary = distance_summary(distance)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for index, (series, rows) in enumerate(summary.groupby("series", sort=False)):
        colour, style = f"C{index}", "--" if PAPER in series else "-"
        for views, marker_face, line in (("test", colour, style), ("extrapolation", "none", ":")):
            part = rows[rows["views"] == views].sort_values("mean_distance")
            if part.empty:
                continue
            label = series if views == "test" else f"{series}, extrapolation views"
            ax.errorbar(part["mean_distance"], 100 * part["error_mean"], yerr=100 * part["error_std"].fillna(0),
                        color=colour, linestyle=line, marker="o", markerfacecolor=marker_face, capsize=3, label=label)
    ax.set(xlabel=f"angular distance to the nearest familiar {axis} (degrees)", ylabel="test error (%)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Report files


def pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{100 * mean:.2f}" + ("" if math.isnan(std) else f" ± {100 * std:.2f}")


def _one_decimal(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def _extrapolation_note(info: dict[str, Any]) -> str:
    def degrees(values: Sequence[int]) -> str:
        return ", ".join(f"{v}°" for v in values)

    return (f"Extrapolation: synthnorb test toys (instances 0, 1, 2, 3, 5) at views outside smallNORB's grid -- "
            f"azimuths {degrees(info['azimuths_deg'])}; elevations {degrees(info['elevations_deg'])}; "
            f"lightings {', '.join(map(str, info['lightings']))} "
            f"(render seed {info['seed']}, the training data's).\n\n")


def table2_shown(per_seed: pd.DataFrame, capsule_model: str) -> pd.DataFrame:
    """Our Table 2 as shown: protocol, test views, each model's error % (mean ± std over seeds),
    the relative reduction and how many seeds matched. ``per_seed``: the experiment's per-seed rows."""
    summary = table2_summary(per_seed)
    return pd.DataFrame({
        "protocol": summary["protocol"], "test views": summary["views"],
        "cnn error %": [pct(m, s) for m, s in zip(summary["cnn_error_mean"], summary["cnn_error_std"])],
        f"{capsule_model} error %": [pct(m, s) for m, s in zip(summary["capsules_error_mean"],
                                                                summary["capsules_error_std"])],
        "relative reduction % (1 − caps/cnn)": [_one_decimal(100 * r) for r in summary["relative_reduction"]],
        "capsules matched": summary["capsules_matched"],
    })


#: The heading every table of the paper's Table 2 numbers sits under.
PAPER_TABLE2_HEADING = "Paper (smallNORB) — Hinton, Sabour & Frosst 2018, Table 2; reference only, not this dataset"


def paper_table2_shown(split: str) -> pd.DataFrame:
    """The paper's Table 2 rows for ``split`` as shown (smallNORB; errors in %)."""
    paper = paper_table2(split)
    return pd.DataFrame({
        "test views": paper["views"], "CNN error %": [_one_decimal(100 * e) for e in paper["cnn_error"]],
        "capsules error %": [_one_decimal(100 * e) for e in paper["capsules_error"]],
        "relative reduction % (1 − caps/cnn)": [_one_decimal(100 * (1 - c / n))
                                                for c, n in zip(paper["capsules_error"], paper["cnn_error"])],
    })


def paper_table2_markdown(split: str) -> str:
    """The paper's Table 2 rows for ``split`` as a markdown section, labelled smallNORB, with the source."""
    from capsrobust.reporting import to_markdown

    return (f"## {PAPER_TABLE2_HEADING}\n\n{to_markdown(paper_table2_shown(split), float_digits=1)}\n\n"
            f"Source: {SOURCE}, Table 2.\n")


def table2_markdown(result: "ViewpointResult") -> str:
    """Table 2 for ``result`` (errors in %), then the paper's smallNORB numbers in a separate, labelled table."""
    from capsrobust.reporting import to_markdown

    shown = table2_shown(result.per_seed, result.capsule_model)
    split = SPLITS[result.split]
    n = len(result.seeds)
    return (
        f"# Viewpoint generalisation, {result.split} split — {result.dataset}\n\n"
        f"Split: {split.description}. Test error (%) at matched familiar error, mean ± std over "
        f"{n} seed{'s' if n != 1 else ''} ({', '.join(map(str, result.seeds))}); budget {result.budget.name}. "
        f"cnn: best.pt (lowest validation error). {result.capsule_model}: the first checkpoint whose familiar error is "
        f"<= the CNN's, chosen on the held-out validation toys (protocol `{VALIDATION}`) or on the familiar test set "
        f"as the paper did (protocol `{PAPER}`); when none reaches it, the lowest (counted as not matched).\n\n"
        f"## This run: {result.dataset}\n\n{to_markdown(shown, float_digits=1)}\n\n"
        + (_extrapolation_note(result.extrapolation) if result.extrapolation else "")
        + paper_table2_markdown(result.split)
    )


def table2_csv(result: "ViewpointResult") -> pd.DataFrame:
    """:func:`table2_summary` with dataset columns and the paper's smallNORB numbers in labelled columns."""
    summary = table2_summary(result.per_seed)
    paper = paper_table2(result.split).rename(columns={"cnn_error": "paper_smallNORB_cnn_error",
                                                       "capsules_error": "paper_smallNORB_capsules_error"})
    table = summary.merge(paper, on="views", how="left")
    for position, (name, value) in enumerate((("dataset", result.dataset_name), ("mode", result.mode),
                                              ("split", result.split))):
        table.insert(position, name, value)
    return table


def distance_shown(result: "ViewpointResult") -> pd.DataFrame:
    """Error (%) per distance bin as shown: views, distance (deg), images, one column per model (the
    capsule net once per matching protocol), mean ± std over seeds."""
    summary = distance_summary(result.distance)
    summary["distance (deg)"] = [f"{int(a)}-{int(b)}" for a, b in zip(summary["distance_from"], summary["distance_to"])]
    summary["cell"] = [pct(m, s) for m, s in zip(summary["error_mean"], summary["error_std"])]
    wide = summary.pivot_table(index=["views", "distance (deg)", "distance_from"], columns="series", values="cell",
                               aggfunc="first", sort=False).reset_index()
    counts = summary.groupby(["views", "distance_from"], sort=False)["n"].max()
    wide.insert(2, "images", [int(counts[(v, d)]) for v, d in zip(wide["views"], wide["distance_from"])])
    wide = wide.drop(columns="distance_from")
    wide.columns.name = None
    return wide


def distance_markdown(result: "ViewpointResult") -> str:
    """Error (%) per distance bin, one column per model (and matching protocol), mean over seeds."""
    from capsrobust.reporting import to_markdown

    wide = distance_shown(result)
    axis = result.split
    return (f"# Test error vs angular distance to the nearest familiar {axis} — {result.dataset}\n\n"
            f"Bins of {BIN_WIDTH[axis]}°; error % as mean ± std over seeds; images per seed and bin. "
            "views `test`: the dataset's test set; `extrapolation`: views outside smallNORB's grid.\n\n"
            f"{to_markdown(wide)}\n")


def write_report(result: "ViewpointResult", out_dir: str | os.PathLike[str], *,
                 command: str | None = None) -> list[Path]:
    """Write table2.md/.csv, per_seed.csv, distance.csv/.md, error_vs_distance.png and provenance.json
    into ``out_dir`` (each atomically); returns their paths.

    ``command``: the command line to record (the CLI passes every option spelled out); the process's
    own argv is kept beside it as ``argv``.
    """
    from capsrobust.provenance import provenance
    from capsrobust.reporting import atomic_write_text, write_csv, write_json

    out = Path(out_dir)
    labels = {"dataset": result.dataset_name, "mode": result.mode, "split": result.split}
    per_seed = result.per_seed.copy()
    distance = result.distance.copy()
    for position, (name, value) in enumerate(labels.items()):
        per_seed.insert(position, name, value)
        distance.insert(position, name, value)
    paths = [
        atomic_write_text(out / "table2.md", table2_markdown(result)),
        write_csv(table2_csv(result), out / "table2.csv"),
        write_csv(per_seed, out / "per_seed.csv"),
        write_csv(distance, out / "distance.csv"),
        atomic_write_text(out / "distance.md", distance_markdown(result)),
        plot_error_vs_distance(result.distance, out / "error_vs_distance.png", axis=result.split,
                               title=f"Test error vs {result.split} distance — {result.dataset}, "
                                     f"{len(result.seeds)} seed{'s' if len(result.seeds) != 1 else ''}"),
    ]
    record = provenance(
        experiment="viewpoint-split", split=result.split, dataset=result.dataset_name, mode=result.mode,
        dataset_checksum=result.dataset_checksum, seeds=result.seeds, capsule_model=result.capsule_model,
        budget=dataclasses.asdict(result.budget), runs=result.runs, checkpoints=result.checkpoints,
        extrapolation=result.extrapolation, seconds=round(result.seconds, 1),
    )
    if command is not None:
        record["argv"], record["command"] = record["command"], command
    paths.append(write_json(out / "provenance.json", record))
    return paths

