"""Report files of the viewpoint experiment: Table 2 (ours beside the paper's, in separate tables),
the matched pairs (both familiar errors and their gap), the novel-error differences with their
intervals, novel against familiar error over every kept checkpoint (plot), error against angular
distance (table and plot), per-seed rows and provenance.

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
from capsrobust.evaluation.intervals import DETECTABLE_SE
from capsrobust.evaluation.viewpoint import (BIN_WIDTH, BOOTSTRAP_DRAWS, CI_LEVEL, MATCH_TOLERANCE, PAPER, SMOOTHING,
                                             VALIDATION, distance_summary, pair_table, paper_table2, table2_summary)
from capsrobust.models import is_capsule_model
from capsrobust.reference import SOURCE

if TYPE_CHECKING:
    from capsrobust.experiments.viewpoint import ViewpointResult

__all__ = ["DISTANCE_IMAGES_NOTE", "PAPER_TABLE2_HEADING", "differences_shown", "distance_markdown", "distance_shown",
           "matching_note", "pairs_shown", "paper_table2_markdown", "paper_table2_shown", "pct",
           "plot_error_vs_distance", "plot_novel_vs_familiar", "table2_csv", "table2_markdown", "table2_shown",
           "write_report"]


def plot_error_vs_distance(distance: pd.DataFrame, path: str | os.PathLike[str], *, title: str,
                           axis: str) -> Path:
    """Test error (%) against angular distance to the nearest familiar view, one line per model
    (the capsule net once per matching protocol), extrapolation views as hollow markers.

    ``distance``: :func:`viewpoint_experiment`'s per-seed distance table. Writes a PNG atomically.
    """
    from capsrobust.reporting.plots import pyplot, save_figure

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


def plot_novel_vs_familiar(trajectory: pd.DataFrame, per_seed: pd.DataFrame, differences: pd.DataFrame,
                           path: str | os.PathLike[str], *, title: str) -> Path:
    """Novel against familiar test error (%) over every kept checkpoint of both models: one line per
    model and seed in training order, the checkpoints matched under the ``validation`` protocol
    ringed, the common familiar levels of ``differences`` as dotted verticals. Writes a PNG atomically.

    ``trajectory``, ``per_seed``, ``differences``: the experiment's tables.
    """
    from capsrobust.reporting.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    markers = "os^Dvx"
    for (model, seed), rows in trajectory.groupby(["model", "seed"], sort=True):
        colour = "tab:orange" if is_capsule_model(model) else "tab:blue"
        rows = rows.sort_values("step")
        ax.plot(100 * rows["familiar_error"], 100 * rows["novel_error"], color=colour, alpha=0.6, linewidth=1,
                marker=markers[int(seed) % len(markers)], markersize=3, label=f"{model}, seed {seed}")
        picked = per_seed[(per_seed["model"] == model) & (per_seed["seed"] == seed)
                          & (per_seed["protocol"] == VALIDATION)]
        chosen = rows[rows["step"].isin(picked["step"])]
        ax.scatter(100 * chosen["familiar_error"], 100 * chosen["novel_error"], s=120, facecolors="none",
                   edgecolors=colour, linewidths=2, zorder=3)
    levels = differences[differences["comparison"] == "curve"]["familiar_level"]
    for level in levels:
        ax.axvline(100 * level, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="familiar-view test error (%)", ylabel="novel-view test error (%)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, title=f"rings: matched ({VALIDATION}); dotted: compared levels", title_fontsize=7)
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
    the relative reduction and in how many seeds the pair is matched within 1 point.
    ``per_seed``: the experiment's per-seed rows."""
    summary = table2_summary(per_seed)
    return pd.DataFrame({
        "protocol": summary["protocol"], "test views": summary["views"],
        "cnn error %": [pct(m, s) for m, s in zip(summary["cnn_error_mean"], summary["cnn_error_std"])],
        f"{capsule_model} error %": [pct(m, s) for m, s in zip(summary["capsules_error_mean"],
                                                                summary["capsules_error_std"])],
        "relative reduction % (1 − caps/cnn)": [_one_decimal(100 * r) for r in summary["relative_reduction"]],
        f"pairs within {100 * MATCH_TOLERANCE:g} point": summary["pairs_matched"],
    })


