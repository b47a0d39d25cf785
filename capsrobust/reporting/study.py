"""The study report: ``REPORT.md`` and a self-contained ``report.html`` from a study's stage files.

The first lines answer the three questions -- adversarial attacks, novel azimuths, novel
elevations -- each with who is better, by how much, the spread over seeds and whether the sanity
checks support it (:func:`answers`). Then every table and figure, the paper's smallNORB numbers in
their own labelled tables (:mod:`capsrobust.reference`), and provenance.

Who is better, and whether the answer is supported, is decided in the experiments layer
(:func:`~capsrobust.experiments.attack_answer.attack_answer`,
:func:`~capsrobust.experiments.viewpoint_answer.viewpoint_answer`) and returned as data; this module
only renders it. Stage files are found through the study's
:class:`~capsrobust.experiments.study.store.StageStore`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from capsrobust.evaluation.robust_accuracy import EPS_STAR_ACCURACY
from capsrobust.evaluation.viewpoint import BIN_WIDTH, MATCH_TOLERANCE, VALIDATION
from capsrobust.reference import PAPER_FIG3, PAPER_TEST_ERROR, SOURCE
from capsrobust.reporting import atomic_write_text, write_json
from capsrobust.reporting.document import Document
from capsrobust.reporting.viewpoint import (DISTANCE_IMAGES_NOTE, PAPER_TABLE2_HEADING, differences_shown,
                                            distance_shown, matching_note, pairs_shown, paper_table2_shown, pct,
                                            plot_error_vs_distance, plot_novel_vs_familiar, table2_shown)

if TYPE_CHECKING:
    from capsrobust.experiments.attack_answer import AttackAnswer
    from capsrobust.experiments.study import StudyResult
    from capsrobust.experiments.viewpoint_answer import ViewpointAnswer

__all__ = ["HEADLINE_END", "HEADLINE_START", "Answer", "answers", "check_headline_markers", "copy_headline",
           "write_study_report"]

#: The markers around the study headline in a README (:func:`copy_headline` replaces what is between them).
HEADLINE_START = "<!-- study-headline:start -->"
HEADLINE_END = "<!-- study-headline:end -->"
SMOKE = ("Smoke run (--budget quick): tiny trainings and attacks to check that everything runs; "
         "the numbers are not for conclusions.")


@dataclass
class Answer:
    """One headline: which question, who is better (``capsules``, ``cnn`` or ``neither``), the line itself."""

    question: str
    better: str
    line: str
    supported: bool


def _who(better: str, capsule_model: str) -> str:
    return {"capsules": capsule_model, "cnn": "the CNN", "neither": "neither"}[better]


# ----------------------------------------------------------------------------------------------
# Reading the stage files


def _ci(interval: Any, scale: float = 100.0, unit: str = " %", digits: int = 1) -> str:
    """``45.0 % [40.1, 50.2]``: an estimate with its 95 % interval (fractions shown × ``scale``)."""
    def number(value: float) -> str:
        return "n/a" if math.isnan(value) else ("∞" if math.isinf(value) else f"{scale * value:.{digits}f}")
    return f"{number(interval.estimate)}{unit} [{number(interval.low)}, {number(interval.high)}]"


def _signed(difference: Any) -> str:
    """``+5.0 points [1.0, 9.0]``: a paired difference in points with its 95 % interval."""
    if math.isnan(difference.estimate):
        return "n/a"
    return f"{100 * difference.estimate:+.1f} points [{100 * difference.low:+.1f}, {100 * difference.high:+.1f}]"


def _headline_rows(comparison: Any, caps_model: str) -> pd.DataFrame:
    """The per-eps robust accuracy table of a :class:`~capsrobust.evaluation.robust_accuracy.RobustComparison`,
    shown: estimates with their 95 % intervals in %, the difference and the smallest detectable one in points."""
    rows = []
    for r in comparison.per_eps.itertuples(index=False):
        rows.append({"images": r.subset, "eps": f"{r.eps:g}", "eps_std": f"{r.eps_std:.3f}", "n": r.n,
                     f"{caps_model} %": f"{100 * r.first:.1f} [{100 * r.first_low:.1f}, {100 * r.first_high:.1f}]",
                     "cnn %": f"{100 * r.second:.1f} [{100 * r.second_low:.1f}, {100 * r.second_high:.1f}]",
                     "difference (points)": f"{100 * r.difference:+.1f} [{100 * r.difference_low:+.1f}, "
                                            f"{100 * r.difference_high:+.1f}]",
                     "detectable (points)": 100 * r.detectable, "verdict": r.verdict})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# The answers


def _eps_star_rule(comparison: Any) -> str:
    """Why the averaged range ends where it does."""
    if comparison.eps_star_reached:
        return f"up to where the CNN's robust accuracy first falls below {100 * EPS_STAR_ACCURACY:.0f} %"
    return (f"the largest eps below 0.5: the CNN's robust accuracy never falls below {100 * EPS_STAR_ACCURACY:.0f} % "
            "there")


def _attack_line(answer: "AttackAnswer", caps_model: str) -> Answer:
    """The attack headline: the measure, its eps range, both estimates with intervals, the verdict, the support."""
    question = "Adversarial attacks"
    if not answer.ran:
        return Answer(question, "neither", f"**{question}:** not run yet.", False)
    comparison = answer.comparison
    if comparison is None:
        return Answer(question, "neither", f"**{question}:** no per-image outcomes in the attack stages (run before "
                                           "they were kept); rerun the attack stages for an answer with intervals.",
                      False)
    eps_star = comparison.eps_star
    eps_std = comparison.per_eps.set_index("eps")["eps_std"].to_dict().get(eps_star, float("nan"))
    line = (f"**{question}** (untargeted robust accuracy: the share of the same {answer.n} test images per seed that "
            f"no attack broke, worst case per image over {', '.join(answer.attacks)}, images wrong on the clean input "
            f"counted as broken; averaged over eps 0-{eps_star:g} (eps_std 0-{eps_std:.2f}), "
            f"{_eps_star_rule(comparison)}; 95 % intervals from a paired bootstrap "
            f"over images, {comparison.seeds} seed(s) pooled): **{comparison.verdict.statement}**: {caps_model} "
            f"{_ci(comparison.area_first)} vs the CNN {_ci(comparison.area_second)}, difference "
            f"{_signed(comparison.area)}. Median minimal adversarial eps (smallest grid eps that breaks an image): "
            f"{_ci(comparison.median_eps_first, 1, '', 4)} vs {_ci(comparison.median_eps_second, 1, '', 4)}, "
            f"{comparison.median_verdict.statement}.")
    return Answer(question, answer.better, line + _attack_support(answer), answer.supported)


def _attack_support(answer: "AttackAnswer") -> str:
    """The sentence on whether matching and the sanity checks support the attack answer."""
    if answer.supported:
        return (" Sanity checks: **HOLDS** for both models in every seed and mode (warnings do not count; see "
                "'Sanity checks'); the pair is matched in every seed.")
    reasons = []
    if not all(answer.matched):
        reasons.append(f"the pair is clean-error-matched in {sum(answer.matched)}/{len(answer.matched)} seeds")
    if answer.suspect:
        why = ", ".join(answer.failed)
        reasons.append(f"sanity checks SUSPECT for {', '.join(answer.suspect)}" + (f", from {why}" if why else "")
                       + " (see 'Sanity checks')")
    return f" **Not supported as it stands:** {'; '.join(reasons)}."


def _viewpoint_line(answer: "ViewpointAnswer", caps_model: str) -> Answer:
    """The headline of one split: the novel-error difference of the `validation` protocol's matched pairs
    with its 95 % interval over test toys (or the smallest difference it could detect), the matched
    familiar errors and their gap, and whether every pair is within the matching tolerance."""
    question = f"Novel {answer.split}s"
    if answer.verdict is None:
        return Answer(question, "neither", f"**{question}:** not run yet.", False)
    verdict, pairs = answer.verdict, answer.pairs
    seeds = f"{len(pairs)} seed{'s' if len(pairs) != 1 else ''}"
    line = (f"**{question}** (novel-view test error at matched familiar error, protocol `{VALIDATION}`, mean over "
            f"{seeds}; 95 % interval from a bootstrap over the test toys): ")
    errors = (f"{caps_model} {100 * verdict.capsules_novel_error:.1f} % vs the CNN "
              f"{100 * verdict.cnn_novel_error:.1f} %, difference {100 * verdict.difference:+.1f} points "
              f"[{100 * verdict.ci_low:+.1f}, {100 * verdict.ci_high:+.1f}]")
    if answer.better == "neither":
        line += (f"**no difference detectable; the smallest detectable difference is {100 * verdict.detectable:.1f} "
                 f"points**: {errors}.")
    else:
        line += f"**{_who(answer.better, caps_model)} generalises better**: {errors}."
    line += " Matched familiar (validation) errors: " + "; ".join(
        f"seed {p.seed} {caps_model} {100 * p.capsules_matching_error:.1f} % vs the CNN "
        f"{100 * p.cnn_matching_error:.1f} % (gap {100 * p.gap:+.1f} points; target set by "
        f"{_who('capsules' if p.target_set_by == 'capsule' else 'cnn', caps_model)})"
        for p in pairs.itertuples()) + "."
    line += (f" Every pair within {100 * MATCH_TOLERANCE:g} point." if answer.supported else
             f" **Not supported as it stands:** {len(answer.apart)}/{len(pairs)} pair(s) more than "
             f"{100 * MATCH_TOLERANCE:g} point apart in familiar error (seed {', '.join(map(str, answer.apart))}), "
             "so their novel errors are not compared at equal familiar error.")
    return Answer(question, answer.better, line, answer.supported)


def answers(result: "StudyResult") -> list[Answer]:
    """The three headlines, in order: attacks, novel azimuths, novel elevations (decided in experiments)."""
    from capsrobust.experiments.attack_answer import attack_answer
    from capsrobust.experiments.study import SPLITS, load_viewpoint_result
    from capsrobust.experiments.viewpoint_answer import viewpoint_answer

    caps_model = result.budget.capsule_model
    return [_attack_line(attack_answer(result), caps_model),
            *(_viewpoint_line(viewpoint_answer(load_viewpoint_result(result.store, split), split), caps_model)
              for split in SPLITS)]


# ----------------------------------------------------------------------------------------------
# Sections


def _clean_section(doc: Document, result: "StudyResult") -> None:
    from capsrobust.experiments.study.store import train_stage

    rows = []
    for seed in result.seeds:
        record = result.stages.get(train_stage(seed))
        if not record:
            continue
        for model, entry in record["models"].items():
            rows.append({"seed": seed, "model": model, "run": entry["run"], "how": entry["action"],
                         "steps": entry["total_steps"], "best step": entry["step"],
                         "validation error %": 100 * entry["validation_error"],
                         "test error %": 100 * entry["test_error"], "test images": entry["test_images"]})
    if not rows:
        return
    table = pd.DataFrame(rows)
    doc.heading("Clean test error (full split)")
    summary = table.groupby("model", sort=False)["test error %"].agg(
        lambda v: pct(float(np.mean(v)) / 100, float(np.std(v, ddof=1)) / 100 if len(v) > 1 else float("nan")))
    doc.paragraph(f"Each model trained normally on the {result.dataset} training toys (`best.pt`: lowest validation "
                  "error, one held-out training toy per class); test error on the test toys, centre crop. Mean ± std "
                  "over seeds: " + "; ".join(f"{m} {v} %" for m, v in summary.items()) + ".")
    doc.table(table, 1)
    paper = pd.DataFrame({"model": list(PAPER_TEST_ERROR),
                          "test error %": [100 * e for e in PAPER_TEST_ERROR.values()]})
    doc.heading("Paper (smallNORB) — test error; reference only, not this dataset", 3)
    doc.table(paper, 1)
    doc.paragraph(f"Source: {SOURCE}, §5.")


def _attack_section(doc: Document, result: "StudyResult", figures: Path) -> None:
    """The matched pairs, the robust accuracy with intervals, each sweep with its sanity checks, the paper's Fig. 3."""
    from capsrobust.experiments.attack_answer import attack_tables

    doc.heading("Adversarial attacks")
    _matched_pairs_section(doc, result)
    _robust_accuracy_section(doc, result)
    for mode, value, label in (("untargeted", "adversarial_error", "Adversarial error"),
                               ("targeted", "attack_success_rate", "Targeted success (4 wrong classes)")):
        sweep, checks = attack_tables(result.store, result.seeds, result.stages, mode)
        if not sweep.empty:
            _sweep_section(doc, result, figures, mode, value, label, sweep)
            _sanity_checks_section(doc, mode, checks)
    doc.heading("Paper (smallNORB) — Fig. 3, untargeted white-box accuracy; reference only, not this dataset", 3)
    doc.table(pd.DataFrame([{"attack": attack, "eps (standardised units)": eps, "CNN accuracy %": 100 * cnn,
                             "capsules accuracy %": 100 * caps}
                            for (attack, eps), (cnn, caps) in PAPER_FIG3.items()]), 1)
    doc.paragraph(f"Source: {SOURCE}, Fig. 3 (values read off the plot, approximate). Compare with our accuracy "
                  "(100 − adversarial error) at the same eps_std, not eps.")


