"""Report of an adversarial sweep (``capsrobust attack``): the terminal summary and the result files.

Input: the sweep table and the sanity checks of
:func:`~capsrobust.evaluation.robustness.evaluate_robustness` (``checks.attrs["gradients"]`` holds
the input-gradient statistics), the :class:`~capsrobust.evaluation.attack_data.AttackSetup` that
was attacked and the :class:`~capsrobust.evaluation.robustness.SweepConfig` that ran. Every file is
written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from capsrobust.files import atomic_write_text, write_csv, write_json
from capsrobust.provenance import provenance
from capsrobust.reporting import markdown_report, sweep_pivot, to_markdown

if TYPE_CHECKING:
    from capsrobust.evaluation.attack_data import AttackSetup
    from capsrobust.evaluation.robustness import SweepConfig

__all__ = ["attack_report_text", "write_attack_report"]


@dataclass(frozen=True)
class _Parts:
    """What the terminal summary and the markdown files share."""

    intro: str
    sections: list[tuple[str, str]]  # (heading, markdown body): the adversarial error (and targeted success)
    summary: str  # "N PASS, N WARN, N FAIL, N SKIP" over the checks below the verdicts
    verdict_lines: str  # one markdown bullet per model


def _parts(table: pd.DataFrame, checks: pd.DataFrame, setup: AttackSetup, config: SweepConfig) -> _Parts:
    pivot = sweep_pivot(table)
    sections = [("Adversarial error per model", to_markdown(pivot, 3))]
    if "targeted" in config.modes:
        success = sweep_pivot(table[table["mode"] == "targeted"], "attack_success_rate")
        sections.append(("Targeted success per model (4 wrong classes)", to_markdown(success, 3)))
    clean = ", ".join(f"{m} {e:.3f}" for m, e in table.groupby("model", sort=False).clean_error.first().items())
    scores = ", ".join(f"{m}: {s}" for m, s in table.groupby("model", sort=False).score.first().items())
    names = {spec.name for spec in config.specs()}
    notes = ""
    if "vote" in names:
        notes += (" vote: PGD on the class activations of one EM M-step over the class votes (uniform "
                  "assignments, routing bypassed), capsule nets only; success judged by the real model.")
    if "noise" in names:
        notes += (" noise: uniform random noise in the eps-ball, the given number of draws per image (an image "
                  "counts as broken if any draw broke it): the baseline every attack must beat.")
    if "autoattack" in names:
        notes += (" autoattack: torchattacks' standard version (APGD-CE, APGD-T, FAB-T, Square), on the same "
                  "scores as the other attacks.")
    intro = (f"{len(setup.labels)} familiar test images (seed {config.seed}), loss {config.loss}, "
             f"{config.steps} steps unless the attack names its own; scores attacked: {scores}; clean error: "
             f"{clean}. eps in pixel units of images in [0, 1]; eps_std in per-image-standardised units. Images "
             f"wrong on the clean input count as broken; an image counts as broken if any iterate broke it. "
             f"Targeted success averages the 4 wrong classes.{notes}")
    is_verdict = checks.check == "verdict"
    status = checks[~is_verdict].status.value_counts()
    summary = ", ".join(f"{status.get(s, 0)} {s}" for s in ("PASS", "WARN", "FAIL", "SKIP"))
    verdict_lines = "\n".join(f"- **{r.model}: {r.status}** -- {r.detail}"
                              for r in checks[is_verdict].itertuples(index=False))
    return _Parts(intro, sections, summary, verdict_lines)


def attack_report_text(table: pd.DataFrame, checks: pd.DataFrame, setup: AttackSetup, config: SweepConfig) -> str:
    """The terminal summary of a sweep: the adversarial error per model (and the targeted success with
    ``targeted`` in ``config.modes``), then the sanity checks under one verdict line per model.

    ``table`` and ``checks``: :func:`~capsrobust.evaluation.robustness.evaluate_robustness`'s.
    Markdown, starting with a blank line, without a trailing newline.
    """
    parts = _parts(table, checks, setup, config)
    lines = [f"\n# Adversarial robustness: {setup.dataset}\n\n{parts.intro}"]
    lines += [f"\n## {heading}\n\n{body}" for heading, body in parts.sections]
    lines.append(f"\n## Sanity checks ({parts.summary})\n\n{parts.verdict_lines}\n\n"
                 + to_markdown(checks.drop(columns=["dataset"]), 3))
    return "\n".join(lines)


def write_attack_report(table: pd.DataFrame, checks: pd.DataFrame, setup: AttackSetup, config: SweepConfig,
                        out_dir: str | os.PathLike[str], *, wall_time_s: float) -> list[Path]:
    """Write a sweep's files into ``out_dir`` (created), each atomically; returns their paths in this order:

    sweep.csv (every cell), sweep.md (the side-by-side tables, then every cell), checks.csv and
    checks.md (the sanity checks and the input gradients), gradients.csv, provenance.json (data,
    checkpoints, sweep settings, seconds per model and attack, verdicts), accuracy_vs_eps.png (with
    ``untargeted`` in ``config.modes``) and success_vs_eps.png (with ``targeted``; without it a
    success_vs_eps.png left by an earlier run is removed, as it would no longer match sweep.csv).

    ``wall_time_s``: the whole command's time (loading and attacks), recorded in provenance.json.
    """
    from capsrobust.reporting.plots import plot_accuracy_vs_eps, plot_targeted_success

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = _parts(table, checks, setup, config)
    gradients = checks.attrs["gradients"]
    # Gradient magnitudes span decades (1e-7 on a capsule net): scientific notation, not "0".
    gradient_view = gradients.assign(mean_abs_gradient=gradients.mean_abs_gradient.map("{:.3g}".format))
    is_verdict = checks.check == "verdict"
    record = provenance(
        dataset=setup.data.dataset, mode=setup.data.mode, split=setup.data.split, dataset_checksum=setup.data.checksum,
        checkpoints=[c.record() for c in setup.checkpoints], attacks=list(config.attacks), modes=list(config.modes),
        eps=list(config.eps_values), loss=config.loss, steps=config.steps, seed=config.seed, n=len(setup.labels),
        batch_sizes=table.attrs.get("batch_sizes"), savings=config.savings,
        scores=dict(table.groupby("model", sort=False).score.first()),
        mean_image_std=table.attrs.get("mean_image_std"), wall_time_s=round(wall_time_s, 2),
        attack_seconds={f"{m} {a}": round(float(s), 2) for (m, a), s in
                        table[table.attack != "worst-case"].groupby(["model", "attack"], sort=False).seconds.sum().items()},
        verdicts={r.model: f"{r.status}: {r.detail}" for r in checks[is_verdict].itertuples(index=False)},
    )
    paths = [
        write_csv(table, out / "sweep.csv"),
        atomic_write_text(out / "sweep.md", markdown_report(
            f"Adversarial robustness: {setup.dataset}",
            parts.sections + [("Every cell", to_markdown(table, 4))],
            intro=parts.intro)),
        write_csv(checks, out / "checks.csv"),
        atomic_write_text(out / "checks.md", markdown_report(
            f"Sanity checks (Carlini et al. 2019): {setup.dataset}",
            [(f"Checks ({parts.summary})", f"{parts.verdict_lines}\n\n" + to_markdown(checks, 3)),
             ("Input gradients at the clean images", to_markdown(gradient_view, 3))],
            intro=parts.intro)),
        write_csv(gradients, out / "gradients.csv"),
        write_json(out / "provenance.json", record),
    ]
    if "untargeted" in config.modes:
        paths.append(plot_accuracy_vs_eps(table, out / "accuracy_vs_eps.png", dataset=setup.dataset))
    success_plot = out / "success_vs_eps.png"
    if "targeted" in config.modes:
        paths.append(plot_targeted_success(table, success_plot, dataset=setup.dataset))
    elif success_plot.exists():
        success_plot.unlink()  # left by an earlier --targeted run: it would no longer match sweep.csv
    return paths