def pairs_shown(per_seed: pd.DataFrame, capsule_model: str) -> pd.DataFrame:
    """The matched pairs as shown, one row per protocol and seed: who set the target, both
    checkpoints' familiar errors on the matching set and their gap (flagged beyond 1 point), and
    both models' familiar and novel test errors on the reporting set (%)."""
    pairs = pair_table(per_seed)

    def points(value: float) -> str:
        return f"{100 * value:+.1f}"

    return pd.DataFrame({
        "protocol": pairs["protocol"], "seed": pairs["seed"],
        "target set by (weaker)": pairs["weaker"], "target %": [f"{100 * t:.2f}" for t in pairs["target"]],
        f"{capsule_model} step": pairs["capsules_step"], "cnn step": pairs["cnn_step"],
        f"{capsule_model} matching %": [f"{100 * e:.2f}" for e in pairs["capsules_matching_error"]],
        "cnn matching %": [f"{100 * e:.2f}" for e in pairs["cnn_matching_error"]],
        "gap (points)": [points(g) for g in pairs["gap"]],
        "matched": ["yes" if m else f"no: more than {100 * MATCH_TOLERANCE:g} point apart" for m in pairs["matched"]],
        f"{capsule_model} familiar / novel %": [f"{100 * f:.2f} / {100 * n:.2f}" for f, n in
                                               zip(pairs["capsules_familiar_error"], pairs["capsules_novel_error"])],
        "cnn familiar / novel %": [f"{100 * f:.2f} / {100 * n:.2f}" for f, n in
                                   zip(pairs["cnn_familiar_error"], pairs["cnn_novel_error"])],
    })


def _verdict_text(better: str, capsule_model: str) -> str:
    return {"capsules": f"{capsule_model} lower", "cnn": "cnn lower", "neither": "no difference detectable"}[better]


def differences_shown(differences: pd.DataFrame, capsule_model: str) -> pd.DataFrame:
    """The novel-error differences as shown (points): at each protocol's matched pair and at the
    common familiar levels of the curves, with the interval, the smallest detectable difference
    and the verdict."""
    return pd.DataFrame({
        "compared at": [f"matched pair ({p})" if c == "matched" else f"familiar error {100 * f:.1f} %"
                        for c, p, f in zip(differences["comparison"], differences["protocol"],
                                           differences["familiar_level"])],
        f"{capsule_model} novel %": [f"{100 * e:.2f}" for e in differences["capsules_novel_error"]],
        "cnn novel %": [f"{100 * e:.2f}" for e in differences["cnn_novel_error"]],
        "difference (points)": [f"{100 * d:+.1f}" for d in differences["difference"]],
        f"{100 * CI_LEVEL:g} % interval": [f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
                                          for lo, hi in zip(differences["ci_low"], differences["ci_high"])],
        "smallest detectable (points)": [_one_decimal(100 * d) for d in differences["detectable"]],
        "verdict": [_verdict_text(b, capsule_model) for b in differences["better"]],
    })


def matching_note(capsule_model: str, lightings: dict[str, list[int]]) -> str:
    """How the pairs are matched and the intervals computed, in one paragraph; ``lightings``: the
    test-familiar protocol's halves (``{"match": [...], "report": [...]}``)."""
    match, report = (", ".join(map(str, lightings.get(k, []))) for k in ("match", "report"))
    return (f"Matching, per seed and both ways: each model's best familiar error is smoothed over {SMOOTHING} "
            "neighbouring evaluations; the weaker model (the higher smoothed best) sets the target -- that smoothed "
            "best, at its own checkpoint where the smoothed curve is lowest -- and the stronger model is taken at its "
            f"kept checkpoint whose familiar error is nearest the target. Pairs more than {100 * MATCH_TOLERANCE:g} "
            f"point apart are marked not matched. `{VALIDATION}`: familiar error on the held-out validation toys; "
            "errors reported on the whole test set. "
            f"`{PAPER}`: familiar error on the familiar test images of alternate lightings ({match}); familiar and "
            f"novel errors reported on the other lightings ({report}), so no reported image chose a checkpoint. "
            f"Differences are {capsule_model} − cnn novel error (negative: {capsule_model} lower), mean over seeds; "
            f"{100 * CI_LEVEL:g} % percentile intervals from {BOOTSTRAP_DRAWS} bootstrap resamples of the test toys "
            "(each class's 5 toys resampled with replacement within the class; the same resamples for both models, "
            "every seed and checkpoint). Along the curves, each model's novel error is interpolated at the familiar "
            "levels every trajectory covers (all test images). Smallest detectable difference: "
            f"{DETECTABLE_SE:.2f} bootstrap standard errors (95 % two-sided, 80 % power).")


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
    """Table 2 for ``result`` (errors in %), the matched pairs, the novel-error differences with their
    intervals, then the paper's smallNORB numbers in a separate, labelled table."""
    from capsrobust.reporting import to_markdown

    shown = table2_shown(result.per_seed, result.capsule_model)
    split = SPLITS[result.split]
    n = len(result.seeds)
    return (
        f"# Viewpoint generalisation, {result.split} split — {result.dataset}\n\n"
        f"Split: {split.description}. Test error (%) at matched familiar error, mean ± std over "
        f"{n} seed{'s' if n != 1 else ''} ({', '.join(map(str, result.seeds))}); budget {result.budget.name}. "
        f"Both models keep an evaluation-only checkpoint at every evaluation and are matched from them.\n\n"
        f"{matching_note(result.capsule_model, result.lightings)}\n\n"
        f"## This run: {result.dataset}\n\n{to_markdown(shown, float_digits=1)}\n\n"
        f"### Matched pairs\n\n{to_markdown(pairs_shown(result.per_seed, result.capsule_model))}\n\n"
        f"### Novel-error difference ({result.capsule_model} − cnn)\n\n"
        f"{to_markdown(differences_shown(result.differences, result.capsule_model))}\n\n"
        + (_extrapolation_note(result.extrapolation) if result.extrapolation else "")
        + paper_table2_markdown(result.split)
    )