def _matched_pairs_section(doc: Document, result: "StudyResult") -> None:
    """The pair attacked in each seed: both checkpoints, their validation errors, matched or not."""
    from capsrobust.experiments.study.store import match_stage

    pairs = [result.stages[match_stage(s)] for s in result.seeds if match_stage(s) in result.stages]
    if not pairs:
        return
    unmatched = [p["seed"] for p in pairs if not p["matched"]]
    doc.paragraph("The pair attacked: the capsule net's `best.pt` and the CNN stopped when its validation error "
                  "first reached the capsule net's (`matched.pt` of the `cnn-matched` run), so both start from "
                  "the same clean error."
                  + (f" Not matched in seed {', '.join(map(str, unmatched))}: the CNN never got there (the capsule "
                     "net is the better model on clean data), and its `best.pt` is used." if unmatched else ""))
    doc.table(pd.DataFrame([{
        "seed": p["seed"], "capsule checkpoint": p["capsules"]["checkpoint"],
        "capsule validation error %": 100 * p["capsules"]["validation_error"],
        "cnn checkpoint": p["cnn"]["checkpoint"], "cnn validation error %": 100 * p["cnn"]["validation_error"],
        "matched": "yes" if p["matched"] else "no"} for p in pairs]), 1)


def _sweep_section(doc: Document, result: "StudyResult", figures: Path, mode: str, value: str, label: str,
                   sweep: pd.DataFrame) -> None:
    """One mode's sweep: ``value`` per attack and eps, mean ± std over seeds, and a figure per seed."""
    from capsrobust.reporting.plots import plot_accuracy_vs_eps, plot_targeted_success

    n = int(sweep["n"].iloc[0])
    doc.heading(f"{label} — {result.dataset}, mean ± std over seeds", 3)
    cells = sweep.groupby(["attack", "mode", "eps", "model"], sort=False)[value].agg(["mean", "std"]).reset_index()
    cells["cell"] = [pct(m, s) for m, s in zip(cells["mean"], cells["std"])]
    wide = cells.pivot_table(index=["attack", "eps"], columns="model", values="cell", aggfunc="first",
                             sort=False).reset_index()
    wide.columns.name = None
    eps_std = sweep.groupby("eps")["eps_std"].mean()
    wide.insert(2, "eps_std", [float(eps_std[e]) for e in wide["eps"]])
    doc.paragraph(f"{n} test images per seed, in %. eps: L∞ radius in pixel units of images in [0, 1]; eps_std: "
                  "the same in per-image-standardised units (the paper's). `worst-case`: an image counts as "
                  "broken if any attack broke it." + (" Targeted: every image towards each of its 4 wrong "
                                                      "classes (the paper averaged all 5)." if mode == "targeted"
                                                      else ""))
    doc.table(wide, 3)
    for seed in sorted(set(sweep["seed"])):
        own = sweep[sweep["seed"] == seed]
        path = figures / f"{mode}-seed{seed}.png"
        if mode == "untargeted":
            plot_accuracy_vs_eps(own, path, dataset=result.dataset)
        else:
            plot_targeted_success(own, path, dataset=result.dataset)
        doc.figure(path, f"{label} against eps, seed {seed} ({result.dataset})")


