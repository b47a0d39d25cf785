"""The study's attack answer as data: robust accuracy of the capsule net against the matched CNN, pooled
over seeds, with 95 % bootstrap intervals and a verdict (:mod:`capsrobust.evaluation.robust_accuracy`).

Reads each finished ``attack-untargeted-seed<k>`` stage's ``per_image.csv`` (the worst case per image
and eps); reporting renders what :func:`attack_comparison` returns and decides nothing itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from capsrobust.evaluation.robust_accuracy import RobustComparison, compare_robust_accuracy
from capsrobust.experiments.viewpoint import CNN

if TYPE_CHECKING:
    from capsrobust.experiments.study import StudyResult

__all__ = ["NAMES", "attack_comparison", "load_per_image"]

#: How verdicts name the two models.
NAMES = ("capsules", "the CNN")


def load_per_image(out: Path, seeds: list[int], stages: dict[str, dict]) -> pd.DataFrame:
    """Every finished untargeted attack stage's per-image outcomes, with a ``seed`` column (empty if none)."""
    frames = []
    for seed in seeds:
        stage = f"attack-untargeted-seed{seed}"
        if "per_image.csv" in stages.get(stage, {}).get("files", []):
            frames.append(pd.read_csv(out / "stages" / stage / "per_image.csv").assign(seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attack_comparison(result: "StudyResult", *, seed: int = 0) -> RobustComparison | None:
    """The capsule net (first) against the CNN on the same attacked images, all seeds pooled; None when no
    untargeted attack stage has per-image outcomes (not run yet, or run before they were kept)."""
    per_image = load_per_image(result.out, result.seeds, result.stages)
    if per_image.empty:
        return None
    return compare_robust_accuracy(per_image, result.budget.capsule_model, CNN, names=NAMES, seed=seed)