def table2_csv(result: "ViewpointResult") -> pd.DataFrame:
    """:func:`table2_summary` with dataset columns and the paper's smallNORB numbers in labelled columns."""
    summary = table2_summary(result.per_seed)
    paper = paper_table2(result.split).rename(columns={"cnn_error": "paper_smallNORB_cnn_error",
                                                       "capsules_error": "paper_smallNORB_capsules_error"})
    table = summary.merge(paper, on="views", how="left")
    return _labelled(table, result)


def _labelled(table: pd.DataFrame, result: "ViewpointResult") -> pd.DataFrame:
    """``table`` with dataset, mode and split columns first."""
    table = table.copy()
    for position, (name, value) in enumerate((("dataset", result.dataset_name), ("mode", result.mode),
                                              ("split", result.split))):
        table.insert(position, name, value)
    return table


#: What the ``images`` column of :func:`distance_shown` counts.
DISTANCE_IMAGES_NOTE = (f"images per seed and bin as the `{VALIDATION}` columns score them; the `{PAPER}` columns "
                        "score only the reporting half of the lightings.")


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
            f"Bins of {BIN_WIDTH[axis]}°; error % as mean ± std over seeds; {DISTANCE_IMAGES_NOTE} "
            "views `test`: the dataset's test set; `extrapolation`: views outside smallNORB's grid.\n\n"
            f"{to_markdown(wide)}\n")


def write_report(result: "ViewpointResult", out_dir: str | os.PathLike[str], *,
                 command: str | None = None) -> list[Path]:
    """Write table2.md/.csv, per_seed.csv, pairs.csv, differences.csv, trajectory.csv, distance.csv/.md,
    novel_vs_familiar.png, error_vs_distance.png and provenance.json into ``out_dir`` (each
    atomically); returns their paths.

    ``command``: the command line to record (the CLI passes every option spelled out); the process's
    own argv is kept beside it as ``argv``.
    """
    from capsrobust.provenance import provenance
    from capsrobust.reporting import atomic_write_text, write_csv, write_json

    out = Path(out_dir)
    seeds = f"{len(result.seeds)} seed{'s' if len(result.seeds) != 1 else ''}"
    paths = [
        atomic_write_text(out / "table2.md", table2_markdown(result)),
        write_csv(table2_csv(result), out / "table2.csv"),
        write_csv(_labelled(result.per_seed, result), out / "per_seed.csv"),
        write_csv(_labelled(pair_table(result.per_seed), result), out / "pairs.csv"),
        write_csv(_labelled(result.differences, result), out / "differences.csv"),
        write_csv(_labelled(result.trajectory, result), out / "trajectory.csv"),
        write_csv(_labelled(result.distance, result), out / "distance.csv"),
        atomic_write_text(out / "distance.md", distance_markdown(result)),
        plot_novel_vs_familiar(result.trajectory, result.per_seed, result.differences, out / "novel_vs_familiar.png",
                               title=f"Novel vs familiar error, {result.split} split — {result.dataset}, {seeds}"),
        plot_error_vs_distance(result.distance, out / "error_vs_distance.png", axis=result.split,
                               title=f"Test error vs {result.split} distance — {result.dataset}, {seeds}"),
    ]
    record = provenance(
        experiment="viewpoint-split", split=result.split, dataset=result.dataset_name, mode=result.mode,
        dataset_checksum=result.dataset_checksum, seeds=result.seeds, capsule_model=result.capsule_model,
        budget=dataclasses.asdict(result.budget), runs=result.runs, checkpoints=result.checkpoints,
        lightings=result.lightings, extrapolation=result.extrapolation, seconds=round(result.seconds, 1),
    )
    if command is not None:
        record["argv"], record["command"] = record["command"], command
    paths.append(write_json(out / "provenance.json", record))
    return paths