def _sanity_checks_section(doc: Document, mode: str, checks: pd.DataFrame) -> None:
    """One mode's sanity verdicts per model and seed, and every check with its figures."""
    verdicts = checks[checks["check"] == "verdict"]
    doc.heading(f"Sanity checks, {mode} (Carlini et al. 2019)", 3)
    doc.bullets([f"seed {r.seed}, **{r.model}: {r.status}** — {r.detail}"
                 for r in verdicts.itertuples(index=False)])
    doc.paragraph("Every check with its figures (`value`: the largest drop, change or gap it measured). A FAIL "
                  "makes the model's numbers SUSPECT; a WARN is shown and does not (FGSM's single step overshoots "
                  "at large eps, so its drop warns unless FGSM is the strongest attack there).")
    shown = checks[checks["check"] != "verdict"]
    doc.table(shown[["seed", "model", "mode", "check", "status", "value", "detail"]].reset_index(drop=True), 3)


def _robust_accuracy_section(doc: Document, result: "StudyResult") -> None:
    """The headline measures behind the attack answer: robust accuracy per eps with intervals, the average
    over [0, eps*] and the median minimal adversarial eps (each with its verdict)."""
    from capsrobust.experiments.attack_answer import attack_comparison

    comparison = attack_comparison(result)
    if comparison is None:
        return
    caps_model = result.budget.capsule_model
    doc.heading(f"Robust accuracy on the same images — {result.dataset}, 95 % intervals", 3)
    doc.paragraph(
        "Robust accuracy: the share of the attacked test images that no attack broke (worst case per image over "
        "every untargeted attack); `all`: every attacked image, wrong on the clean input counted as broken; `both "
        "correct`: the images both models classify correctly on the clean input. Intervals: percentile bootstrap "
        f"over images (2,000 resamples), each seed's images resampled on their own and the {comparison.seeds} "
        "seed(s) averaged; the difference is paired (the same images). A verdict names a model only where the "
        "difference's interval excludes 0; otherwise it gives the smallest difference this sample would detect "
        "(2.8 bootstrap standard errors: a two-sided 5 % test with 80 % power). `saturated`: both at 0 %, nothing to "
        "compare.")
    doc.table(_headline_rows(comparison, caps_model), 1)
    doc.bullets([
        f"robust accuracy averaged over eps 0-{comparison.eps_star:g} (trapezoid area / eps*, "
        f"{_eps_star_rule(comparison)}): {caps_model} "
        f"{_ci(comparison.area_first)}, the CNN {_ci(comparison.area_second)}, difference {_signed(comparison.area)}: "
        f"**{comparison.verdict.statement}**",
        f"median minimal adversarial eps: {caps_model} {_ci(comparison.median_eps_first, 1, '', 4)}, the CNN "
        f"{_ci(comparison.median_eps_second, 1, '', 4)}, difference {_ci(comparison.median_eps, 1, '', 4)}: "
        f"**{comparison.median_verdict.statement}**. Bracketed by the eps grid (the smallest grid eps at which the "
        "worst case broke the image; ∞: none did), not a bisection: the true minimal eps lies between that grid eps "
        "and the one below it.",
    ])


def _viewpoint_section(doc: Document, result: "StudyResult", figures: Path) -> None:
    from capsrobust.experiments.study import SPLITS, load_viewpoint_result

    doc.heading("Novel viewpoints (paper Table 2)")
    results = {split: load_viewpoint_result(result.store, split) for split in SPLITS}
    first = next((v for v in results.values() if v is not None), None)
    if first is None:
        return
    doc.paragraph("Both models trained on the familiar views only, each keeping an evaluation-only checkpoint at every "
                  "evaluation; every kept checkpoint scored on the test set. "
                  + matching_note(result.budget.capsule_model, first.lightings))
    for split, viewpoint in results.items():
        if viewpoint is None:
            continue
        doc.heading(f"{split.capitalize()} split — {viewpoint.dataset}", 3)
        doc.table(table2_shown(viewpoint.per_seed, viewpoint.capsule_model), 1)
        doc.paragraph("Matched pairs: the familiar errors on each protocol's matching set and their gap; familiar / "
                      "novel test errors on its reporting set.")
        doc.table(pairs_shown(viewpoint.per_seed, viewpoint.capsule_model))
        doc.paragraph(f"Novel-error difference ({viewpoint.capsule_model} − cnn, points), mean over seeds, with 95 % "
                      "intervals from a bootstrap over the test toys: at the matched pairs and along the curves at "
                      "familiar levels both models' trajectories cover.")
        doc.table(differences_shown(viewpoint.differences, viewpoint.capsule_model))
        path = plot_novel_vs_familiar(viewpoint.trajectory, viewpoint.per_seed, viewpoint.differences,
                                      figures / f"viewpoint-{split}-curve.png",
                                      title=f"Novel vs familiar error, {split} split — {viewpoint.dataset}")
        doc.figure(path, f"Novel against familiar test error over every kept checkpoint, {split} split "
                         f"({viewpoint.dataset})")
        path = plot_error_vs_distance(viewpoint.distance, figures / f"viewpoint-{split}.png", axis=split,
                                      title=f"Test error vs {split} distance — {viewpoint.dataset}")
        doc.figure(path, f"Test error against angular distance to the nearest familiar {split} ({viewpoint.dataset})")
        doc.paragraph(f"Test error (%) of the matched checkpoints per bin of {BIN_WIDTH[split]}° of distance to the "
                      f"nearest familiar {split}, mean ± std over seeds; {DISTANCE_IMAGES_NOTE}")
        doc.table(distance_shown(viewpoint))
        doc.heading(PAPER_TABLE2_HEADING, 4)
        doc.table(paper_table2_shown(split))
        doc.paragraph(f"Source: {SOURCE}, Table 2.")


def _provenance_section(doc: Document, record: dict[str, Any]) -> None:
    doc.heading("Provenance")
    doc.bullets([
        f"command: `{record['command']}`", f"commit: `{record['commit']}`", f"date: {record['date']}",
        f"dataset: {record['dataset']} ({record['mode']}), checksum `{record['dataset_checksum']}`",
        f"seeds: {', '.join(map(str, record['seeds']))}; budget: {record['budget']['name']}",
        "trainings: " + (f"taken from {record['train_runs']} (read only)" if record["train_runs"] else "trained here"),
        "versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
        f"wall time of this invocation: {record['seconds']:.0f} s; stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in record["stage_seconds"].items()),
    ])
    doc.paragraph("Every checkpoint used, with its SHA-256, and the budget in full are in `provenance.json`; each "
                  "stage's raw tables are in `stages/<stage>/`.")


# ----------------------------------------------------------------------------------------------
# The report


def _checkpoints_used(result: "StudyResult") -> list[dict[str, Any]]:
    """Every checkpoint an answer rests on, with its role and SHA-256: the attacked pairs and the viewpoint picks."""
    checkpoints = []
    for stage, record in result.stages.items():
        if stage.startswith("match-"):
            checkpoints += [{"role": f"{role} (attacks, seed {record['seed']})", "path": record[role]["checkpoint"],
                             "sha256": record[role]["sha256"]} for role in ("capsules", "cnn")]
        elif stage.startswith("viewpoint-"):
            checkpoints += [{**c, "role": f"{c['role']} ({stage})"} for c in record["checkpoints"]]
    return checkpoints


def write_study_report(result: "StudyResult", out_dir: str | os.PathLike[str] | None = None, *,
                       command: str | None = None) -> list[Path]:
    """Write ``REPORT.md``, ``report.html``, ``provenance.json`` and ``figures/*.png`` (each atomically)
    into ``out_dir`` (default: the study's directory); returns their paths.

    ``command``: the command line to record (the CLI passes every option spelled out).
    """
    from capsrobust.provenance import provenance

    out = Path(out_dir) if out_dir is not None else result.out
    figures = out / "figures"
    record = provenance(
        experiment="study", dataset=result.dataset_name, mode=result.mode, dataset_checksum=result.dataset_checksum,
        data_dir=result.data_dir, seeds=result.seeds, budget=result.budget.settings(),
        train_runs=result.train_runs, checkpoints=_checkpoints_used(result), seconds=round(result.seconds, 1),
        estimate_seconds=round(result.estimate_seconds, 1),
        stage_seconds={stage: r.get("seconds", 0.0) for stage, r in result.stages.items()},
    )
    if command is not None:
        record["argv"], record["command"] = record["command"], command

    doc = Document(f"Are matrix capsules more robust than a matched CNN? — {result.dataset}")
    if result.budget.smoke:
        doc.banner(SMOKE)
    heads = answers(result)
    doc.bullets([a.line for a in heads])
    synthnorb = (" These are synthnorb numbers, not smallNORB numbers; the paper's smallNORB numbers appear only "
                 "in tables labelled so." if result.dataset_name == "synthnorb" else "")
    doc.paragraph(f"Dataset: {result.dataset}.{synthnorb} Budget `{result.budget.name}`, seeds "
                  f"{', '.join(map(str, result.seeds))}, capsule net `{result.budget.capsule_model}`. \"Better\" needs "
                  "the 95 % interval of the difference to exclude 0; otherwise the answer gives the smallest "
                  "difference the sample could detect.")
    _clean_section(doc, result)
    _attack_section(doc, result, figures)
    _viewpoint_section(doc, result, figures)
    _provenance_section(doc, record)
    record["answers"] = [{"question": a.question, "better": a.better, "supported": a.supported, "line": a.line}
                         for a in heads]
    paths = [write_json(out / "provenance.json", record),
             atomic_write_text(out / "REPORT.md", doc.markdown(out)),
             atomic_write_text(out / "report.html", doc.html())]
    return paths + sorted(figures.glob("*.png"))


def check_headline_markers(readme: str | os.PathLike[str]) -> tuple[str, int, int]:
    """The text of ``readme`` and where :data:`HEADLINE_START` and :data:`HEADLINE_END` start in it;
    a one-line :class:`~capsrobust.errors.ConfigError` if the file or the markers (in that order) are
    missing. The CLI calls it before a study starts, not after it."""
    from capsrobust.errors import ConfigError

    readme = Path(readme)
    if not readme.is_file():
        raise ConfigError(f"--readme {readme}: no such file")
    text = readme.read_text()
    start, end = text.find(HEADLINE_START), text.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ConfigError(f"--readme {readme}: no '{HEADLINE_START}' ... '{HEADLINE_END}' markers; add them "
                          "where the headline should go")
    return text, start, end


def copy_headline(readme: str | os.PathLike[str], report_dir: str | os.PathLike[str]) -> Path:
    """Copy the answers of the study report in ``report_dir`` (from its ``provenance.json``) into
    ``readme`` between :data:`HEADLINE_START` and :data:`HEADLINE_END`, atomically; the rest of the
    file is untouched. The block names the report, dataset, budget, seeds and commit.

    Raises: :class:`~capsrobust.errors.ConfigError` (one line) if the report or the markers are missing.
    """
    import json

    from capsrobust.errors import ConfigError

    readme, report_dir = Path(readme), Path(report_dir)
    source = report_dir / "provenance.json"
    if not source.is_file():
        raise ConfigError(f"{source}: no study report there; run capsrobust study --out {report_dir} first")
    record = json.loads(source.read_text())
    text, start, end = check_headline_markers(readme)
    smoke = " — a smoke run, not for conclusions" if record["budget"].get("smoke") else ""
    lines = [HEADLINE_START,
             f"From [`{report_dir.as_posix()}/REPORT.md`]({report_dir.as_posix()}/REPORT.md) ({record['dataset']}, "
             f"{record['mode']}; budget `{record['budget']['name']}`{smoke}; seeds "
             f"{', '.join(map(str, record['seeds']))}; commit `{record['commit'][:7]}`), copied by "
             "`capsrobust study --readme`:", ""]
    lines += [f"- {answer['line']}" for answer in record["answers"]]
    block = "\n".join(lines) + "\n"
    return atomic_write_text(readme, text[:start] + block + text[end:])
